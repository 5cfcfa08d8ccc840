"""Where in the encoder training shows, and which clip vector to read out (issue 29 step 5): the validation screen
(logistic regression) of several clip vectors of one model, each computed from the same per-patch readouts (z, the
code of block 5, and each channel's maximum over the feature maps of blocks 1-4), with the same encoder with random
weights beside it under the same readout.

    python -m training.eval.readouts --model random --model scr_lite10x_s0:snapshot_epoch27.pt --model shipped=weights

Clip vectors (means over the clip's patches unless said): ``z`` (the paper's); ``z+max`` (the shipped readout);
``max1-4`` (the maxima alone); ``z+max4`` and ``z+max34`` (z with the maxima of the last blocks only, which random
weights shape least); ``z mean+max`` (mean and maximum of z over the patches, concatenated); ``last t-mean+max``
(BYOL-A's readout of the last feature map: its 128 x 3 (channel x mel) rows laid end to end over the clip's time,
mean plus maximum over time, 384 columns). Results: OUT/readouts_val.md and .json (OUT defaults to
DATA/eval/readouts), the mean over tasks and its margin over ``random``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from coala_embed.api import embed_patches
from coala_embed.files import write_text

from ..cli import parser, start
from ..fit.checkpoints import machine, resolve_model
from .evaluate import classify, split_xy, task_patches, with_recipe
from .tasks import TASKS, read_task

log = logging.getLogger(__name__)


def readouts(z_dim: int, channels: int, blocks: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each clip vector as a function of the clip's per-patch z+max readouts ``[T, z_dim + blocks * channels]``."""

    def cols(*bs: int) -> np.ndarray:
        return np.concatenate([z_dim + (b - 1) * channels + np.arange(channels) for b in bs])

    z, every = np.arange(z_dim), tuple(range(1, blocks + 1))
    last, penult = np.concatenate([z, cols(blocks)]), np.concatenate([z, cols(blocks - 1, blocks)])

    def time_pooled(p: np.ndarray) -> np.ndarray:  # z is the flattened [channels, mel 3, time 3] map
        maps = p[:, :z_dim].reshape(len(p), channels, 3, -1).transpose(1, 2, 0, 3).reshape(channels * 3, -1)
        return maps.mean(1) + maps.max(1)

    return {
        "z": lambda p: p[:, z].mean(0),
        "z+max": lambda p: p.mean(0),
        f"max1-{blocks}": lambda p: p[:, cols(*every)].mean(0),
        f"z+max{blocks}": lambda p: p[:, last].mean(0),
        f"z+max{blocks - 1}{blocks}": lambda p: p[:, penult].mean(0),
        "z mean+max": lambda p: np.concatenate([p[:, z].mean(0), p[:, z].max(0)]),
        "last t-mean+max": time_pooled,
    }


def score(specs: list[str], data: Path) -> dict:
    """The validation logistic screen of every clip vector, per task, for each model ``spec``."""
    tasks = {t: read_task(data / "tasks" / t) for t in TASKS}
    out: dict = {"date": datetime.date.today().isoformat(), "machine": machine(), "split": "val", "scores": {}}
    for spec in specs:
        name, model = resolve_model(spec, data)
        model.config = with_recipe(model.config, "signal_zmax")
        m = model.config.model
        ways = readouts(m.embedding_dim, m.channels, m.n_blocks - 1)
        scores: dict[str, dict[str, float]] = {g: {} for g in ways}
        for task, rows in tasks.items():
            patches, offsets = task_patches(task, rows, model.config.frontend, data / "eval-cache")
            per_patch = embed_patches(model, patches, 256)
            for g, way in ways.items():
                feats = np.stack([way(per_patch[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]).astype(np.float32)
                scores[g][task] = 100 * classify(*split_xy(feats, rows, "val"), 0)["logreg"]
            log.info("%s %s: %s", name, task, {g: round(s[task], 2) for g, s in scores.items()})
        out["scores"][name] = scores
    return out


def markdown(res: dict) -> str:
    """One row per model and group: accuracy per task, the mean, and the mean's margin over ``random``."""
    lines = [f"Validation logistic screen by readout ({res['date']}, {res['machine']}):", "",
             "| model | readout | " + " | ".join(TASKS) + " | mean | - random |",
             "|---|---|" + "---|" * (len(TASKS) + 2)]  # fmt: skip
    base = res["scores"].get("random", {})
    for name, scores in res["scores"].items():
        for g, s in scores.items():
            mean = float(np.mean([s[t] for t in TASKS]))
            margin = f"{mean - np.mean([base[g][t] for t in TASKS]):+.2f}" if base and name != "random" else ""
            lines.append(
                f"| {name} | {g} | " + " | ".join(f"{s[t]:.1f}" for t in TASKS) + f" | {mean:.2f} | {margin} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--model", action="append", default=[], help="a run spec as training.eval takes (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="output folder [default: DATA/eval/readouts]")
    a, root = start(p, argv)
    res = score(a.model or ["random"], root)
    out = a.out or root / "eval" / "readouts"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "readouts_val.json", json.dumps(res, indent=1) + "\n")
    write_text(out / "readouts_val.md", markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
