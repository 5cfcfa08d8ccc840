"""Embed a collection of files into one matrix + manifest: decoding ahead of the model (``decoding``),
cross-file batches, atomic outputs and shards; the resumable progress and the output lock are ``journal``'s, the
joining of outputs (``merge``, ``--append``) ``joining``'s."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import decoding
from .api import ClipAccumulator, batch_across
from .decoding import decode, resolve_log_mel_on
from .device import resolve_precision
from .errors import CoalaEmbedError
from .files import atomic_write_all
from .frontend import Patches
from .journal import Journal, discard, file_stamp, state_dir
from .model import CoalaModel
from .version import __version__

FORMATS = ("npy", "npz")


@dataclass
class Options:
    """What a run writes and how."""

    fmt: str = "npy"  # npy | npz
    frames: bool = False  # npz only: frame embeddings, their times and per-file offsets
    batch_size: int = 64
    workers: int = 2  # decoding threads or processes
    decoders: str = "auto"  # threads | processes | auto (decoding.resolve_decoders)
    log_mel_on: str = "auto"  # cpu (in the decoders) | device (the model's) | auto (decoding.resolve_log_mel_on)
    max_hours: float = 24.0  # longer files are reported as failures
    precision: str = "fp32"  # fp32 | bf16 | auto (device.resolve_precision; the manifest records what ran)


def default_workers(device_type: str, cores: int | None = None) -> int:
    """Decoding threads or processes when ``--workers`` is not given: on a GPU the CPU only decodes and
    resamples (and computes log-mels, with ``--log-mel-on cpu``), so all cores but two (one feeds the GPU)
    decode; on a CPU the encoder takes the same cores, and half of them decode (the encoder and the decoding
    stages cost about the same in fp32; on 2 cores both ways give 2, what ``bench/throughput.py`` measures)."""
    cores = cores or decoding.cores()
    return max(2, cores - 2 if device_type == "cuda" else cores // 2)


def manifest_path(out: Path) -> Path:
    """``feats.npy`` -> ``feats.manifest.json``."""
    return out.with_name(out.stem + ".manifest.json")


def check_output(out: Path, fmt: str | None = None) -> str:
    """Validate an output path before any audio is decoded; return its format (fixed by the extension).

    Raises CoalaEmbedError naming the problem: an unknown extension, a ``fmt`` that contradicts it, a folder in
    the way, a parent folder that cannot be created or written.
    """
    ext = out.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise CoalaEmbedError(f"{out}: the output must end in .npy or .npz (the extension sets the format)")
    if fmt is not None and fmt != ext:
        raise CoalaEmbedError(
            f"{out}: --format {fmt} contradicts the extension .{ext}; use -o {out.with_suffix('.' + fmt)}"
        )
    if out.is_dir():
        raise CoalaEmbedError(f"{out} is a folder; give a file name such as {out / ('feats.' + ext)}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CoalaEmbedError(f"cannot create the output folder {out.parent}: {e.strerror or e}") from e
    probe = out.with_name(f".{out.name}.{os.getpid()}.probe")
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise CoalaEmbedError(f"cannot write to the output folder {out.parent}: {e.strerror or e}") from e
    return ext


def model_info(model: CoalaModel) -> dict:
    """The checkpoint as a manifest records it: where it came from, the sha256 of its weights and of its
    ``config.json`` (front-end, tag vocabulary), its revision and variant."""
    info = model.config.info
    return {
        "source": getattr(model, "source", None),
        "sha256": info.get("sha256"),
        "config_sha256": getattr(model, "config_sha256", None),
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
    fingerprint: str | None = None,
    total_inputs: int | None = None,
) -> dict:
    """Embed ``paths`` into ``out`` (+ manifest); returns the manifest. ``indices`` are the files' positions
    in the full input list (for shards), ``fingerprint`` and ``total_inputs`` identify that list
    (:func:`inputs_fingerprint`; what ``merge`` checks). Raises CoalaEmbedError when progress exists and
    ``resume`` is off."""
    indices = list(range(len(paths))) if indices is None else indices
    dim = model.config.model.embedding_dim
    precision = resolve_precision(opts.precision, model.device)
    key = {  # what a resumed run must share with the run it finishes (each file's content: ``file_stamp``)
        "inputs": [str(p) for p in paths],
        "model": model_info(model),
        "frontend": asdict(model.config.frontend),
        "clip": asdict(model.config.clip),
        "options": {"fmt": opts.fmt, "frames": opts.frames, "precision": precision},
    }
    sdir = state_dir(out)
    if sdir.exists() and not resume:
        raise CoalaEmbedError(f"{sdir} holds an interrupted run: add --resume to finish it, or -f to start over")
    state = Journal(sdir, model.config.clip_dim, dim, key, opts.frames)
    stamps = {i: file_stamp(p) for i, p in zip(indices, paths)}  # before decoding: a later change is caught
    done = state.done(stamps)
    todo = [(i, p) for i, p in zip(indices, paths) if i not in done]
    t0 = time.time()
    audio_s = sum(e.get("duration", 0.0) for e in state.entries)
    bar = _progress_bar(len(paths), len(paths) - len(todo), progress)

    # A file whose parts are not all embedded yet: index -> its clip vector's running sums, and with --frames the
    # parts' (starts, ends, z); neither the patches nor (without --frames) their embeddings are kept, so memory
    # does not grow with the file's duration or the hop
    partial: dict[int, tuple[ClipAccumulator, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]] = {}

    def record(chunk: list[tuple[tuple[int, Path, bool], Patches | Exception, np.ndarray | None]]) -> None:
        """Collect embedded parts; write each file once its last part is in (or its error)."""
        nonlocal audio_s
        results: list[tuple[dict, np.ndarray | None, np.ndarray | None, np.ndarray | None]] = []
        for (i, path, last), p, fr in chunk:
            if isinstance(p, Patches) and fr is not None:
                acc, parts = partial.setdefault(i, (ClipAccumulator(model.config.clip.stat), []))
                acc.add(fr)
                if opts.frames:
                    parts.append((p.starts, p.ends, fr[:, :dim]))
                if not last:
                    continue
                partial.pop(i)
                duration = p.duration
                entry = {"index": i, "path": str(path), "status": "ok", "duration": round(duration, 4),
                         "n_frames": acc.n, "stamp": stamps[i]}  # fmt: skip
                frames = times = None
                if opts.frames:
                    frames = np.concatenate([f for _, _, f in parts])
                    times = np.stack([np.concatenate([a for a, _, _ in parts]),
                                      np.concatenate([b for _, b, _ in parts])], axis=1)  # fmt: skip
                results.append((entry, acc.vector()[None], frames, times))
                audio_s += duration
            else:
                partial.pop(i, None)
                entry = {"index": i, "path": str(path), "status": "error", "error": str(p), "stamp": stamps[i]}
                results.append((entry, None, None, None))
        if not results:
            return
        state.append(results)
        bar.update(len(results))
        elapsed = max(time.time() - t0, 1e-9)
        bar.set_postfix_str(f"{audio_s / 3600:.2f} h audio, {audio_s / elapsed:.0f}x real time", refresh=False)

    frontend_device = model.device if resolve_log_mel_on(opts.log_mel_on, model.device) == "device" else None
    parts = decode(todo, model.config.frontend, workers=opts.workers, decoders=opts.decoders,
                   max_seconds=opts.max_hours * 3600, device=frontend_device)  # fmt: skip
    try:
        for chunk in batch_across(parts, model, opts.batch_size, precision):
            record(chunk)
    finally:
        parts.close()  # stops the decoders when the loop ends early
        bar.close()
    opts = dataclasses.replace(opts, precision=precision)
    manifest = finish(out, state, opts, model, shard=shard, seconds=time.time() - t0, n_inputs=len(paths),
                      fingerprint=fingerprint or inputs_fingerprint(paths), total_inputs=total_inputs or len(paths))  # fmt: skip
    state.close()
    discard(sdir)
    return manifest


def _progress_bar(total: int, initial: int, progress: bool):
    """Files done of ``total`` on stderr, only on a terminal and when ``progress``."""
    from tqdm import tqdm

    disable = not progress or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="file", disable=disable, file=sys.stderr, dynamic_ncols=True)


def finish(
    out: Path, state: Journal, opts: Options, model: CoalaModel, *, shard, seconds, n_inputs, fingerprint, total_inputs
) -> dict:
    """Write the final outputs atomically from the progress state, rows in input order; an input embedded again
    on resume (it changed) takes its last entry."""
    latest = {e["index"]: k for k, e in enumerate(state.entries)}
    order = sorted(latest.values(), key=lambda k: state.entries[k]["index"])
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
    emb = rows[sel] if sel else np.zeros((0, model.config.clip_dim), np.float32)
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

    failed = [e for e in files if e["status"] != "ok"]
    manifest = {
        "coala_embed_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "output": out.name,
        "format": opts.fmt,
        "shard": shard,
        "inputs_fingerprint": fingerprint,
        "total_inputs": total_inputs,
        "model": model_info(model),
        "frontend": asdict(model.config.frontend),
        "clip": asdict(model.config.clip),
        "dims": {"clip": model.config.clip_dim, "z": model.config.model.embedding_dim},
        "precision": opts.precision,
        "files": files,
        "summary": {
            "inputs": n_inputs,
            "ok": len(files) - len(failed),
            "failed": len(failed),
            "audio_hours": round(sum(e.get("duration", 0) for e in files) / 3600, 4),
            "seconds": round(seconds, 2),
        },
    }
    write_pair(out, write, manifest)
    return manifest


def write_pair(out: Path, write, manifest: dict) -> None:
    """The features and their manifest, both or neither (a full disk leaves the previous pair, or none)."""
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write_all([(out, write), (manifest_path(out), lambda tmp: tmp.write_text(text, encoding="utf-8"))])


def inputs_fingerprint(paths: list[Path]) -> str:
    """What identifies one run's input list (all of it, before sharding): a hash of the sorted paths."""
    import hashlib

    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:16]
