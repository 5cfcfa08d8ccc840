"""A tiny generated world for ``run.sh --smoke`` and the tests: a tagged collection, read through the same
``--manifest`` path a user's own collection takes (the matching small tasks: ``training.eval.tasks``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 22_050
KINDS = {  # name -> (tags, generator of one sound)
    "low tone": ("sine tone low", lambda rng, t: np.sin(2 * np.pi * rng.uniform(80, 200) * t)),
    "high tone": ("sine tone high", lambda rng, t: np.sin(2 * np.pi * rng.uniform(2000, 5000) * t)),
    "noise": ("noise hiss", lambda rng, t: rng.standard_normal(len(t)) * 0.3),
    "rising": ("chirp sweep rising", lambda rng, t: np.sin(2 * np.pi * (100 + 2000 * t / t[-1]) * t)),
    "clicks": ("click impulse", lambda rng, t: (rng.random(len(t)) < 0.002) * 1.0),
    "am": ("tone tremolo", lambda rng, t: np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 6 * t))),
}


def sound(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(rng.uniform(0.6, 4.0) * SR)) / SR
    return (0.5 * KINDS[kind][1](rng, t)).astype(np.float32)


def make_collection(folder: Path, per_kind: int = 24, seed: int = 0) -> Path:
    """Write ``per_kind`` sounds of each kind and ``manifest.csv`` (path, tags); return the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    if manifest.exists():
        return manifest
    rng = np.random.default_rng(seed)
    rows = []
    for kind, (tags, _) in KINDS.items():
        for i in range(per_kind):
            name = f"{kind.replace(' ', '_')}_{i:02d}.wav"
            sf.write(folder / name, sound(kind, rng), SR)
            extra = " short" if i % 2 else " long"
            rows.append({"path": name, "tags": tags + extra, "source": "smoke"})
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "tags", "source"])
        w.writeheader()
        w.writerows(rows)
    return manifest
