"""get_embedding / embed_file / embed_files: audio in, embeddings out; batching lives here (decoding files in
blocks: ``streaming``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch

from .audio_io import find_audio
from .config import CLIP_STATS
from .device import float32_convolutions, resolve_device, resolve_precision
from .frontend import PatchCutter, Patches, check_sample_rate, prepare, to_mono
from .model import CoalaModel
from .streaming import file_patches, resampled_blocks, stream_block_seconds, stream_threshold

DEFAULT_BATCH_SIZE = 64


@dataclass
class Embedding:
    """Embeddings of one clip.

    Attributes:
        clip: ``[C]`` float32, the clip vector (``config.clip``: by default the mean of the patch embeddings).
        frames: ``[T, D]`` float32, the patch embeddings z, one row per 96-frame patch (2.234 s).
        starts, ends: ``[T]`` start and end of each patch in seconds.
        duration: the clip's duration in seconds.
    """

    clip: np.ndarray
    frames: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    duration: float


def _model(model: CoalaModel | None, device: str | torch.device | None) -> CoalaModel:
    from .hub import load_model

    if model is None:
        return load_model(device=device)
    if device is not None:
        model = model.to(resolve_device(device))
    return model


@torch.inference_mode()
def embed_patches(
    model: CoalaModel,
    patches: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "fp32",
    readout: str | None = None,
) -> np.ndarray:
    """The readout ``[N, R]`` float32 (``CoalaModel.forward``: the embeddings z, ``R = 1152``, unless
    ``config.clip.readout`` adds the block maxima) of unscaled log-mel patches ``[N, 96, 96]``, ``batch_size`` at a
    time.

    ``precision="bf16"`` runs the convolutions under bfloat16 autocast where bfloat16 is native (GPUs, CPUs with
    AVX-512 BF16 or AMX; elsewhere it warns and runs fp32, see :func:`coala_embed.device.resolve_precision`);
    ``"auto"`` picks bf16 where native. Embeddings then differ from fp32 by the tolerance measured in
    ``tests/test_model.py``. ``readout`` overrides the checkpoint's (``"z"``: the patch embeddings z alone).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = model.device
    precision = resolve_precision(precision, dev)
    out = []
    # On a GPU the batches are queued without waiting for each one (one copy back at the end).
    with float32_convolutions(dev), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, len(patches), batch_size):
            out.append(model(patches[i : i + batch_size].to(dev, non_blocking=True), readout).float())
    if not out:
        cfg = model.config if readout is None else model.config.with_clip(readout=readout)
        return np.zeros((0, cfg.readout_dim), np.float32)
    return torch.cat(out).cpu().numpy()


def clip_vector(readout: np.ndarray, stat: str = "mean") -> np.ndarray:
    """The one function that turns the per-patch readout of a clip ``[T, R]`` (``CoalaModel.forward``) into its
    clip vector: ``"mean"`` (the paper's, ``[R]``) or ``"meanstd"`` (mean and standard deviation side by side,
    ``[2R]``); ``config.clip.stat`` says which. :class:`ClipAccumulator` computes it from parts."""
    return ClipAccumulator(stat).add(readout).vector()


class ClipAccumulator:
    """:func:`clip_vector` of a clip whose patches arrive in parts (a long file, block by block), from running
    sums in float64: memory stays the same whatever the clip's duration and hop."""

    def __init__(self, stat: str = "mean") -> None:
        if stat not in CLIP_STATS:
            raise ValueError(f"stat must be one of {CLIP_STATS}, got {stat!r}")
        self.stat = stat
        self.n = 0
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None

    def add(self, readout: np.ndarray) -> ClipAccumulator:
        """Add the readout ``[T, R]`` of some of the clip's patches."""
        x = np.asarray(readout, np.float64)
        s = x.sum(axis=0)
        self.sum = s if self.sum is None else self.sum + s
        if self.stat == "meanstd":
            q = np.square(x).sum(axis=0)
            self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.n += len(x)
        return self

    def vector(self) -> np.ndarray:
        """The clip vector ``[R]`` (``[2R]`` for ``meanstd``), float32."""
        if self.sum is None or self.n == 0:
            raise ValueError("a clip vector needs at least one patch")
        mean = self.sum / self.n
        if self.stat == "mean":
            return mean.astype(np.float32)
        assert self.sumsq is not None  # kept for meanstd
        std = np.sqrt(np.maximum(self.sumsq / self.n - np.square(mean), 0.0))
        return np.concatenate([mean, std]).astype(np.float32)


def _finish(p: Patches, readout: np.ndarray, model: CoalaModel) -> Embedding:
    """The clip's Embedding from its patches' readout: the clip vector, and z as the frames."""
    frames = readout[:, : model.config.model.embedding_dim]
    return Embedding(clip_vector(readout, model.config.clip.stat), frames, p.starts, p.ends, p.duration)


