"""Choose the checkpoint to ship by downstream accuracy on the validation splits (never the test splits).

Training saves the encoders of every epoch (``snapshot_epochN.pt``); the lowest validation *loss* (``best.pt``)
is not always the best *embedding*. This stage scores candidate checkpoints with the evaluation protocol
(``training/eval/evaluate.py``: the clip recipe the checkpoint ships with, ``signal_zmax``; MLP probe, mean accuracy
over ``--seeds`` seeds) on the five validation splits and writes ``RUN/selected.json``; ``training.eval.evaluate --model NAME`` and
``training.export`` then use that checkpoint. The highest mean accuracy over the tasks wins.

Several ``--run``s (the same recipe trained with different seeds) are chosen between the same way: each run's
selected checkpoint, then the run whose checkpoint scores highest. ``DATA/runs/NAME`` (``--as``, default
``ae_c``) becomes a link to that run, and ``DATA/runs/NAME_seeds.json`` keeps every run's choice and scores.

Candidates: every ``--every``-th epoch of the whole run (epochs every/2, 3*every/2, ...), the last epoch and
``best.pt``. Scores are cached in ``RUN/selection_scores.json`` (keyed by file, size and time), so snapshots
can be scored while training runs (``--score-only``) and the final selection only scores what is new.

    python -m training.eval.select [--run ae_c] [--every 8] [--seeds 2]
    python -m training.eval.select --run ae_c_s0 --run ae_c_s1 --run ae_c_s2 --as ae_c
    python -m training.eval.select --score-only --wait      # score each new candidate as training writes it
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from coala_embed.files import write_text

from ..cli import parser, start
from ..fit.checkpoints import SELECTED, checkpoint_key, encoder_digest, resolve_model, seeds_file

log = logging.getLogger(__name__)
CACHE = "selection_scores.json"


def snapshot_epochs(run: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in run.glob("snapshot_epoch*.pt") if (m := re.search(r"(\d+)\.pt$", p.name)))


def on_grid(epoch: int, every: int) -> bool:
    return epoch % every == every // 2


def candidates(run: Path, every: int) -> list[str]:
    """Checkpoint file names to score, oldest first: the grid of epochs, the last epoch, ``best.pt``."""
    epochs = snapshot_epochs(run)
    if not epochs:
        raise SystemExit(f"{run}: no snapshot_epochN.pt files (train first)")
    chosen = [e for e in epochs if on_grid(e, every) or e == epochs[-1]]
    return [f"snapshot_epoch{e}.pt" for e in chosen] + (["best.pt"] if (run / "best.pt").exists() else [])


RECIPE = "signal_zmax"  # the clip recipe the checkpoint ships with (training/run.sh exports with it)


def _key(path: Path, seeds: int, recipe: str = RECIPE) -> str:
    st = path.stat()
    return f"{path.name}|{st.st_size}|{st.st_mtime_ns}|{seeds}" + ("" if recipe == "signal" else f"|{recipe}")


def score(
    data: Path, run_name: str, checkpoint: str, seeds: int, loaded: dict | None = None, recipe: str = RECIPE
) -> dict[str, float]:
    """Validation accuracy (%) of one checkpoint on each task: the clip ``recipe``, MLP(256), mean over seeds.

    ``loaded`` keeps each task's rows between calls; patches and clip features are cached on disk
    (``evaluate.cached_features``).
    """

    from .evaluate import cached_features, classify_mlp, split_xy, with_recipe
    from .tasks import TASKS, read_task

    loaded = {} if loaded is None else loaded
    spec = f"{run_name}:{checkpoint}"
    _, model = resolve_model(spec, data)
    model.config = with_recipe(model.config, recipe)
    out = {}
    for task in TASKS:
        if task not in loaded:
            loaded[task] = read_task(data / "tasks" / task)
        rows = loaded[task]
        feats = cached_features(task, rows, model, data / "eval-cache", checkpoint_key(spec, data))
        out[task] = round(100 * classify_mlp(*split_xy(feats, rows, "val"), seeds), 2)
    return out


def scores_for(
    data: Path, run_name: str, names: list[str], seeds: int, recipe: str = RECIPE
) -> dict[str, dict[str, float]]:
    """Scores of ``names``, from the cache where the same file was already scored with the same seeds."""
    run = data / "runs" / run_name
    cache_file = run / CACHE
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    loaded: dict = {}
    out: dict[str, dict[str, float]] = {}
    digests: dict[str, str] = {}
    for name in names:
        key = _key(run / name, seeds, recipe)
        if key not in cache and out:  # the same encoders as a candidate already scored (best.pt and its epoch)
            for n in [name, *out]:
                if n not in digests:
                    digests[n] = encoder_digest(run / n)
            same = [n for n in out if digests[n] == digests[name]]
            if same:
                cache[key] = out[same[0]]
                log.info("%s: the encoders of %s, scored already", name, same[0])
        if key not in cache:
            t0 = time.time()
            cache[key] = score(data, run_name, name, seeds, loaded, recipe)
            log.info("%s: %s (%.0f s)", name, cache[key], time.time() - t0)
            write_text(cache_file, json.dumps(cache, indent=1) + "\n")
        out[name] = cache[key]
    return out


def select(data: Path, run_name: str, every: int, seeds: int, recipe: str = RECIPE) -> dict:
    run = data / "runs" / run_name
    names = candidates(run, every)
    scores = scores_for(data, run_name, names, seeds, recipe)
    means = {n: round(sum(s.values()) / len(s), 2) for n, s in scores.items()}
    best = max(names, key=lambda n: means[n])  # ties: the earlier candidate
    out = {"checkpoint": best, "mean_val_accuracy": means[best], "seeds": seeds, "recipe": recipe, "scores": scores,
           "means": means}  # fmt: skip
    write_text(run / SELECTED, json.dumps(out, indent=1) + "\n")
    log.info("selected %s (mean validation accuracy %.2f)", best, means[best])
    return out


def select_across(data: Path, run_names: list[str], every: int, seeds: int, name: str) -> dict:
    """Select within each run, then the run whose selected checkpoint has the highest mean validation accuracy
    (ties: the earlier run); ``DATA/runs/NAME`` becomes a relative link to it, replaced atomically, and
    ``DATA/runs/NAME_seeds.json`` records every run's choice."""
    runs = data / "runs"
    link = runs / name
    if name in run_names or (link.exists() and not link.is_symlink()):
        raise SystemExit(f"{link} is a run folder: --as needs a name of its own (it becomes a link to the chosen run)")
    chosen = {r: select(data, r, every, seeds) for r in run_names}
    best = max(run_names, key=lambda r: chosen[r]["mean_val_accuracy"])
    tmp = runs / f".{name}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(best, tmp)
    os.replace(tmp, link)
    out = {"selected": best, "checkpoint": chosen[best]["checkpoint"], "seeds": seeds,
           "runs": {r: {k: c[k] for k in ("checkpoint", "mean_val_accuracy", "scores")} for r, c in chosen.items()}}  # fmt: skip
    write_text(seeds_file(link), json.dumps(out, indent=1) + "\n")
    log.info("%s -> %s (%s, mean validation accuracy %.2f)", name, best, out["checkpoint"],
             chosen[best]["mean_val_accuracy"])  # fmt: skip
    return out


