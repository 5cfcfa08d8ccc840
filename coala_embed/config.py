"""Frozen settings of the front-end and the model; read from and written to ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

# The original's constants (docs/method.md section 1). One place, so that training and inference cannot drift.
SAMPLE_RATE = 22_000  # Hz; not 22 050
# Input sample rates accepted by the API: below 1 kHz there is no audio to speak of in the 0-11 kHz mel bands
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 1_000_000
N_FFT = 1024
HOP_LENGTH = 512
N_MELS = 96
PATCH_FRAMES = 96  # one patch = 96 frames = 2.234 s
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, added before the natural log
PAD_SECONDS = 10.0
PAD_NOISE = 5e-4  # amplitude of the U[0, 1) dither of the original `pad`

POOLING_MODES = ("signal", "original")
READOUTS = ("z", "z+max")
CLIP_STATS = ("mean", "meanstd")


@dataclass(frozen=True)
class FrontendConfig:
    """Waveform -> log-mel patch settings (docs/method.md section 1).

    ``pooling`` chooses how a clip is cut into patches:
    ``"original"`` pads clips of up to ``pad_seconds`` to that length with dither noise and keeps every
    whole 96-frame chunk (noise-only chunks included), exactly as the paper's ``encode.py``;
    ``"signal"`` pads only up to the next whole patch, so every chunk holds signal.
    ``chunk_hop`` is the hop between patches in frames (96 = the original's non-overlapping chunks).
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    fmin: float = 0.0
    fmax: float = SAMPLE_RATE / 2
    log_eps: float = LOG_EPS
    patch_frames: int = PATCH_FRAMES
    chunk_hop: int = PATCH_FRAMES
    pad_seconds: float = PAD_SECONDS
    pad_noise: float = PAD_NOISE
    noise_seed: int = 0
    pooling: str = "signal"
    stft_dtype: str = "float64"  # "float32": the fast path, about 2x faster front-end (see frontend.log_mel)

    def __post_init__(self) -> None:
        if self.stft_dtype not in ("float64", "float32"):
            raise CheckpointError(f"stft_dtype must be 'float64' or 'float32', got {self.stft_dtype!r}")
        if self.pooling not in POOLING_MODES:
            raise CheckpointError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if not 0 < self.chunk_hop <= self.patch_frames:
            raise CheckpointError(f"chunk_hop must be in 1..{self.patch_frames}, got {self.chunk_hop}")

    @property
    def patch_seconds(self) -> float:
        """Duration covered by one patch's frame centres, in seconds (2.234 s)."""
        return self.patch_frames * self.hop_length / self.sample_rate


@dataclass(frozen=True)
class ModelConfig:
    """Audio encoder dimensions (docs/method.md section 3.1)."""

    channels: int = 128
    n_blocks: int = 5
    embedding_dim: int = 1152
    dropout: float = 0.25
    n_tags: int = 0  # size of the tag vocabulary shipped with the checkpoint (0: none)

    def readout_dim(self, readout: str) -> int:
        """Width of a patch's readout (``ClipConfig.readout``): z, and with ``"z+max"`` the channel maxima of every
        block but the last."""
        return self.embedding_dim + (self.n_blocks - 1) * self.channels * (readout == "z+max")


@dataclass(frozen=True)
class ClipConfig:
    """How the patches of a clip become its clip vector. Patch embeddings (``frames``) are always the code z.

    ``readout`` is the per-patch vector that the statistic runs over: ``"z"``, the paper's code (``[1152]``), or
    ``"z+max"``, z beside each channel's maximum over the feature map of every convolution block but the last
    (``[1152 + 4 * 128]``: small CNNs keep timbre and speaker cues below the bottleneck; docs/deviations.md).
    ``stat`` is ``"mean"`` over the patches (the paper's) or ``"meanstd"`` (mean and standard deviation).
    """

    readout: str = "z"
    stat: str = "mean"

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise CheckpointError(f"clip.readout must be one of {READOUTS}, got {self.readout!r}")
        if self.stat not in CLIP_STATS:
            raise CheckpointError(f"clip.stat must be one of {CLIP_STATS}, got {self.stat!r}")


@dataclass(frozen=True)
class CoalaConfig:
    """Everything ``config.json`` holds: front-end, model and provenance."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)  # a checkpoint without it: the paper's mean of z
    tags: tuple[str, ...] = ()
    # The training split's distinct tag sets (vocabulary indices) and how many sounds had each one:
    # predict_tags lets the sets nearest to a sound in the co-aligned space vote for its tags.
    tag_sets: tuple[tuple[int, ...], ...] = ()
    tag_set_counts: tuple[int, ...] = ()
    trained: bool = False  # False for random weights: load_model() refuses them as a default
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tags"] = list(self.tags)
        d["tag_sets"] = [list(s) for s in self.tag_sets]
        d["tag_set_counts"] = list(self.tag_set_counts)
        d["model_type"] = "coala"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CoalaConfig:
        try:
            frontend = FrontendConfig(**d.get("frontend", {}))
            model = ModelConfig(**d.get("model", {}))
            clip = ClipConfig(**d.get("clip", {}))
        except TypeError as e:
            raise CheckpointError(f"config.json has an unknown setting: {e}") from e
        tags = tuple(d.get("tags", ()))
        try:
            tag_sets = tuple(tuple(int(i) for i in s) for s in d.get("tag_sets", ()))
            counts = tuple(int(c) for c in d.get("tag_set_counts", ()))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"config.json: tag_sets must be lists of tag indices ({e})") from e
        if len(counts) != len(tag_sets) or any(not 0 <= i < len(tags) for s in tag_sets for i in s):
            raise CheckpointError("config.json: tag_sets and tag_set_counts do not match each other or the tags")
        return cls(
            frontend=frontend,
            model=model,
            clip=clip,
            tags=tags,
            tag_sets=tag_sets,
            tag_set_counts=counts,
            trained=bool(d.get("trained", False)),
            info=dict(d.get("info", {})),
        )

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=2)
        # lists of integers (the tag sets) on one line each, so the file stays readable
        text = re.sub(
            r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
            lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
            text,
        )
        Path(path).write_text(text + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CoalaConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from e
        if not isinstance(d, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        return cls.from_dict(d)

    @property
    def readout_dim(self) -> int:
        """Width of the per-patch vector the clip statistic runs over (``CoalaModel.forward``'s output)."""
        return self.model.readout_dim(self.clip.readout)

    @property
    def clip_dim(self) -> int:
        """Width of a clip vector: the readout, twice with ``stat="meanstd"``."""
        return self.readout_dim * (2 if self.clip.stat == "meanstd" else 1)

    def with_clip(self, **clip_changes: Any) -> CoalaConfig:
        """A copy with other clip-vector settings, e.g. ``cfg.with_clip(readout="z")`` for the paper's mean of z."""
        return dataclasses.replace(self, clip=dataclasses.replace(self.clip, **clip_changes))

    def replace(self, **frontend_changes: Any) -> CoalaConfig:
        """A copy with some front-end settings changed, e.g. ``cfg.replace(pooling="original")``."""
        return dataclasses.replace(self, frontend=dataclasses.replace(self.frontend, **frontend_changes))
