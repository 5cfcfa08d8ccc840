"""Analyses on the corpus's validation sounds: zero-shot tagging quality (precision@5, mAP against the sounds'
real tags, versus a popularity baseline) and the paper's CCA between embeddings and acoustic descriptors.

CCA: the paper used Google's SVCCA (`get_cca_similarity`) and printed the mean canonical correlation per
descriptor group. We re-implement it in numpy: both sides are centred, the embeddings are first reduced to
their top ``--pcs`` principal components (SVCCA's SVD step; with ~600 validation sounds a CCA on all 1152
dimensions would be degenerate), then the canonical correlations are the singular values of ``Qx^T Qy``
(Q from thin QR decompositions); we report their mean over ``min(pcs, descriptor dims)`` components.

    python -m training.eval.analysis --model ae_c --model e_c --model cnn --model random
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from coala_embed.api import embed_patches
from coala_embed.files import write_text

from ..cli import parser, start
from ..corpus.build import CORPUS_FRONTEND
from ..corpus.patches import PATCH
from ..fit.checkpoints import resolve_model, run_corpus, spec_run

log = logging.getLogger(__name__)


def val_patches(corpus: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Unscaled max-energy patches ``[N, 96, 96]`` of the validation sounds, their labels and start frames."""
    z = np.load(corpus / "index.npz")
    logmel = np.load(corpus / "logmel.npy", mmap_mode="r")
    idx = np.flatnonzero(z["val"])
    starts = z["max_energy_start"][idx]
    patches = torch.from_numpy(np.stack([logmel[:, s : s + PATCH] for s in starts]).astype(np.float32))
    return patches, z["labels"][idx], idx


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores)
    hits = truth[order]
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / (np.arange(len(hits)) + 1)
    return float((precision * hits).sum() / hits.sum())


def tag_quality(model, corpus: Path) -> dict:
    """Precision@5 and mAP of zero-shot tags on the validation sounds, and of the popularity baseline
    (every sound gets the training split's most frequent tags)."""
    from coala_embed.tags import tag_scores

    patches, labels, _ = val_patches(corpus)
    z = embed_patches(model, patches)
    zidx = np.load(corpus / "index.npz")
    popularity = zidx["labels"][~zidx["val"]].sum(axis=0).astype(np.float64)
    methods = {"zero_shot": tag_scores(model, z, method="one-hot").numpy()}
    if model.config.tag_sets:
        methods["neighbours"] = tag_scores(model, z, method="neighbours").numpy()
    methods["popularity"] = np.broadcast_to(popularity, labels.shape)
    out: dict[str, dict[str, float] | int] = {}
    for name, s in methods.items():
        top5 = np.argsort(-s, axis=1)[:, :5]
        p5 = float(np.mean([labels[i, top5[i]].mean() for i in range(len(labels))]))
        aps = [average_precision(s[i], labels[i]) for i in range(len(labels))]
        out[name] = {"precision_at_5": p5, "mAP": float(np.nanmean(aps))}
    out["sounds"] = len(labels)
    return out


def mean_cca(x: np.ndarray, y: np.ndarray, pcs: int) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    x = u[:, :pcs] * s[:pcs]
    y = y[:, y.std(0) > 1e-12]
    qx, _ = np.linalg.qr(x)
    qy, _ = np.linalg.qr(y)
    corr = np.linalg.svd(qx.T @ qy, compute_uv=False)
    return float(np.clip(corr[: min(x.shape[1], y.shape[1])], 0, 1).mean())


