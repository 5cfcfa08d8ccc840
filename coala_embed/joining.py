"""Outputs joined into one: the shards of one sharded run (``merge``), and the rows of a run on new files added
after a collection's rows (``append``, behind ``coala-embed --append``). Either writes the features and their
manifest both or neither, rows in the order the entries give, npz frames carried along."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .batch import Options, inputs_fingerprint, manifest_path, model_info, write_pair
from .device import resolve_precision
from .errors import CoalaEmbedError
from .model import CoalaModel

# What every part of a merge or an append must share: the rows of one model (``same_model``), front-end, readout,
# format and precision.
SHARED = ("model", "frontend", "clip", "format", "precision")


def same_model(a: dict, b: dict) -> bool:
    """Whether two records of a checkpoint (``batch.model_info``) name the same weights and ``config.json``, however
    it was reached (a path, a Hub id, the bundled copy)."""
    return all(a.get(k) == b.get(k) for k in ("sha256", "config_sha256"))


def _shared_differs(a: dict, b: dict) -> str | None:
    """The first of ``SHARED`` in which two manifests (or a manifest and a run's settings) differ, or None."""
    for key in SHARED:
        if not (same_model(a[key], b[key]) if key == "model" else a.get(key) == b.get(key)):
            return key
    return None


def read_output(o: Path) -> dict:
    """The manifest of the output ``o``.

    Raises:
        CoalaEmbedError: the manifest is missing or describes another output.
    """
    mpath = manifest_path(o)
    if not mpath.exists():
        raise CoalaEmbedError(f"{o}: its manifest {mpath.name} is missing")
    m = json.loads(mpath.read_text())
    if m.get("output") != o.name:
        raise CoalaEmbedError(f"{mpath} describes {m.get('output')}, not {o.name}")
    return m


def has_frames(manifest: dict) -> bool:
    """Whether an output holds its files' frame embeddings (``--frames``)."""
    ok = [e for e in manifest["files"] if e["status"] == "ok"]
    return manifest.get("format") == "npz" and bool(ok) and all("frame_offset" in e for e in ok)


def merge(outputs: list[Path], out: Path) -> dict:
    """Join the shard outputs of one sharded run (``--shard K/N`` over one input list) into one output +
    manifest, rows in input order; npz parts keep their frames.

    Raises CoalaEmbedError unless the parts are every shard 1..N of the same run once each (same input list
    fingerprint, model, front-end and format) and the output's extension is that format.
    """
    if not outputs:
        raise CoalaEmbedError("merge needs at least one shard output")
    parts = []
    for o in outputs:
        m = read_output(o)
        if not m.get("shard") or not m.get("inputs_fingerprint"):
            raise CoalaEmbedError(f"{o} is not the output of a --shard K/N run; only shards are merged")
        parts.append((o, m))
    first = parts[0][1]
    n = int(first["shard"].split("/")[1])
    for o, m in parts:
        for key in (*SHARED, "inputs_fingerprint", "total_inputs"):
            if m.get(key) != first.get(key):
                raise CoalaEmbedError(f"{o} differs from {outputs[0]} in {key}: the parts are not shards of one run")
        if int(m["shard"].split("/")[1]) != n:
            raise CoalaEmbedError(f"{o} is shard {m['shard']}, but {outputs[0]} is one of {n}")
    ks = sorted(int(m["shard"].split("/")[0]) for _, m in parts)
    if ks != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(ks))
        doubled = sorted({k for k in ks if ks.count(k) > 1})
        wrong = [f"missing {missing}" if missing else "", f"given twice {doubled}" if doubled else ""]
        raise CoalaEmbedError(f"a merge needs every shard 1..{n} once: " + ", ".join(x for x in wrong if x))
    if out.suffix.lower() != f".{first['format']}":
        raise CoalaEmbedError(f"the shards are {first['format']} files; name the merged output *.{first['format']}")
    entries = sorted(((e, k) for k, (_, m) in enumerate(parts) for e in m["files"]), key=lambda x: x[0]["index"])
    if len({e["index"] for e, _ in entries}) != len(entries):
        raise CoalaEmbedError("the shards overlap: the same input appears in more than one of them")
    if len(entries) != first["total_inputs"]:
        raise CoalaEmbedError(f"the shards hold {len(entries)} of the run's {first['total_inputs']} inputs")
    manifest = dict(first, output=out.name, shard=None)
    return _join(out, [o for o, _ in parts], entries, manifest, {"merged_from": [str(o) for o in outputs]})


def append_conflict(manifest: dict, model: CoalaModel, opts: Options) -> str | None:
    """Why rows that ``model`` would compute with ``opts`` cannot join the output described by ``manifest`` (another
    checkpoint, front-end, readout, hop, format, precision or frames), or None when they can."""
    mine = {
        "model": model_info(model),
        "frontend": asdict(model.config.frontend),
        "clip": asdict(model.config.clip),
        "format": opts.fmt,
        "precision": resolve_precision(opts.precision, model.device),
    }
    key = _shared_differs(manifest, mine)
    if key:
        return f"its {key} differs from this run's ({_differs(manifest.get(key), mine[key])})"
    if manifest.get("shard"):
        return f"it is shard {manifest['shard']} of a run; merge the shards first"
    embedded = any(e["status"] == "ok" for e in manifest["files"])
    if opts.fmt == "npz" and embedded and has_frames(manifest) != opts.frames:
        return "it was written " + ("with" if has_frames(manifest) else "without") + " --frames; give the same"
    return None


