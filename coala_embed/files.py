"""Writing files so that a reader never sees half of one: the one atomic-write helper of the repository."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX):
    ``path`` holds either its old content or the whole new one, never a part. The temporary file is removed if
    ``write`` fails. ``np.save`` and ``np.savez`` add an extension to a name: use :func:`save_npy` and
    :func:`save_npz`, which write through a file handle.

    Raises:
        OSError: naming ``path`` (``filename``); ``errno.ENOSPC`` when the disk filled up, also where the writer
            only reported a short write.
    """
    atomic_write_all([(path, write)])


def atomic_write_all(writes: list[tuple[str | os.PathLike, Callable[[Path], Any]]]) -> None:
    """:func:`atomic_write` for files that belong together (features and their manifest): every file is written
    to its temporary name first, and only once all of them are complete are they renamed into place, so a
    failure (a full disk) leaves every path as it was."""
    tmps: list[tuple[Path, Path]] = []
    try:
        for path, write in writes:
            path = Path(path)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmps.append((tmp, path))
            try:
                write(tmp)
            except OSError as e:
                raise named_error(e, path) from e
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)


def named_error(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` as an OSError that names ``path``; a failure on a full file system (numpy's short writes carry no
    errno) becomes ``errno.ENOSPC``."""
    code = e.errno
    if code is None or code == errno.EIO:
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free < 1 << 20:
                code = errno.ENOSPC
    return OSError(code, os.strerror(code) if code else str(e), str(path))


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
