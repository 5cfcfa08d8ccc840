"""Choose the checkpoint to ship by downstream accuracy on the validation splits (never the test splits).

Training saves the encoders of every epoch (``snapshot_epochN.pt``); the lowest validation *loss* (``best.pt``)
is not always the best *embedding*. This stage scores candidate snapshots with the evaluation protocol
(``training/evaluate.py``: MLP probe, ``signal`` recipe) on the three validation splits and writes
``RUN/selected.json``; ``training.evaluate --model NAME`` and ``training.export`` then use that checkpoint.

Candidates: every ``--every``-th epoch among the last ``--window`` epochs, the last epoch and ``best.pt``.

    python -m training.select [--run ae_c] [--window 24] [--every 4] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from .corpus import data_dir

log = logging.getLogger(__name__)
SELECTED = "selected.json"


def candidates(run: Path, window: int, every: int) -> list[str]:
    """Snapshot file names to score, oldest first, plus ``best.pt`` when it exists."""
    epochs = sorted(int(m.group(1)) for p in run.glob("snapshot_epoch*.pt") if (m := re.search(r"(\d+)\.pt$", p.name)))
    if not epochs:
        raise SystemExit(f"{run}: no snapshot_epochN.pt files (train first)")
    last = epochs[-1]
    chosen = [e for e in epochs if e > last - window and (last - e) % every == 0]
    names = [f"snapshot_epoch{e}.pt" for e in chosen]
    return names + (["best.pt"] if (run / "best.pt").exists() else [])


def selected_checkpoint(run: Path) -> str:
    """The checkpoint chosen by this stage for ``run``, or ``best.pt`` when the stage has not run."""
    f = run / SELECTED
    return json.loads(f.read_text())["checkpoint"] if f.exists() else "best.pt"


def select(data: Path, run_name: str, window: int, every: int, seeds: int) -> dict:
    from .evaluate import evaluate

    run = data / "runs" / run_name
    names = candidates(run, window, every)
    specs = [f"{run_name}:{n}" for n in names]
    res = evaluate(data, specs, ["signal"], "val", seeds, data / "eval-select", loso=False)
    scores: dict[str, dict[str, float]] = {}
    for r in res["rows"]:
        if r["embedding"] in specs:
            scores.setdefault(r["embedding"].split(":", 1)[1], {})[r["task"]] = round(100 * r["mlp_mean"], 2)
    means = {n: round(sum(s.values()) / len(s), 2) for n, s in scores.items()}
    best = max(names, key=lambda n: means[n])  # ties: the earlier candidate
    out = {"checkpoint": best, "mean_val_accuracy": means[best], "seeds": seeds, "scores": scores, "means": means}
    tmp = run / (SELECTED + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(run / SELECTED)
    log.info("selected %s (mean validation accuracy %.2f)", best, means[best])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (default: $COALA_EMBED_DATA or ~/.cache/coala-embed)")
    p.add_argument("--run", default="ae_c", help="run name in DATA/runs")
    p.add_argument("--window", type=int, default=24, help="consider snapshots of the last this many epochs")
    p.add_argument("--every", type=int, default=4, help="score every this-many-th of them (the last always)")
    p.add_argument("--seeds", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = select(data_dir(a.data), a.run, a.window, a.every, a.seeds)
    print("| checkpoint | " + " | ".join(next(iter(out["scores"].values()))) + " | mean |")
    print("|---|" + "---|" * (len(next(iter(out["scores"].values()))) + 1))
    for name, s in out["scores"].items():
        mark = " (selected)" if name == out["checkpoint"] else ""
        print(f"| {name}{mark} | " + " | ".join(f"{v:.1f}" for v in s.values()) + f" | {out['means'][name]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
