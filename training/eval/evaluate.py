"""The paper's downstream evaluation (docs/method.md section 7) on the held-out tasks of ``training/eval/tasks.py``.

For each embedding (a trained run or exported folder, the same encoder with random weights, the MFCC
baseline) and each clip recipe (pooling mode, patch hop, mean or mean+std of the patch embeddings):
StandardScaler fitted on the training split, MLPClassifier(256) with scikit-learn defaults, accuracy over
``--seeds`` seeds (mean +- std), and a logistic-regression probe. ``--split val`` (the default) scores on the
validation split and is what every training decision uses; ``--split test`` fits on train + validation and
scores the test split once, for the tables. Results go to ``OUT/results_<split>.json`` and ``.md``.
``--group LABEL=RUN,RUN,...`` adds the mean ± std over those runs (one recipe trained with several seeds) of
each run's accuracy: the spread between training seeds, beside the MLP's spread within each.

    python -m training.eval --model ae_c --model e_c --model cnn --split val
    python -m training.eval --model ae_c_s0 --model ae_c_s1 --model ae_c_s2 --group ae_c=ae_c_s0,ae_c_s1,ae_c_s2
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from coala_embed import CoalaConfig, CoalaModel
from coala_embed.api import clip_vector, embed_patches
from coala_embed.config import FrontendConfig
from coala_embed.files import atomic_write, save_npy, write_text
from coala_embed.streaming import file_patches

from ..cli import parser, start
from ..fit.checkpoints import checkpoint_key, machine, resolve_model
from .tasks import TASKS, read_task

log = logging.getLogger(__name__)

# Clip recipes: name -> overrides of a checkpoint's config (coala_embed.config): how the front-end cuts a clip
# into patches, and how the clip vector is made of them
_PAPER_CLIP = {"readout": "z", "stat": "mean"}
RECIPES: dict[str, dict[str, dict]] = {
    # the paper: 10-s noise padding, every chunk averaged
    "original": {"frontend": {"pooling": "original", "chunk_hop": 96}, "clip": _PAPER_CLIP},
    # only chunks that hold signal
    "signal": {"frontend": {"pooling": "signal", "chunk_hop": 96}, "clip": _PAPER_CLIP},
    # half-overlapping patches
    "signal_hop48": {"frontend": {"pooling": "signal", "chunk_hop": 48}, "clip": _PAPER_CLIP},
    "signal_hop48_meanstd": {
        "frontend": {"pooling": "signal", "chunk_hop": 48},
        "clip": {"readout": "z", "stat": "meanstd"},
    },
    # z beside the channel maxima of blocks 1-4 (ClipConfig)
    "signal_zmax": {"frontend": {"pooling": "signal", "chunk_hop": 96}, "clip": {"readout": "z+max", "stat": "mean"}},
    "signal_hop48_zmax": {
        "frontend": {"pooling": "signal", "chunk_hop": 48},
        "clip": {"readout": "z+max", "stat": "mean"},
    },
}


def with_recipe(config: CoalaConfig, recipe: str) -> CoalaConfig:
    """``config`` with a recipe's front-end and clip settings."""
    o = RECIPES[recipe]
    return config.replace(**o.get("frontend", {})).with_clip(**o.get("clip", {}))


# ------------------------------------------------------------------------------------------- features
def task_cache(cache: Path, task: str, rows: list[dict]) -> Path:
    """The cache folder of one version of a task: named by a hash of its clips' paths, so that features cached
    for a task whose clips have changed (a rebuilt split) are never read as the new task's."""
    digest = hashlib.sha1("\n".join(r["path"] for r in rows).encode()).hexdigest()[:12]
    return cache / task / digest


