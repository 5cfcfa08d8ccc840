"""The HEAR 2021 common API (hearbenchmark.com): ``load_model``, ``get_timestamp_embeddings``,
``get_scene_embeddings``.

HEAR models declare one of the challenge's sample rates; COALA runs at 22 000 Hz, so the model declares
22 050 Hz and resamples internally (soxr). Timestamp embeddings are 96-frame patches every ``hop_frames``
frames (12 frames = 279 ms by default), centred on their timestamps: the audio is padded by half a patch at
both ends (zeros plus the seeded dither), so the first timestamp is 0 ms.
"""

from __future__ import annotations

import numpy as np
import torch

from .api import embed_patches, get_embedding
from .frontend import dither, gather, log_mel, resample
from .hub import load_model as _load
from .model import CoalaModel

HEAR_SAMPLE_RATE = 22_050


class HearModel(torch.nn.Module):
    """A :class:`CoalaModel` with the attributes HEAR asks for."""

    sample_rate = HEAR_SAMPLE_RATE

    def __init__(self, model: CoalaModel, hop_frames: int = 12) -> None:
        super().__init__()
        self.model = model
        self.hop_frames = hop_frames
        self.scene_embedding_size = model.config.clip_dim  # the clip vector (1152 with the paper's readout)
        self.timestamp_embedding_size = model.config.model.embedding_dim  # the patch embedding z


def load_model(model_file_path: str = "", device: str | None = None, hop_frames: int = 12) -> HearModel:
    """A HEAR model from a checkpoint folder or Hub repo id; ``""`` means the default checkpoint."""
    return HearModel(_load(model_file_path or None, device=device), hop_frames)


def _as_batch(audio: torch.Tensor | np.ndarray) -> np.ndarray:
    a = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if a.ndim != 2:
        raise ValueError(f"HEAR audio must be [n_sounds, n_samples], got shape {a.shape}")
    return a.astype(np.float32)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[n_sounds, n_timestamps, 1152]`` and timestamps ``[n_sounds, n_timestamps]`` in ms (the
    centre of each patch) for audio ``[n_sounds, n_samples]`` at ``model.sample_rate``."""
    cfg = model.model.config.frontend
    half = cfg.patch_frames // 2 * cfg.hop_length
    embs, stamps = [], []
    for x in _as_batch(audio):
        y = resample(x, HEAR_SAMPLE_RATE, cfg.sample_rate)
        y = np.concatenate([np.zeros(half, np.float32), y, np.zeros(half, np.float32)])
        y = y + dither(len(y), cfg)
        spec = log_mel(y, cfg)
        n_ts = max(1, (spec.shape[1] - cfg.patch_frames) // model.hop_frames + 1)
        starts = np.arange(n_ts) * model.hop_frames
        patches = gather(spec, starts, cfg)
        embs.append(torch.from_numpy(embed_patches(model.model, patches, readout="z")))
        stamps.append(torch.from_numpy(starts * cfg.hop_length / cfg.sample_rate * 1000.0))
    return torch.stack(embs), torch.stack(stamps)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One clip vector ``[n_sounds, scene_embedding_size]`` per sound, as ``get_embedding`` makes it."""
    batch = _as_batch(audio)
    return torch.from_numpy(np.stack([get_embedding(x, HEAR_SAMPLE_RATE, model=model.model) for x in batch]))


__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model"]
