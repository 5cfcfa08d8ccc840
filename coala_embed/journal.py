"""A run's resumable progress beside its output (``feats.npy.partial/``: an append-only journal of finished files)
and the lock that keeps a second run off the same output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import CoalaEmbedError
from .files import named_error, write_text

STATE_SUFFIX = ".partial"


def state_dir(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def discard(folder: Path) -> None:
    """Remove a run's progress folder as one step: it is renamed away first, so a kill while its files are being
    deleted never leaves a log without the rows it counts (a later ``--resume`` would refuse it)."""
    trash = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(trash, ignore_errors=True)  # left by a run killed while discarding
    if folder.exists():
        os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` for one run: a second run on the same output is refused at once (CoalaEmbedError naming the
    process that holds it), never resumed, overwritten or removed under the first.

    The lock is an ``flock`` on ``.OUT.lock`` beside the output, so the kernel releases it when its process dies
    (kill -9 included): a stale lock never blocks ``--resume``. Where ``fcntl`` does not exist (Windows) runs are
    not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CoalaEmbedError(
                f"{out} is being written by another coala-embed run right now (process {holder}); "
                "wait for it to finish, or write to another file with -o"
            ) from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


class Journal:
    """Append-only progress of one run: ``rows.f32`` (clip vectors, ``dim`` wide), ``frames.f32`` (patch
    embeddings, ``frame_dim`` wide) + ``times.f64``
    (with --frames) and ``log.jsonl`` (one line per finished file). A file counts as done only once its log
    line is complete; data past what the log accounts for is cut off on resume, so a kill at any moment
    loses at most the files in flight and never doubles a row."""

    def __init__(self, folder: Path, dim: int, frame_dim: int, key: dict, frames: bool) -> None:
        self.folder, self.dim, self.frame_dim = folder, dim, frame_dim
        folder.mkdir(parents=True, exist_ok=True)
        keyfile = folder / "run.json"
        if keyfile.exists():
            if json.loads(keyfile.read_text()) != key:
                raise CoalaEmbedError(
                    f"{folder} holds progress of a run with other inputs, model or options; rerun with -f to start over"
                )
        else:
            write_text(keyfile, json.dumps(key))
        self.entries: list[dict] = []
        log = folder / "log.jsonl"
        good = 0
        if log.exists():
            raw = log.read_bytes()
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    self.entries.append(json.loads(line))
                except json.JSONDecodeError:
                    break
                good += len(line)
            with open(log, "r+b") as f:
                f.truncate(good)
        rows = sum(1 for e in self.entries if e["status"] == "ok")
        n_frames = sum(e["n_frames"] for e in self.entries if e["status"] == "ok") if frames else 0
        self._truncate("rows.f32", rows * dim * 4)
        self._truncate("frames.f32", n_frames * frame_dim * 4)
        self._truncate("times.f64", n_frames * 2 * 8)
        self.log = open(log, "ab")

    def _truncate(self, name: str, size: int) -> None:
        p = self.folder / name
        with open(p, "ab") as f:
            if f.tell() < size:
                raise CoalaEmbedError(f"{p} is shorter than its log says; rerun with -f to start over")
            f.truncate(size)

    def done(self, stamps: dict[int, list[int] | None]) -> set[int]:
        """The inputs finished and unchanged since: an entry whose file's size or modification time differs from
        ``stamps`` (:func:`file_stamp`) is done again, and its new entry replaces it (:func:`finish`)."""
        return {e["index"] for e in self.entries if e.get("stamp") == stamps.get(e["index"])}

    def append(self, results: list[tuple[dict, np.ndarray | None, np.ndarray | None, np.ndarray | None]]) -> None:
        """Append finished files: data first (fsynced), then their log lines."""
        for name, k in (("rows.f32", 1), ("frames.f32", 2), ("times.f64", 3)):
            arrays = [r[k] for r in results if r[k] is not None]
            if arrays:
                try:
                    with open(self.folder / name, "ab") as f:
                        for a in arrays:
                            f.write(np.ascontiguousarray(a).tobytes())
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as e:
                    raise named_error(e, self.folder / name) from e
        try:
            for entry, *_ in results:
                self.log.write((json.dumps(entry) + "\n").encode())
                self.entries.append(entry)
            self.log.flush()
            os.fsync(self.log.fileno())
        except OSError as e:
            raise named_error(e, self.folder / "log.jsonl") from e

    def arrays(self, frames: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        rows = np.fromfile(self.folder / "rows.f32", dtype=np.float32).reshape(-1, self.dim)
        if not frames:
            return rows, None, None
        fr = np.fromfile(self.folder / "frames.f32", dtype=np.float32).reshape(-1, self.frame_dim)
        times = np.fromfile(self.folder / "times.f64", dtype=np.float64).reshape(-1, 2)
        return rows, fr, times

    def close(self) -> None:
        self.log.close()


def file_stamp(path: Path) -> list[int] | None:
    """What tells a resumed run that an input changed since it was embedded: ``[size, mtime_ns]``, or None when
    the file cannot be found (its error entry stands until the file appears)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]