def task_patches(task: str, rows: list[dict], cfg: FrontendConfig, cache: Path) -> tuple[torch.Tensor, np.ndarray]:
    """All patches of a task under one front-end setting (cached): ``[P, 96, 96]`` and offsets ``[N + 1]``."""
    key = f"patches-{cfg.pooling}-{cfg.chunk_hop}-{cfg.noise_seed}"
    f = task_cache(cache, task, rows) / f"{key}.pt"
    if f.exists():
        d = torch.load(f, weights_only=True)
        return d["patches"].float(), d["offsets"].numpy()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda r: file_patches(r["path"], cfg).patches, rows))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    patches = torch.cat(parts)
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(f, lambda tmp: torch.save({"patches": patches.half(), "offsets": torch.from_numpy(offsets)}, tmp))
    return patches, offsets


def clip_features(frames: np.ndarray, offsets: np.ndarray, stat: str) -> np.ndarray:
    """The clip vectors (``coala_embed.api.clip_vector``) of clips laid end to end in ``frames``."""
    return np.stack([clip_vector(frames[a:b], stat) for a, b in zip(offsets[:-1], offsets[1:])]).astype(np.float32)


def cached_features(task: str, rows: list[dict], model: CoalaModel, cache: Path, key: str | None) -> np.ndarray:
    """Clip vectors of a task's clips under ``model.config`` (set a recipe with :func:`with_recipe`); cached per
    checkpoint file (``key``) so that screening, selection and evaluation embed each checkpoint once."""
    cfg, clip = model.config.frontend, model.config.clip
    name = f"clips-{key}-{cfg.pooling}-{cfg.chunk_hop}-{clip.stat}" + (
        "" if clip.readout == "z" else f"-{clip.readout}"
    )
    f = task_cache(cache, task, rows) / f"{name}.npy" if key else None
    if f is not None and f.exists():
        return np.load(f)
    patches, offsets = task_patches(task, rows, cfg, cache)
    feats = clip_features(embed_patches(model, patches, 256), offsets, clip.stat)
    if f is not None:
        save_npy(f, feats)
    return feats


def mfcc_features(task: str, rows: list[dict], cache: Path) -> np.ndarray:
    """The MFCC baseline exactly as docs/method.md 7.3: 20 MFCCs (n_fft 2048, hop 512, 128 mels, dB) + deltas,
    mean and variance of each over time: 120-d; audio at 22 kHz, no padding."""
    f = task_cache(cache, task, rows) / "mfcc.npy"
    if f.exists():
        return np.load(f)
    import librosa

    from coala_embed.audio_io import load_audio
    from coala_embed.frontend import resample

    def one(r: dict) -> np.ndarray:
        audio, sr = load_audio(r["path"])
        y = resample(audio, sr, 22000)
        if len(y) < 2048:
            y = np.pad(y, (0, 2048 - len(y)))
        m = librosa.feature.mfcc(y=y, sr=22000)
        width = min(5, m.shape[1] - (1 - m.shape[1] % 2))  # delta needs an odd width <= frames
        parts = [m]
        if width >= 3:
            parts += [
                librosa.feature.delta(m, width=width, order=1, mode="nearest"),
                librosa.feature.delta(m, width=width, order=2, mode="nearest"),
            ]
        else:
            parts += [np.zeros_like(m), np.zeros_like(m)]
        return np.concatenate([np.concatenate([p.mean(1), p.var(1)]) for p in parts])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        feats = np.stack(list(pool.map(one, rows))).astype(np.float32)
    f.parent.mkdir(parents=True, exist_ok=True)
    save_npy(f, feats)
    return feats


# ------------------------------------------------------------------------------------------- models


# ------------------------------------------------------------------------------------------- protocol
@contextlib.contextmanager
def _quiet_convergence():
    """The paper's probes run scikit-learn's default iterations; their ConvergenceWarnings are expected."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _mlp_runs(xtr, ytr, xte, yte, seeds: int) -> list[float]:
    from sklearn.neural_network import MLPClassifier

    with _quiet_convergence():
        return [
            float(MLPClassifier(hidden_layer_sizes=(256,), random_state=seed).fit(xtr, ytr).score(xte, yte))
            for seed in range(seeds)
        ]


def _standardise(xtr, xte):
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    return scaler.transform(xtr), scaler.transform(xte)


def classify_mlp(xtr, ytr, xte, yte, seeds: int) -> float:
    """The paper's probe alone: StandardScaler on train, MLPClassifier(256), accuracy averaged over seeds."""
    xtr, xte = _standardise(xtr, xte)
    return float(np.mean(_mlp_runs(xtr, ytr, xte, yte, seeds)))