def get_embedding(
    audio: np.ndarray | torch.Tensor,
    sr: int,
    *,
    model: CoalaModel | None = None,
    frames: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    hop_frames: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embed an audio array.

    Args:
        audio: ``[n_samples]``, or 2-D multichannel (the shorter axis is channels; they are averaged);
            numpy or torch, any sample rate (resampled to 22 kHz with soxr).
        sr: sample rate of ``audio`` in Hz.
        model: from :func:`coala_embed.load_model`; loading it once and passing it is much faster.
            None loads the default checkpoint.
        frames: return patch embeddings with their times instead of the clip vector.
        batch_size: patches per forward pass.
        device: ``None`` (CUDA when available), ``"cpu"``, ``"cuda[:N]"``.
        hop_frames: hop between patches in STFT frames (23.3 ms each), 1..96; None keeps the checkpoint's
            (96: non-overlapping 2.23-s patches). For event detection ``frames=True, hop_frames=2`` gives a
            patch every 46 ms, at 48 times the encoder's work.

    Returns:
        The clip vector ``[config.clip_dim]`` float32 (1664 with the bundled checkpoint's ``z+max``, 1152 with the
        paper's mean of z; :class:`~coala_embed.config.ClipConfig`); with ``frames=True`` a tuple
        ``(embeddings [T, 1152], times [T, 2])`` holding each patch's start and end in seconds. Audio
        shorter than one patch (2.23 s) is zero-padded and dithered up to one patch (see README).

    Raises:
        AudioError: empty audio, NaN or Inf samples, a bad shape or sample rate.
        DeviceError: ``device`` names a GPU that is not there.
    """
    model = _model(model, device)
    cfg = model.config.frontend
    if hop_frames is not None:
        cfg = replace(cfg, chunk_hop=hop_frames)
    sr = check_sample_rate(sr)
    mono = to_mono(audio)
    if len(mono) / sr <= stream_threshold(cfg):
        p = prepare(mono, sr, cfg)
        emb = _finish(p, embed_patches(model, p.patches, batch_size), model)
    else:  # long arrays block by block, as long files: memory stays flat in the duration
        step = int(stream_block_seconds(cfg) * sr)
        blocks = (mono[i : i + step] for i in range(0, len(mono), step))
        starts, ends, embs, duration = [], [], [], 0.0
        cut = PatchCutter(cfg)
        for q in map(cut, resampled_blocks(blocks, sr, cfg)):  # keep each block's times and embeddings, not patches
            starts.append(q.starts)
            ends.append(q.ends)
            embs.append(embed_patches(model, q.patches, batch_size))
            duration = q.duration
        p = Patches(torch.zeros(0), np.concatenate(starts), np.concatenate(ends), duration)
        emb = _finish(p, np.concatenate(embs), model)
    if frames:
        return emb.frames, np.stack([emb.starts, emb.ends], axis=1)
    return emb.clip


def embed_file(
    path: str | os.PathLike,
    *,
    model: CoalaModel | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> Embedding:
    """Embed one audio file; returns clip and frame embeddings with times.

    Raises:
        AudioError: the file is missing, not audio, unreadable, empty, or holds NaN/Inf.
    """
    model = _model(model, device)
    p = file_patches(path, model.config.frontend)
    return _finish(p, embed_patches(model, p.patches, batch_size), model)


K = TypeVar("K")


def batch_across(
    items: Iterable[tuple[K, Patches | Exception]],
    model: CoalaModel,
    batch_size: int = DEFAULT_BATCH_SIZE,
    precision: str = "fp32",
    max_items: int = 256,
) -> Iterator[list[tuple[K, Patches | Exception, np.ndarray | None]]]:
    """Fill each forward pass with the patches of several clips.

    ``items`` are ``(key, Patches)`` or ``(key, error)``; once at least ``batch_size`` patches (or
    ``max_items`` items) are waiting they are embedded together, and one list per flush is yielded,
    in input order: ``(key, patches, frame embeddings [T, D])``, or ``(key, error, None)``.
    """
    pending: list[tuple[K, Patches | Exception]] = []
    n_patches = 0

    def flush() -> list[tuple[K, Patches | Exception, np.ndarray | None]]:
        good = [p for _, p in pending if isinstance(p, Patches)]
        emb = embed_patches(model, torch.cat([p.patches for p in good]), batch_size, precision) if good else None
        out: list[tuple[K, Patches | Exception, np.ndarray | None]] = []
        at = 0
        for key, p in pending:
            if isinstance(p, Patches) and emb is not None:
                out.append((key, p, emb[at : at + len(p.patches)]))
                at += len(p.patches)
            else:
                out.append((key, p, None))
        return out

    for key, p in items:
        pending.append((key, p))
        if isinstance(p, Patches):
            n_patches += len(p.patches)
        if n_patches >= batch_size or len(pending) >= max_items:
            yield flush()
            pending, n_patches = [], 0
    if pending:
        yield flush()


def embed_files(
    paths: Iterable[str | os.PathLike],
    *,
    model: CoalaModel | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
) -> Iterator[tuple[str, Embedding | Exception]]:
    """Embed many files, filling each forward pass with patches from several files.

    ``paths`` is an iterable of paths; a single path (a ``str`` or ``PathLike``) is read as one input, and a
    folder as the audio files inside it (recursively, as the command line finds them).

    Yields ``(path, Embedding)`` in input order, or ``(path, AudioError)`` for a file that failed; one bad
    file never stops the others.
    """
    from .errors import CoalaEmbedError

    if isinstance(paths, (str, bytes, os.PathLike)):  # iterating a string would give one "file" per character
        paths = [os.fsdecode(paths)]
    files = (q for p in paths for q in (find_audio([p]) if os.path.isdir(p) else [p]))  # lazy, as ``paths``
    model = _model(model, device)

    def decoded() -> Iterator[tuple[str, Patches | Exception]]:
        for path in files:
            try:
                yield str(path), file_patches(path, model.config.frontend)
            except CoalaEmbedError as e:
                yield str(path), e

    for chunk in batch_across(decoded(), model, batch_size):
        for path, p, frames in chunk:
            if isinstance(p, Patches) and frames is not None:
                yield path, _finish(p, frames, model)
            elif isinstance(p, Exception):
                yield path, p
