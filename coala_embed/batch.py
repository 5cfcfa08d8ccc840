"""Embed a collection of files into one matrix + manifest: overlapped decoding, cross-file batches,
atomic outputs, resumable progress state, shards and their merge."""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .api import batch_across, file_patches
from .errors import AudioError, CoalaEmbedError
from .frontend import Patches
from .model import CoalaModel

STATE_SUFFIX = ".partial"


@dataclass
class Options:
    """What a run writes and how."""

    fmt: str = "npy"  # npy | npz
    frames: bool = False  # npz only: frame embeddings, their times and per-file offsets
    batch_size: int = 64
    workers: int = 2
    max_hours: float = 24.0  # longer files are reported as failures
    precision: str = "fp32"  # fp32 | bf16


def default_workers(device_type: str, cores: int | None = None) -> int:
    """Decoding threads when ``--workers`` is not given: on a GPU the CPU only decodes, resamples and computes
    log-mels, so all cores but two (one feeds the GPU) decode; on a CPU the encoder takes the same cores,
    and half of them decode (the encoder and the decoding stages cost about the same in fp32; on 2 cores
    both ways give 2, what ``bench/throughput.py`` measures)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(2, cores - 2 if device_type == "cuda" else cores // 2)


def manifest_path(out: Path) -> Path:
    """``feats.npy`` -> ``feats.manifest.json``."""
    return out.with_name(out.stem + ".manifest.json")


def state_dir(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _State:
    """Append-only progress of one run: ``rows.f32`` (clip embeddings), ``frames.f32`` + ``times.f64``
    (with --frames) and ``log.jsonl`` (one line per finished file). A file counts as done only once its log
    line is complete; data past what the log accounts for is cut off on resume, so a kill at any moment
    loses at most the files in flight and never doubles a row."""

    def __init__(self, folder: Path, dim: int, key: dict, frames: bool) -> None:
        self.folder, self.dim = folder, dim
        folder.mkdir(parents=True, exist_ok=True)
        keyfile = folder / "run.json"
        if keyfile.exists():
            if json.loads(keyfile.read_text()) != key:
                raise CoalaEmbedError(
                    f"{folder} holds progress of a run with other inputs, model or options; rerun with -f to start over"
                )
        else:
            atomic_write(keyfile, lambda p: p.write_text(json.dumps(key)))
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
        self._truncate("frames.f32", n_frames * dim * 4)
        self._truncate("times.f64", n_frames * 2 * 8)
        self.log = open(log, "ab")

    def _truncate(self, name: str, size: int) -> None:
        p = self.folder / name
        with open(p, "ab") as f:
            if f.tell() < size:
                raise CoalaEmbedError(f"{p} is shorter than its log says; rerun with -f to start over")
            f.truncate(size)

    def done(self) -> set[int]:
        return {e["index"] for e in self.entries}

    def append(self, results: list[tuple[dict, np.ndarray | None, np.ndarray | None, np.ndarray | None]]) -> None:
        """Append finished files: data first (fsynced), then their log lines."""
        for name, k in (("rows.f32", 1), ("frames.f32", 2), ("times.f64", 3)):
            arrays = [r[k] for r in results if r[k] is not None]
            if arrays:
                with open(self.folder / name, "ab") as f:
                    for a in arrays:
                        f.write(np.ascontiguousarray(a).tobytes())
                    f.flush()
                    os.fsync(f.fileno())
        for entry, *_ in results:
            self.log.write((json.dumps(entry) + "\n").encode())
            self.entries.append(entry)
        self.log.flush()
        os.fsync(self.log.fileno())

    def arrays(self, frames: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        rows = np.fromfile(self.folder / "rows.f32", dtype=np.float32).reshape(-1, self.dim)
        if not frames:
            return rows, None, None
        fr = np.fromfile(self.folder / "frames.f32", dtype=np.float32).reshape(-1, self.dim)
        times = np.fromfile(self.folder / "times.f64", dtype=np.float64).reshape(-1, 2)
        return rows, fr, times

    def close(self) -> None:
        self.log.close()


def _decode(path: Path, model: CoalaModel, opts: Options) -> Patches:
    p = file_patches(path, model.config.frontend, max_seconds=opts.max_hours * 3600)
    if len(p.patches) == 0:
        raise AudioError(f"{path}: gave no patches")
    return p


def model_info(model: CoalaModel) -> dict:
    info = model.config.info
    return {
        "source": getattr(model, "source", None),
        "sha256": info.get("sha256"),
        "revision": info.get("revision") or info.get("commit"),
        "variant": info.get("variant"),
    }


def run(
    paths: list[Path],
    out: Path,
    model: CoalaModel,
    opts: Options,
    *,
    indices: list[int] | None = None,
    shard: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Embed ``paths`` into ``out`` (+ manifest); returns the manifest. ``indices`` are the files' positions
    in the full input list (for shards). Raises CoalaEmbedError when progress exists and ``resume`` is off."""
    from tqdm import tqdm

    indices = list(range(len(paths))) if indices is None else indices
    dim = model.config.model.embedding_dim
    key = {
        "inputs": [str(p) for p in paths],
        "model": model_info(model),
        "frontend": asdict(model.config.frontend),
        "options": {"fmt": opts.fmt, "frames": opts.frames},
    }
    sdir = state_dir(out)
    if sdir.exists() and not resume:
        raise CoalaEmbedError(f"{sdir} holds an interrupted run: add --resume to finish it, or -f to start over")
    state = _State(sdir, dim, key, opts.frames)
    done = state.done()
    todo = [(i, p) for i, p in zip(indices, paths) if i not in done]
    t0 = time.time()
    audio_s = sum(e.get("duration", 0.0) for e in state.entries)
    bar = tqdm(
        total=len(paths),
        initial=len(paths) - len(todo),
        unit="file",
        disable=not progress or not sys.stderr.isatty(),
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def record(chunk: list[tuple[tuple[int, Path], Patches | Exception, np.ndarray | None]]) -> None:
        nonlocal audio_s
        results = []
        for (i, path), p, fr in chunk:
            if isinstance(p, Patches) and fr is not None:
                entry = {
                    "index": i,
                    "path": str(path),
                    "status": "ok",
                    "duration": round(p.duration, 4),
                    "n_frames": len(fr),
                }
                times = np.stack([p.starts, p.ends], axis=1) if opts.frames else None
                results.append((entry, fr.mean(axis=0, keepdims=True), fr if opts.frames else None, times))
                audio_s += p.duration
            else:
                results.append(({"index": i, "path": str(path), "status": "error", "error": str(p)}, None, None, None))
        state.append(results)
        bar.update(len(chunk))
        elapsed = max(time.time() - t0, 1e-9)
        bar.set_postfix_str(f"{audio_s / 3600:.2f} h audio, {audio_s / elapsed:.0f}x real time", refresh=False)

    def decoded(pool: ThreadPoolExecutor) -> Iterator[tuple[tuple[int, Path], Patches | Exception]]:
        """Files decoded by the pool a few ahead of the model, in input order."""
        queue: deque = deque()
        it = iter(todo)
        lookahead = max(2, 4 * opts.workers)
        while True:
            while len(queue) < lookahead:
                nxt = next(it, None)
                if nxt is None:
                    break
                queue.append((nxt[0], nxt[1], pool.submit(_decode, nxt[1], model, opts)))
            if not queue:
                return
            i, path, fut = queue.popleft()
            try:
                p: Patches | Exception = fut.result()
            except CoalaEmbedError as e:
                p = e
            except (MemoryError, OSError, ValueError, RuntimeError) as e:  # anything a bad file can provoke
                p = AudioError(f"{path}: {type(e).__name__}: {e}")
            yield (i, path), p

    try:
        with ThreadPoolExecutor(max(1, opts.workers)) as pool:
            for chunk in batch_across(decoded(pool), model, opts.batch_size, opts.precision):
                record(chunk)
    finally:
        bar.close()
    manifest = finish(out, state, opts, model, shard=shard, seconds=time.time() - t0, n_inputs=len(paths))
    state.close()
    import shutil

    shutil.rmtree(sdir)
    return manifest


def finish(out: Path, state: _State, opts: Options, model: CoalaModel, *, shard, seconds, n_inputs) -> dict:
    """Write the final outputs atomically from the progress state, rows in input order."""
    order = sorted(range(len(state.entries)), key=lambda k: state.entries[k]["index"])
    rows, fr, times = state.arrays(opts.frames)
    # Data rows follow processing order; map them to input order.
    ok_pos, frame_pos, r, f = {}, {}, 0, 0
    for k, e in enumerate(state.entries):
        if e["status"] == "ok":
            ok_pos[k], frame_pos[k] = r, f
            r += 1
            f += e["n_frames"]
    files: list[dict] = []
    sel: list[int] = []
    fsel: list[np.ndarray] = []
    offsets = [0]
    for k in order:
        e = dict(state.entries[k])
        if e["status"] == "ok":
            e["row"] = len(sel)
            sel.append(ok_pos[k])
            if opts.frames:
                fsel.append(np.arange(frame_pos[k], frame_pos[k] + e["n_frames"]))
                e["frame_offset"] = offsets[-1]
                offsets.append(offsets[-1] + e["n_frames"])
        files.append(e)
    emb = rows[sel] if sel else np.zeros((0, model.config.model.embedding_dim), np.float32)
    paths = np.array([e["path"] for e in files if e["status"] == "ok"])
    if opts.fmt == "npz":
        arrays: dict[str, np.ndarray] = {"embeddings": emb, "paths": paths}
        if opts.frames:
            idx = np.concatenate(fsel) if fsel else np.zeros(0, int)
            assert fr is not None and times is not None  # state.arrays(frames=True) returns both
            arrays.update(frames=fr[idx], frame_times=times[idx], frame_offsets=np.asarray(offsets, np.int64))

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
    else:

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, emb)

    atomic_write(out, write)
    failed = [e for e in files if e["status"] != "ok"]
    manifest = {
        "coala_embed_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output": out.name,
        "format": opts.fmt,
        "shard": shard,
        "model": model_info(model),
        "frontend": asdict(model.config.frontend),
        "files": files,
        "summary": {
            "inputs": n_inputs,
            "ok": len(files) - len(failed),
            "failed": len(failed),
            "audio_hours": round(sum(e.get("duration", 0) for e in files) / 3600, 4),
            "seconds": round(seconds, 2),
        },
    }
    atomic_write(manifest_path(out), lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
    return manifest


def merge(outputs: list[Path], out: Path) -> dict:
    """Join shard outputs (npy or npz without frames) into one matrix + manifest, rows in input order."""
    entries: list[tuple[int, dict, int]] = []
    mats: list[np.ndarray] = []
    first: dict | None = None
    for o in outputs:
        m = json.loads(manifest_path(o).read_text())
        first = first or m
        if m["model"] != first["model"] or m["frontend"] != first["frontend"]:
            raise CoalaEmbedError(f"{o} was made with another model or front-end than {outputs[0]}")
        data = np.load(o)
        mat = data["embeddings"] if m["format"] == "npz" else data
        for e in m["files"]:
            entries.append((e["index"], e, len(mats)))
        mats.append(mat)
    entries.sort(key=lambda x: x[0])
    if len({i for i, _, _ in entries}) != len(entries):
        raise CoalaEmbedError("the shards overlap: the same input appears in more than one of them")
    rows, files = [], []
    for _, e, k in entries:
        e = dict(e)
        if e["status"] == "ok":
            rows.append(mats[k][e["row"]])
            e["row"] = len(rows) - 1
        e.pop("frame_offset", None)
        files.append(e)
    emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, mats[0].shape[1]), np.float32)

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, emb)

    atomic_write(out, write)
    failed = sum(e["status"] != "ok" for e in files)
    if first is None:
        raise CoalaEmbedError("merge needs at least one shard output")
    manifest = dict(first, output=out.name, format="npy", shard=None, files=files)
    manifest["summary"] = {
        "inputs": len(files),
        "ok": len(files) - failed,
        "failed": failed,
        "audio_hours": round(sum(e.get("duration", 0) for e in files) / 3600, 4),
        "merged_from": [str(o) for o in outputs],
    }
    atomic_write(manifest_path(out), lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
    return manifest
