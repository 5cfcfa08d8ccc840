"""Training patches from stored log-mels: the max-energy patch (docs/method.md 1.4), multi-patch windows, the
scaler fit, and the original HDF5 layout (``dataset/{data,label,id}``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coala_embed.config import PATCH_FRAMES

PATCH = PATCH_FRAMES
ENERGY_HOP = 12


def max_energy_start(spec: np.ndarray, frame: int = PATCH, hop: int = ENERGY_HOP) -> int:
    """Start frame of the window (length ``frame``, hop ``hop``, no padding) with the largest sum of log-mel
    values; the first maximum on ties. ``spec`` is ``[n_mels, T]`` with ``T >= frame``."""
    T = spec.shape[1]
    if T < frame:
        raise ValueError(f"spectrogram has {T} frames, fewer than one patch ({frame})")
    col = np.concatenate([[0.0], np.cumsum(spec.sum(axis=0, dtype=np.float64))])
    starts = np.arange(0, T - frame + 1, hop)
    scores = col[starts + frame] - col[starts]
    return int(starts[int(np.argmax(scores))])


def window_starts(n_frames: int, signal_frames: int, hop: int = PATCH // 2, max_windows: int = 16) -> np.ndarray:
    """Multi-patch mode: starts of 96-frame windows over the part that holds signal, ``hop`` apart, at most
    ``max_windows`` evenly spread (so long music does not swamp short effects)."""
    last = max(0, min(n_frames, max(signal_frames, PATCH)) - PATCH)
    starts = np.arange(0, last + 1, hop)
    if starts[-1] != last:
        starts = np.append(starts, last)
    if len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts.astype(np.int64)


def fit_scaler(patch_iter) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scaler over patches ``[.., n_mels, 96]`` per time column (the original's orientation:
    mel rows are samples, the 96 time positions are features). Returns ``(min_, scale_)`` as sklearn's
    ``MinMaxScaler`` stores them: ``x_scaled = x * scale_ + min_``."""
    lo = hi = None
    for p in patch_iter:
        p = np.asarray(p, dtype=np.float64).reshape(-1, p.shape[-2], p.shape[-1])
        pmin, pmax = p.min(axis=(0, 1)), p.max(axis=(0, 1))
        lo = pmin if lo is None else np.minimum(lo, pmin)
        hi = pmax if hi is None else np.maximum(hi, pmax)
    if lo is None:
        raise ValueError("no patches to fit the scaler on")
    rng = hi - lo
    rng[rng == 0] = 1.0  # sklearn's handling of constant features
    scale = 1.0 / rng
    return (-lo * scale).astype(np.float32), scale.astype(np.float32)


def write_hdf5(path: str | Path, ids: np.ndarray, data: np.ndarray, labels: np.ndarray) -> None:
    """Write the authors' layout: group ``dataset`` with ``id [N, 1] int32``, ``data [N, 96, 96] float32``
    (scaled patches, axes mel x time) and ``label [N, n_tags] int16``."""
    import h5py

    from coala_embed.files import atomic_write

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            g = f.create_group("dataset")
            g.create_dataset("id", data=np.asarray(ids, dtype=np.int32).reshape(-1, 1))
            g.create_dataset("data", data=np.asarray(data, dtype=np.float32))
            g.create_dataset("label", data=np.asarray(labels, dtype=np.int16))

    atomic_write(path, write)


def read_hdf5(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(ids [N], data [N, 96, 96] float32, labels [N, n_tags] int16)``, dropping the trailing
    all-zero rows (id 0) that the original ``create_dataset.py`` could leave."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f["dataset"]
        ids = g["id"][:].reshape(-1)
        data = g["data"][:]
        labels = g["label"][:]
    keep = ~((ids == 0) & (np.abs(data).reshape(len(data), -1).max(axis=1) == 0))
    return ids[keep], data[keep].astype(np.float32), labels[keep]