def bootstrap_ci(correct: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of an accuracy from its per-clip outcomes (resampling the clips)."""
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def classify(xtr, ytr, xte, yte, seeds: int) -> dict:
    """StandardScaler on train, MLPClassifier(256) over ``seeds`` seeds (none with ``seeds=0``: the
    logistic-regression screen alone) and a logistic-regression probe with its 95 % bootstrap interval."""
    from sklearn.linear_model import LogisticRegression

    xtr, xte = _standardise(xtr, xte)
    accs = _mlp_runs(xtr, ytr, xte, yte, seeds) if seeds else [float("nan")]
    with _quiet_convergence():
        pred = LogisticRegression(max_iter=300).fit(xtr, ytr).predict(xte)
    correct = (pred == yte).astype(np.float64)
    return {"mlp_mean": float(np.mean(accs)), "mlp_std": float(np.std(accs)), "mlp_runs": accs,
            "logreg": float(correct.mean()), "logreg_ci": bootstrap_ci(correct)}  # fmt: skip


def split_xy(feats: np.ndarray, rows: list[dict], split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` for ``split`` (``val``: trained on train; ``test``: on train + val)."""
    train_splits = ("train",) if split == "val" else ("train", "val")
    tr = [i for i, r in enumerate(rows) if r["split"] in train_splits]
    te = [i for i, r in enumerate(rows) if r["split"] == split]
    y = np.array([r["label"] for r in rows])
    return feats[tr], y[tr], feats[te], y[te]


def speaker_folds(feats: np.ndarray, rows: list[dict], seeds: int) -> dict:
    """Digits, leave one speaker out: mean over the speakers of the accuracy on the held-out speaker."""
    y = np.array([r["label"] for r in rows])
    g = np.array([r["group"] for r in rows])
    res = [classify(feats[g != s], y[g != s], feats[g == s], y[g == s], seeds) for s in sorted(set(g))]
    return {"mlp_mean": float(np.mean([r["mlp_mean"] for r in res])), "mlp_std": float(np.std([r["mlp_mean"] for r in res])),
            "logreg": float(np.mean([r["logreg"] for r in res]))}  # fmt: skip


def evaluate(
    data: Path,
    specs: list[str],
    recipes: list[str],
    split: str,
    seeds: int,
    out: Path,
    loso: bool,
    groups: dict[str, list[str]] | None = None,
) -> dict:
    cache = data / "eval-cache"
    tasks = {t: read_task(data / "tasks" / t) for t in TASKS}
    results: dict = {
        "split": split,
        "seeds": seeds,
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "rows": [],
    }
    models = dict(resolve_model(s, data) for s in specs)
    base = {name: model.config for name, model in models.items()}
    keys = {name: checkpoint_key(spec, data) for spec, name in zip(specs, models)}
    for task, rows in tasks.items():
        t0 = time.time()
        res = classify(*split_xy(mfcc_features(task, rows, cache), rows, split), seeds)
        results["rows"].append({"task": task, "embedding": "mfcc", "recipe": "-", **res})
        log.info(
            "%s mfcc: %.4f +- %.4f (logreg %.4f) %.0fs",
            task,
            res["mlp_mean"],
            res["mlp_std"],
            res["logreg"],
            time.time() - t0,
        )
        if loso and task == "digits":
            r = speaker_folds(mfcc_features(task, rows, cache), rows, 1)
            results["rows"].append({"task": "digits_loso", "embedding": "mfcc", "recipe": "-", **r})
        done: dict[tuple, tuple] = {}  # a checkpoint named twice (a run and its link) is scored once
        for recipe in recipes:
            for name, model in models.items():
                t0 = time.time()
                model.config = with_recipe(base[name], recipe)
                feats = cached_features(task, rows, model, cache, keys[name])
                key = (keys[name], recipe) if keys[name] else None
                if key in done:
                    res, folds = done[key]
                else:
                    res = classify(*split_xy(feats, rows, split), seeds)
                    folds = speaker_folds(feats, rows, 1) if loso and task == "digits" else None
                    if key:
                        done[key] = res, folds
                results["rows"].append({"task": task, "embedding": name, "recipe": recipe, **res})
                log.info(
                    "%s %s %s: %.4f +- %.4f (logreg %.4f) %.0fs",
                    task,
                    name,
                    recipe,
                    res["mlp_mean"],
                    res["mlp_std"],
                    res["logreg"],
                    time.time() - t0,
                )
                if folds is not None:
                    results["rows"].append({"task": "digits_loso", "embedding": name, "recipe": recipe, **folds})
    results["groups"] = seed_groups(results["rows"], groups or {})
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"results_{split}.json", json.dumps(results, indent=1) + "\n")
    write_text(out / f"results_{split}.md", markdown(results))
    return results


