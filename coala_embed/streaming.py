"""Files to model-rate signal and patches, whole or block by block, so that a long file never sits whole in memory
(the same patches either way: ``tests/test_frontend.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import soxr
import torch

from .audio_io import BLOCK_SECONDS, audio_info, iter_blocks, load_audio
from .config import FrontendConfig
from .errors import AudioError
from .frontend import PatchCutter, Patches, Signal, check_sample_rate, resample

STREAM_SECONDS = 120.0  # files longer than this are decoded and cut block by block
PATCHES_PER_BLOCK = 256  # with a fine hop, blocks are shortened to hold about this many patches (9 MB)
MIN_BLOCK_SECONDS = 5.0


def stream_block_seconds(cfg: FrontendConfig) -> float:
    """Seconds of audio per streamed block: ``BLOCK_SECONDS`` (60), or less with a fine ``chunk_hop`` so that a
    block's patches stay near ``PATCHES_PER_BLOCK`` (``--hop 2``: 11.9 s), and memory stays the same whatever the
    hop and the duration."""
    hop_seconds = cfg.chunk_hop * cfg.hop_length / cfg.sample_rate
    return min(BLOCK_SECONDS, max(MIN_BLOCK_SECONDS, PATCHES_PER_BLOCK * hop_seconds))


def iter_file_signal(
    path: str | os.PathLike,
    cfg: FrontendConfig,
    *,
    block_seconds: float | None = None,
    max_seconds: float | None = None,
) -> Iterator[Signal]:
    """Decode and resample a file to mono at the model rate: one whole ``Signal`` for a short file, else block
    by block (one soxr stream; ``block_seconds``, default :func:`stream_block_seconds`), so that a long file never sits
    whole in memory. :class:`PatchCutter` cuts them.

    Raises:
        AudioError: the file is missing, not audio, unreadable, empty, holds NaN/Inf, or is longer than
            ``max_seconds`` (checked before decoding).
    """
    sr, _, frames = audio_info(path)
    check_sample_rate(sr, str(path), file=True)  # the range arrays are held to, with the file's name
    if max_seconds is not None and frames / sr > max_seconds:
        raise AudioError(f"{path}: {frames / sr / 3600:.1f} h long, over the limit of {max_seconds / 3600:g} h")
    if frames / sr <= stream_threshold(cfg):
        audio, sr = load_audio(path)
        yield Signal(resample(audio, sr, cfg.sample_rate), whole=True, last=True)
        return
    seconds = block_seconds or stream_block_seconds(cfg)
    yield from resampled_blocks((b for b, _ in iter_blocks(path, seconds)), sr, cfg)


def resampled_blocks(blocks: Iterator[np.ndarray], sr: int, cfg: FrontendConfig) -> Iterator[Signal]:
    """Mono blocks at ``sr`` -> the signal's blocks at the model rate (one soxr stream), the last one marked."""
    resampler = (
        soxr.ResampleStream(sr, cfg.sample_rate, 1, dtype="float32", quality="HQ") if sr != cfg.sample_rate else None
    )
    block = next(blocks, None)
    while block is not None:
        nxt = next(blocks, None)
        x = block if resampler is None else resampler.resample_chunk(block, last=nxt is None)
        yield Signal(x, whole=False, last=nxt is None)
        block = nxt


def iter_file_patches(
    path: str | os.PathLike,
    cfg: FrontendConfig,
    *,
    block_seconds: float | None = None,
    max_seconds: float | None = None,
    device: str | torch.device | None = None,
) -> Iterator[Patches]:
    """Decode, resample and cut a file into patches (log-mels computed on ``device``, the CPU by default),
    yielding them block by block for long files so that memory stays flat (the same patches as decoding the
    whole file; ``tests/test_frontend.py``). Raises AudioError as :func:`iter_file_signal`."""
    cut = PatchCutter(cfg, device)
    for signal in iter_file_signal(path, cfg, block_seconds=block_seconds, max_seconds=max_seconds):
        yield cut(signal)


def stream_threshold(cfg: FrontendConfig) -> float:
    """Signals longer than this many seconds are cut block by block: two minutes, or two blocks with a fine hop
    (``StreamingPatches`` needs more than ``pad_seconds`` and two patches)."""
    return max(min(STREAM_SECONDS, 2 * stream_block_seconds(cfg)), cfg.pad_seconds, 2 * cfg.patch_seconds)


def file_patches(path: str | os.PathLike, cfg: FrontendConfig, *, max_seconds: float | None = None) -> Patches:
    """All patches of a file at once (errors name the file; ``max_seconds`` as in :func:`iter_file_patches`)."""
    parts = list(iter_file_patches(path, cfg, max_seconds=max_seconds))
    return Patches(torch.cat([p.patches for p in parts]), np.concatenate([p.starts for p in parts]),
                   np.concatenate([p.ends for p in parts]), parts[-1].duration)  # fmt: skip
