"""The only module that touches audio files: decode with soundfile, and find audio in folders."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError

# What libsndfile decodes (MP3 since libsndfile 1.1, Opus inside OGG since 1.0.29).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")
BLOCK_SECONDS = 60.0


NOT_REGULAR = "not a regular file"
_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"))  # fmt: skip


def missing_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be opened at all, in words (no such file, broken link, link loop, a folder, a named
    pipe, socket or device, no permission), or None when it can be. Only regular files are read: reading a pipe
    or a device can wait forever, and one such file would stall a whole batch."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            return f"broken link (it points to {os.readlink(p)}, which does not exist)"
        return "no such file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "link loop (the symbolic links point at each other)"
        return e.strerror or type(e).__name__
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        return f"is {kind}, {NOT_REGULAR} (reading it could wait forever; decode it to a file first)"
    if not os.access(p, os.R_OK):
        return "permission denied"
    return None


def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open ``path`` for reading, checking that it is audio with at least one channel."""
    reason = missing_reason(path)
    if reason is not None:
        raise AudioError(f"{path}: {reason}")
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        reason = _reason(e)
        if "not a regular file" in reason:  # libsndfile's words when a decoder (MP3's) rejects the header itself
            size = os.path.getsize(path)
            reason = f"its header is damaged or truncated ({size:,} bytes); the decoder could not parse it"
        raise AudioError(f"{path}: not readable as audio ({reason})") from e
    if f.channels < 1 or f.samplerate <= 0:
        f.close()
        raise AudioError(f"{path}: has {f.channels} channels at {f.samplerate} Hz")
    return f


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """Return ``(sample_rate, channels, frames)`` of a file without decoding it.

    Raises:
        AudioError: the file cannot be opened as audio, or has no channels.
    """
    with _open(path) as f:
        return f.samplerate, f.channels, f.frames


def downmix(data: np.ndarray) -> np.ndarray:
    """``[n, channels]`` float32 -> ``[n]``: the channel average, summed column by column (numpy's
    ``mean(axis=1)`` over a strided axis was slower than decoding)."""
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    mono = data[:, 0].copy()
    for c in range(1, data.shape[1]):
        mono += data[:, c]
    mono *= np.float32(1.0 / data.shape[1])
    return mono


def _finite_mono(data: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    mono = downmix(data)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: holds NaN or Inf samples")
    return mono


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def load_audio(
    path: str | os.PathLike, *, max_seconds: float | None = None, start_seconds: float = 0.0
) -> tuple[np.ndarray, int]:
    """Decode a file to float32 mono ``[n_samples]`` at its own sample rate (channels averaged).

    Args:
        path: any file libsndfile reads.
        max_seconds: decode at most this much (None: all of it).
        start_seconds: where to start.

    Raises:
        AudioError: unreadable, not audio, truncated beyond repair, empty, or holding NaN/Inf.
    """
    f = _open(path)  # one open per file: the info and the samples come from the same handle
    sr = f.samplerate
    try:
        with f:
            if start_seconds:
                f.seek(int(start_seconds * sr))
            n = -1 if max_seconds is None else int(max_seconds * sr)
            data = f.read(n, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: decoding failed ({_reason(e)})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no samples")
    return _finite_mono(data, path), sr


def iter_blocks(path: str | os.PathLike, block_seconds: float = BLOCK_SECONDS) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a file block by block as float32 mono, so that long files never sit whole in memory."""
    f = _open(path)
    sr = f.samplerate
    block = max(1, int(block_seconds * sr))
    try:
        with f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    break
                yield _finite_mono(data, path), sr
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: decoding failed ({_reason(e)})") from e


def find_audio(
    inputs: Iterable[str | os.PathLike],
    extensions: Iterable[str] = AUDIO_EXTENSIONS,
    recursive: bool = True,
    follow_links: bool = False,
) -> list[Path]:
    """Files named in ``inputs`` plus the audio files inside the folders named there.

    Folders are searched recursively. A symlinked folder is followed only while it stays inside the input
    folder it was found in (``follow_links=True`` follows it anywhere), and only once: a link back into a folder
    already seen is skipped. Files are kept whatever their extension (a broken link among them is reported when
    it is read, as is a named pipe, socket or device); the result is sorted and has no duplicates.

    Raises:
        AudioError: an input does not exist, is a broken link or a link loop.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            top = p.resolve()
            seen: set[Path] = set()
            for root, dirs, files in os.walk(p, followlinks=True):
                real = Path(root).resolve()
                if real in seen or not (follow_links or real == top or top in real.parents):
                    dirs[:] = []
                    continue
                seen.add(real)
                dirs.sort()
                if not recursive:
                    dirs[:] = []
                for name in files:
                    if name.lower().endswith(exts):
                        found.setdefault(Path(root) / name)
        else:
            reason = missing_reason(p)  # an unreadable or special file fails alone, when it is read
            if reason is not None and reason != "permission denied" and NOT_REGULAR not in reason:
                raise AudioError(f"{p}: {reason.replace('no such file', 'no such file or folder')}")
            found.setdefault(p)
    return sorted(found)
