"""Writing files so that a reader never sees half of one: the one atomic-write helper of the repository."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX):
    ``path`` holds either its old content or the whole new one, never a part. The temporary file is removed if
    ``write`` fails. ``np.save`` and ``np.savez`` add an extension to a name: use :func:`save_npy` and
    :func:`save_npz`, which write through a file handle.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path.write_text`` atomically, in UTF-8."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``Path.write_bytes`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_audio(path: str | os.PathLike, data: Any, sample_rate: int, subtype: str | None = None) -> None:
    """``soundfile.write`` atomically, in the format that ``path``'s extension names."""
    import soundfile as sf

    fmt = Path(path).suffix.lstrip(".").upper()
    atomic_write(path, lambda tmp: sf.write(tmp, data, sample_rate, subtype=subtype, format=fmt))


def save_npy(path: str | os.PathLike, array: Any) -> None:
    """``np.save`` atomically, to exactly ``path``."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez`` atomically, to exactly ``path``."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