def score_while_training(data: Path, run_name: str, every: int, seeds: int) -> None:
    """Score each grid snapshot as soon as the next epoch's snapshot exists (so the file is complete); stop
    when the run writes DONE."""
    run = data / "runs" / run_name
    while True:
        epochs = snapshot_epochs(run)
        done = (run / "DONE").exists()
        ready = [e for e in epochs if on_grid(e, every) and (done or e < epochs[-1])]
        scores_for(data, run_name, [f"snapshot_epoch{e}.pt" for e in ready], seeds)
        if done:
            return
        time.sleep(30)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument(
        "--run", action="append", help="run name in DATA/runs (default ae_c); repeat to choose between seeds"
    )
    p.add_argument("--as", dest="name", default="ae_c", help="with several --run: the link to the chosen run")
    p.add_argument("--every", type=int, default=8, help="score every this-many-th epoch (and the last, and best.pt)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--score-only", action="store_true", help="only fill the score cache, choose nothing")
    p.add_argument("--wait", action="store_true", help="with --score-only: keep scoring new snapshots until DONE")
    a, root = start(p, argv)
    runs = a.run or ["ae_c"]
    if a.score_only:
        if len(runs) > 1:
            p.error("--score-only takes one --run")
        if a.wait:
            score_while_training(root, runs[0], a.every, a.seeds)
        else:
            names = [n for n in candidates(root / "runs" / runs[0], a.every) if n != "best.pt"]
            scores_for(root, runs[0], names, a.seeds)
        return 0
    if len(runs) > 1:
        across = select_across(root, runs, a.every, a.seeds, a.name)
        print("| run | checkpoint | mean |\n|---|---|---|")
        for r, c in across["runs"].items():
            mark = " (selected)" if r == across["selected"] else ""
            print(f"| {r}{mark} | {c['checkpoint']} | {c['mean_val_accuracy']:.2f} |")
        return 0
    out = select(root, runs[0], a.every, a.seeds)
    tasks = list(next(iter(out["scores"].values())))
    print("| checkpoint | " + " | ".join(tasks) + " | mean |")
    print("|---|" + "---|" * (len(tasks) + 1))
    for name, s in out["scores"].items():
        mark = " (selected)" if name == out["checkpoint"] else ""
        print(f"| {name}{mark} | " + " | ".join(f"{s[t]:.1f}" for t in tasks) + f" | {out['means'][name]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