def _differs(a, b) -> str:
    """Where two records differ: their first differing field, as ``field: A there, B here``."""
    if isinstance(a, dict) and isinstance(b, dict):
        key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
        return f"{key}: {a.get(key)!r} there, {b.get(key)!r} here"
    return f"{a!r} there, {b!r} here"


def append(out: Path, part: Path, replaced: Collection[int] = ()) -> dict:
    """Add the rows of the output ``part`` (a run on new files, same model and settings) after the rows of ``out``,
    rewriting ``out`` and its manifest both or neither: the rows of ``out`` are kept as they are and the index
    built over them stays valid for them (``coala-embed index`` adds the new ones). The entries of ``out`` whose
    ``index`` is in ``replaced`` (files that failed there and were tried again in ``part``) are dropped, and so is
    an error entry of ``out`` whose path ``part`` holds.

    Raises:
        CoalaEmbedError: the two outputs do not share the model, front-end, readout, format and precision.
    """
    base, new = read_output(out), read_output(part)
    key = _shared_differs(base, new)
    if key:
        raise CoalaEmbedError(f"{part} cannot be appended to {out}: their {key} differ")
    retried = {e["path"] for e in new["files"]}
    entries = [
        (e, 0)
        for e in base["files"]
        if e["status"] == "ok" or (e["path"] not in retried and e["index"] not in replaced)
    ]
    entries += [(e, 1) for e in new["files"]]
    entries = [(dict(e, index=i), k) for i, (e, k) in enumerate(entries)]
    manifest = dict(base, created=new["created"], coala_embed_version=new["coala_embed_version"],
                    inputs_fingerprint=inputs_fingerprint([Path(e["path"]) for e, _ in entries]),
                    total_inputs=len(entries))  # fmt: skip
    return _join(out, [out, part], entries, manifest, {"appended": len(new["files"])})


def _join(out: Path, sources: list[Path], entries: list[tuple[dict, int]], manifest: dict, summary: dict) -> dict:
    """Write ``out`` from the rows (and frames) of ``sources``: ``entries`` are the manifest's files in their new
    order, each with the position of the source that holds its row; rows and frame offsets are renumbered. The
    frames are kept when every embedded file has them."""
    fmt = manifest["format"]
    ok = [e for e, _ in entries if e["status"] == "ok"]
    frames = fmt == "npz" and all("frame_offset" in e for e in ok)
    if fmt == "npz" and not frames and any("frame_offset" in e for e in ok):
        raise CoalaEmbedError(f"{out}: some parts hold frames (--frames) and some do not")
    data = [np.load(s, allow_pickle=False) for s in sources]
    mats = [d["embeddings"] if fmt == "npz" else d for d in data]
    # each source's frames and times, read once (an npz member is read again at every access)
    empty = (np.zeros((0, 0), np.float32), np.zeros((0, 2)))
    frame_arrays = [(d["frames"], d["frame_times"]) if frames and "frames" in d.files else empty for d in data]
    rows, files, fsel, offsets = [], [], [], [0]
    for e, k in entries:
        e = dict(e)
        if e["status"] == "ok":
            rows.append((k, e["row"]))
            e["row"] = len(rows) - 1
            if frames:
                a = int(e["frame_offset"])
                fsel.append((k, a, a + e["n_frames"]))
                e["frame_offset"] = offsets[-1]
                offsets.append(offsets[-1] + e["n_frames"])
        files.append(e)
    dim = mats[0].shape[1]
    emb = np.stack([mats[k][r] for k, r in rows]).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    paths = np.array([e["path"] for e in files if e["status"] == "ok"])

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            if fmt == "npy":
                np.save(fh, emb)
                return
            arrays: dict[str, np.ndarray] = {"embeddings": emb, "paths": paths}
            if frames:
                frame_dim = next((f.shape[1] for f, _ in frame_arrays if f.shape[1]), dim)
                arrays["frames"] = np.concatenate(
                    [frame_arrays[k][0][a:b] for k, a, b in fsel] or [np.zeros((0, frame_dim), np.float32)]
                )
                arrays["frame_times"] = np.concatenate(
                    [frame_arrays[k][1][a:b] for k, a, b in fsel] or [np.zeros((0, 2))]
                )
                arrays["frame_offsets"] = np.asarray(offsets, np.int64)
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    failed = sum(e["status"] != "ok" for e in files)
    manifest = dict(manifest, files=files)
    manifest["summary"] = {
        "inputs": len(files),
        "ok": len(files) - failed,
        "failed": failed,
        "audio_hours": round(sum(e.get("duration", 0) for e in files) / 3600, 4),
        **summary,
    }
    write_pair(out, write, manifest)
    return manifest
