"""Embeddings pinned before the front-end was refactored: a short clip, a long clip that is streamed block by
block, and the HEAR wrapper, through a fixed random model. A refactor that changes a number fails here.

The pinned values were computed by this file's ``compute()`` on the code before the change
(``python tests/test_pinned.py`` rewrites ``tests/data/pinned.json``); on the same machine they match bit for bit,
on another CPU the convolutions may differ in the last bits, hence the tolerance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conftest import chirp, noise, random_model  # noqa: E402

PINNED = Path(__file__).parent / "data" / "pinned.json"


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {"shape": list(x.shape), "head": x.reshape(-1)[:12].tolist(), "sum": float(x.sum()),
            "abs_sum": float(np.abs(x).sum())}  # fmt: skip


def compute() -> dict:
    import torch

    from coala_embed import get_embedding
    from coala_embed.hear import HearModel, get_scene_embeddings, get_timestamp_embeddings

    torch.set_num_threads(1)
    model = random_model(seed=3).optimize()
    short = chirp(3.0) + noise(3.0, seed=1)
    long = np.tile(chirp(10.0), 15) + noise(150.0, seed=2)  # 150 s: above the 120-s streaming threshold
    out = {}
    for name, x in (("short", short), ("long_streamed", long)):
        frames, times = get_embedding(x, 22_000, model=model, frames=True)
        out[name] = {"clip": _summary(get_embedding(x, 22_000, model=model)), "frames": _summary(frames),
                     "times": _summary(times)}  # fmt: skip
    hear = HearModel(model, hop_frames=24)
    batch = torch.from_numpy(np.stack([chirp(4.0, sr=22_050), noise(4.0, sr=22_050, seed=4)]))
    emb, stamps = get_timestamp_embeddings(batch, hear)
    out["hear"] = {"timestamps": _summary(emb.numpy()), "stamps": _summary(stamps.numpy()),
                   "scene": _summary(get_scene_embeddings(batch, hear).numpy())}  # fmt: skip
    return out


def test_embeddings_are_the_pinned_ones():
    pinned = json.loads(PINNED.read_text())
    now = compute()
    for case, parts in pinned.items():
        for part, want in parts.items():
            got = now[case][part]
            assert got["shape"] == want["shape"], (case, part)
            np.testing.assert_allclose(got["head"], want["head"], rtol=1e-5, atol=1e-6, err_msg=f"{case} {part}")
            np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-5, atol=1e-4, err_msg=f"{case} {part}")
            np.testing.assert_allclose(got["abs_sum"], want["abs_sum"], rtol=1e-5, err_msg=f"{case} {part}")


if __name__ == "__main__":
    PINNED.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {PINNED}")