def descriptors(corpus: Path) -> dict[str, np.ndarray]:
    """MFCC (20), chroma (12), spectral centroid, bandwidth and roll-off of each validation sound's
    max-energy window (the same window as its embedding), as mean, variance and skew over time."""
    import librosa
    from scipy.stats import skew

    from coala_embed.audio_io import load_audio
    from coala_embed.frontend import pad, resample

    cfg = CORPUS_FRONTEND  # the front-end of the corpus log-mels
    _, _, idx = val_patches(corpus)
    z = np.load(corpus / "index.npz")
    import csv

    with open(corpus / "manifest.csv") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    groups: dict[str, list] = {"mfcc": [], "chroma": [], "centroid": [], "bandwidth": [], "rolloff": []}
    for i in idx:
        audio, sr = load_audio(paths[i], max_seconds=120)
        y = pad(resample(audio, sr, cfg.sample_rate), cfg).astype(np.float64)
        s = int(z["max_energy_start"][i] - z["offset"][i])
        hop, sr = cfg.hop_length, cfg.sample_rate
        seg = y[max(0, s * hop - hop) : (s + cfg.patch_frames) * hop + hop]
        mag = np.abs(librosa.stft(seg, n_fft=cfg.n_fft, hop_length=hop))
        mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=mag**2, sr=sr))
        feats = {
            "mfcc": librosa.feature.mfcc(S=mel_db, n_mfcc=20),
            "chroma": librosa.feature.chroma_stft(S=mag, sr=sr),
            "centroid": librosa.feature.spectral_centroid(S=mag, sr=sr),
            "bandwidth": librosa.feature.spectral_bandwidth(S=mag, sr=sr),
            "rolloff": librosa.feature.spectral_rolloff(S=mag, sr=sr),
        }
        for k, v in feats.items():
            groups[k].append(np.concatenate([v.mean(1), v.var(1), np.nan_to_num(skew(v, axis=1))]))
    return {k: np.stack(v) for k, v in groups.items()}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--pcs", type=int, default=20)
    p.add_argument("--corpus", default=None, help="corpus whose validation sounds are analysed (default: AE-C's)")
    p.add_argument("--out", type=Path, default=None)
    a, root = start(p, argv)
    corpus = root / a.corpus if a.corpus else run_corpus(root / "runs" / "ae_c")
    out = a.out or root / "eval"
    out.mkdir(parents=True, exist_ok=True)
    desc = descriptors(corpus)
    patches, _, _ = val_patches(corpus)
    results: dict = {"cca": {}, "tags": {}, "pcs": a.pcs}
    for spec in a.model or ["ae_c", "random"]:
        name, model = resolve_model(spec, root)
        z = embed_patches(model, patches)
        results["cca"][name] = {g: mean_cca(z, d, a.pcs) for g, d in desc.items()}
        if model.tag is not None and name != "random":  # each run on the validation sounds of its own corpus
            run = spec_run(spec, root)
            results["tags"][name] = tag_quality(model, run_corpus(run) if run else corpus)
        log.info("%s: %s", name, json.dumps({"cca": results["cca"][name], "tags": results["tags"].get(name)}))
    write_text(out / "analysis.json", json.dumps(results, indent=1) + "\n")
    lines = [f"Mean canonical correlation (embeddings reduced to {a.pcs} PCs) on the corpus's validation sounds:", "",
             "| embedding | " + " | ".join(desc) + " |", "|---|" + "---|" * len(desc)]  # fmt: skip
    for name, r in results["cca"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r[g]:.3f}" for g in desc) + " |")
    if results["tags"]:
        lines += ["", "Tagging the validation sounds of each model's own training corpus (their real tags as truth; "
                  "precision@5 / mAP). `one-hot`: cosine "
                  "to each single tag's projection; `neighbours`: votes of the nearest training tag sets "
                  "(`predict_tags`' default); popularity: every sound gets the training split's most frequent tags.",
                  "", "| model | one-hot | neighbours | popularity |", "|---|---|---|---|"]  # fmt: skip
        cell = lambda r, k: f"{r[k]['precision_at_5']:.3f} / {r[k]['mAP']:.3f}" if k in r else "-"  # noqa: E731
        for name, r in results["tags"].items():
            lines.append(f"| {name} | {cell(r, 'zero_shot')} | {cell(r, 'neighbours')} | {cell(r, 'popularity')} |")
    write_text(out / "analysis.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