def seed_groups(rows: list[dict], groups: dict[str, list[str]]) -> list[dict]:
    """Per group, recipe and task: the mean and standard deviation over the group's embeddings of their accuracy
    (the MLP mean, or the logistic regression in a screen without MLP seeds)."""
    out = []
    for label, names in groups.items():
        for recipe in dict.fromkeys(r["recipe"] for r in rows if r["embedding"] in names):
            for task in dict.fromkeys(r["task"] for r in rows if r["task"] != "digits_loso"):
                found = {r["embedding"]: r for r in rows if r["task"] == task and r["recipe"] == recipe}
                missing = [n for n in names if n not in found]
                if missing:
                    raise SystemExit(f"--group {label}: {', '.join(missing)} not evaluated (add them as --model)")
                accs = [found[n]["logreg" if np.isnan(found[n]["mlp_mean"]) else "mlp_mean"] for n in names]
                out.append({"group": label, "runs": names, "recipe": recipe, "task": task,
                            "mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": accs})  # fmt: skip
    return out


def _score(r: dict) -> float:
    """A row's accuracy: the MLP mean, or the logistic regression in a screen without MLP seeds."""
    return r["logreg"] if np.isnan(r["mlp_mean"]) else r["mlp_mean"]


def margin_lines(rows: list[dict], tasks: list[str]) -> list[str]:
    """The margin of every embedding over the same encoder with random weights under the same clip recipe, per task
    and on the mean (points): what training adds beyond the architecture and the readout. Empty without a
    ``random`` row."""
    cell = {(r["embedding"], r["recipe"], r["task"]): _score(r) for r in rows}
    keys = [k for k in dict.fromkeys((r["embedding"], r["recipe"]) for r in rows) if k[0] not in ("random", "mfcc")]
    keys = [(e, rc) for e, rc in keys if all((e, rc, t) in cell and ("random", rc, t) in cell for t in tasks)]
    if not keys or not tasks:
        return []
    lines = ["", "Margin over the same encoder with random weights, same clip recipe (points; positive: training helps).",
             "", "| embedding | clip recipe | " + " | ".join(tasks) + " | mean |", "|---|---|" + "---|" * (len(tasks) + 1)]  # fmt: skip
    for emb, rc in keys:
        d = [100 * (cell[emb, rc, t] - cell["random", rc, t]) for t in tasks]
        lines.append(f"| {emb} - random | {rc} | " + " | ".join(f"{x:+.1f}" for x in d) + f" | {np.mean(d):+.2f} |")
    return lines


