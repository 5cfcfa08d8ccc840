"""Shared fixtures: audio made in code, a tiny random checkpoint written with save_pretrained."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from coala_embed import CoalaConfig, CoalaModel, load_model, save_pretrained

SR = 22_000
SHARED = Path(__file__).resolve().parents[2] / "shared"


def sine(freq: float = 440.0, seconds: float = 3.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float = 3.0, sr: int = SR, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def chirp(seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f0, f1 = 60.0, 10_000.0
    phase = 2 * np.pi * f0 * seconds / np.log(f1 / f0) * (np.exp(t / seconds * np.log(f1 / f0)) - 1)
    return (0.5 * np.sin(phase)).astype(np.float32)


def fake_collection(path: Path, rows: np.ndarray, model: dict | None = None, index: dict | None = None) -> None:
    """A features file and manifest as coala-embed writes them, for rows made in code (``index``: the manifest's
    record of an index built over some of them)."""
    import json

    np.save(path, rows.astype(np.float32))
    files = [{"index": i, "path": f"f{i:06d}.wav", "status": "ok", "row": i, "duration": 1.0} for i in range(len(rows))]
    manifest = {"output": path.name, "files": files, "dims": {"z": rows.shape[1]},
                "model": model or {"source": "test", "sha256": "0" * 64}, "index": index or {}}  # fmt: skip
    path.with_name(path.stem + ".manifest.json").write_text(json.dumps(manifest))


def random_model(seed: int = 0, **frontend) -> CoalaModel:
    """A random-weight model with a plausible scaler (about (x + 12) / 17, like the original's)."""
    torch.manual_seed(seed)
    cfg = CoalaConfig(tags=tuple(f"tag{i}" for i in range(8)))
    cfg = cfg.replace(**frontend) if frontend else cfg
    from dataclasses import replace

    cfg = replace(cfg, model=replace(cfg.model, n_tags=8))
    model = CoalaModel(cfg)
    with torch.no_grad():
        model.scaler_scale.fill_(1 / 17)
        model.scaler_min.fill_(12 / 17)
        for m in model.modules():  # non-trivial BatchNorm statistics, so BN folding is really tested
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A random checkpoint folder (config.json + model.safetensors), marked untrained."""
    folder = tmp_path_factory.mktemp("weights")
    save_pretrained(random_model(), folder, trained=False)
    return folder


@pytest.fixture(scope="session")
def model(weights_dir) -> CoalaModel:
    return load_model(weights_dir, device="cpu")


@pytest.fixture(scope="session")
def ship() -> str:
    """The recipe ``training/run.sh`` trains and exports (its ``SHIP=``): ``training/configs/<ship>.json``."""
    run_sh = Path(__file__).resolve().parents[1] / "training" / "run.sh"
    return re.search(r"^SHIP=(\w+)", run_sh.read_text(), re.M).group(1)


@pytest.fixture()
def audio_dir(tmp_path) -> Path:
    """Six small files in a tree: 44.1 kHz stereo WAV, FLAC, OGG and a mono 16 kHz file in a subfolder."""
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, ext in enumerate(["wav", "flac", "ogg", "wav"]):
        x = 0.1 * rng.standard_normal((int(44_100 * (1.5 + i)), 2)).astype(np.float32)
        sf.write(d / f"clip{i}.{ext}", x, 44_100)
    sf.write(d / "sub" / "clip0.wav", sine(330, 2.5, 16_000), 16_000)
    sf.write(d / "sub" / "tone.flac", sine(880, 4.0, 48_000), 48_000)
    return d


@pytest.fixture(autouse=True)
def _no_env_weights(monkeypatch):
    monkeypatch.delenv("COALA_EMBED_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield


def fsdd_file() -> Path | None:
    p = SHARED / "data" / "fsdd" / "recordings" / "3_jackson_0.wav"
    return p if p.exists() else None


os.environ.setdefault("TQDM_DISABLE", "1")