def markdown(results: dict) -> str:
    """One table: a row per (embedding, recipe), a column per task, MLP accuracy mean +- std (logreg)."""
    tasks = list(dict.fromkeys(r["task"] for r in results["rows"]))
    keys = list(dict.fromkeys((r["embedding"], r["recipe"]) for r in results["rows"]))
    cell = {(r["embedding"], r["recipe"], r["task"]): r for r in results["rows"]}
    lines = [
        f"Split: {results['split']}; MLP(256) accuracy, mean ± std over {results['seeds']} seeds (logistic regression in brackets); "
        f"{results['date']}, {results['machine']}.",
        "",
        "| embedding | clip recipe | " + " | ".join(tasks) + " | mean |",
        "|---|---|" + "---|" * (len(tasks) + 1),
    ]
    for emb, recipe in keys:
        scores = [cell[emb, recipe, t] for t in tasks if (emb, recipe, t) in cell and t != "digits_loso"]
        screen = all(np.isnan(r["mlp_mean"]) for r in scores)
        mean = np.mean([r["logreg" if screen else "mlp_mean"] for r in scores])
        cells = []
        for t in tasks:
            r = cell.get((emb, recipe, t))
            if r is None:
                cells.append("")
            elif np.isnan(r["mlp_mean"]):  # the logistic-regression screen alone, with its 95 % interval
                lo, hi = r.get("logreg_ci", (np.nan, np.nan))
                cells.append(f"({100 * r['logreg']:.1f}; {100 * lo:.1f}-{100 * hi:.1f})")
            else:
                cells.append(f"{100 * r['mlp_mean']:.1f} ± {100 * r['mlp_std']:.1f} ({100 * r['logreg']:.1f})")
        lines.append(f"| {emb} | {recipe} | " + " | ".join(cells) + f" | {100 * mean:.2f} |")
    lines += margin_lines(results["rows"], [t for t in tasks if t != "digits_loso"])
    groups = results.get("groups") or []
    if groups:
        tasks = [t for t in tasks if t != "digits_loso"]
        gcell = {(g["group"], g["recipe"], g["task"]): g for g in groups}
        lines += ["", "Across training seeds: mean ± std over the runs of each run's accuracy.", "",
                  "| runs | clip recipe | " + " | ".join(tasks) + " | mean |", "|---|---|" + "---|" * (len(tasks) + 1)]  # fmt: skip
        for label, recipe in dict.fromkeys((g["group"], g["recipe"]) for g in groups):
            per_task = [gcell[label, recipe, t] for t in tasks]
            mean = np.mean([c["accuracies"] for c in per_task], axis=0)  # each run's mean over the tasks
            runs = ", ".join(per_task[0]["runs"])
            lines.append(f"| {label} ({runs}) | {recipe} | " + " | ".join(f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}" for c in per_task)
                         + f" | {100 * mean.mean():.2f} ± {100 * mean.std():.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument(
        "--model", action="append", default=[], help="run name in DATA/runs, 'random', or NAME=FOLDER (repeatable)"
    )
    p.add_argument("--recipe", action="append", choices=list(RECIPES), help="clip recipes (default: all)")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--seeds", type=int, default=10, help="MLP seeds; 0: logistic-regression screen only (fast)")
    p.add_argument("--loso", action="store_true", help="also leave-one-speaker-out on digits")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: DATA/eval)")
    p.add_argument(
        "--group", action="append", default=[], metavar="LABEL=RUN,RUN,...",
        help="also report the mean ± std over these --model runs (seeds of one recipe); repeatable",
    )  # fmt: skip
    a, root = start(p, argv)
    groups = {}
    for g in a.group:
        label, _, names = g.partition("=")
        if not label or not names:
            p.error(f"--group {g!r}: expected LABEL=RUN,RUN,...")
        groups[label] = names.split(",")
    res = evaluate(
        root,
        a.model or ["ae_c", "random"],
        a.recipe or list(RECIPES),
        a.split,
        a.seeds,
        a.out or root / "eval",
        a.loso,
        groups,
    )
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
