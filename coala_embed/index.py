"""An approximate-neighbour index over a collection (FAISS, the optional extra ``index``): built once beside the
features, refused when it no longer matches them, and used by ``neighbours``, ``duplicates`` and ``search``.

Two spaces are indexed, each with rows scaled to unit length so that inner product is cosine similarity: the
clips' mean codes z (``Collection.z``: what ``neighbours`` and ``duplicates`` compare) and, when the checkpoint has
a tag encoder, their audio projections in the co-aligned space (what ``search`` ranks). Up to ``FLAT_MAX_ROWS``
rows the index is exact (``IndexFlatIP``); above, an inverted file (``IndexIVFFlat``, ``2 * sqrt(N)`` lists, k-means
on a sample, ``NPROBE`` lists searched), or with ``kind="ivf-sq8"`` the same with 8-bit scalar-quantised rows (a
quarter of the memory). Which index belongs to which features is recorded in the features' manifest (``index``:
the files, the rows, the model, a digest of the rows, the size and modification time of the features and of each
index file). When rows are added after the indexed ones (``coala-embed --append``) and those are unchanged (the
digest), :func:`extend` adds the new rows to the index as it is: an inverted file keeps its lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .batch import manifest_path
from .collection import Collection, Pairs, exact_pairs, normalized
from .errors import CoalaEmbedError
from .files import atomic_write, write_text
from .joining import same_model
from .journal import file_stamp

KINDS = ("auto", "flat", "ivf", "ivf-sq8")
FLAT_MAX_ROWS = 50_000  # "auto": exact below, an inverted file above
NPROBE = 32  # lists searched per query (of 2 * sqrt(N)): recall@10 in bench/index.py
DUPLICATE_NPROBE = 4  # lists each row is compared with: near-duplicates lie in the same or a neighbouring one
SIMS_AT_ONCE = 4_194_304  # similarities of duplicate_pairs computed at once (16 MB; at most as many pairs)
QUERY_ROWS = 8192  # rows gathered at once to compare with a list (38 MB of 1152-d rows)
TRAIN_ROWS_PER_LIST = 40  # k-means sample per list (FAISS asks for at least 39), 10 iterations
ADD_BLOCK = 65_536
REBUILD_GROWTH = 4  # an index extended past this many times the rows it was built on is worth building again


def faiss_module():
    """``faiss``, or a CoalaEmbedError that says how to install it."""
    try:
        import faiss  # type: ignore[import-untyped]
    except ImportError as e:
        raise CoalaEmbedError("the index needs FAISS: pip install 'coala-embed[index]' (faiss-cpu)") from e
    return faiss


def index_files(features: Path) -> dict[str, Path]:
    """``feats.npy`` -> ``{"z": feats.index.faiss, "projection": feats.search.faiss}``."""
    return {
        "z": features.with_name(features.stem + ".index.faiss"),
        "projection": features.with_name(features.stem + ".search.faiss"),
    }


def _blocks(x: np.ndarray, size: int = ADD_BLOCK) -> Iterator[np.ndarray]:
    for a in range(0, len(x), size):
        yield x[a : a + size]


def build(x: np.ndarray, kind: str = "auto", seed: int = 0, progress: bool = False) -> Any:
    """A FAISS index over the rows ``x`` ``[N, D]`` (scaled to unit length here), of ``kind`` (``KINDS``)."""
    faiss = faiss_module()
    if kind not in KINDS:
        raise CoalaEmbedError(f"index kind must be one of {KINDS}, got {kind!r}")
    n, d = x.shape
    if kind == "auto":
        kind = "flat" if n <= FLAT_MAX_ROWS else "ivf"
    if kind == "flat" or n < 2 * TRAIN_ROWS_PER_LIST:
        index = faiss.IndexFlatIP(d)
    else:
        lists = max(1, min(int(2 * math.sqrt(n)), n // TRAIN_ROWS_PER_LIST))
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, lists, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        else:
            index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        sample = np.random.default_rng(seed).choice(n, min(n, lists * TRAIN_ROWS_PER_LIST), replace=False)
        index.train(normalized(x[np.sort(sample)]))
        index.nprobe = min(NPROBE, lists)
    _add(index, x, progress)
    return index


def _add(index: Any, x: np.ndarray, progress: bool) -> None:
    """Add the rows ``x`` (scaled to unit length here) to ``index``, block by block."""
    from tqdm import tqdm

    with tqdm(total=len(x), unit="row", disable=not progress, desc="index") as bar:
        for block in _blocks(x):
            index.add(normalized(block))
            bar.update(len(block))


def kind_of(index: Any) -> str:
    faiss = faiss_module()
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return "ivf-sq8"
    return "ivf" if isinstance(index, faiss.IndexIVF) else "flat"


def _rows_hash(x: np.ndarray, h: Any = None) -> Any:
    """``h`` (a new sha256 when None) updated with the rows ``x`` as float32 bytes."""
    h = hashlib.sha256() if h is None else h
    for block in _blocks(x):
        h.update(np.ascontiguousarray(block, np.float32).data)
    return h


def rows_digest(x: np.ndarray) -> str:
    """The sha256 of the rows ``x`` as float32 bytes: what says that the rows an index covers are unchanged."""
    return _rows_hash(x).hexdigest()


def write(coll: Collection, kind: str = "auto", projections: np.ndarray | None = None, progress: bool = False) -> dict:
    """Build the index of ``coll`` (and of its audio ``projections``, when given), write it beside the features and
    record it in the manifest; return that record."""
    t0 = time.time()
    files = index_files(coll.features)
    record: dict = {"rows": len(coll), "z_dim": coll.z.shape[1], "model": coll.model_info, "trained_rows": len(coll),
                    "files": {}}  # fmt: skip
    for space, rows in (("z", coll.z), ("projection", projections)):
        if rows is None:
            files[space].unlink(missing_ok=True)
            continue
        index = build(rows, kind, progress=progress)
        record["files"][space] = _save(index, files[space])
    return _record(coll, record, t0)


def _save(index: Any, path: Path) -> dict:
    """Write ``index`` to ``path`` atomically; return its entry in the record."""
    faiss = faiss_module()

    def save(tmp: Path) -> None:
        faiss.write_index(index, str(tmp))

    atomic_write(path, save)
    return {"file": path.name, "kind": kind_of(index), "stamp": file_stamp(path), "bytes": path.stat().st_size}


def _record(coll: Collection, record: dict, t0: float, digest: str | None = None) -> dict:
    """Complete ``record`` with what identifies the features now (``digest``: their rows' digest, when known) and
    write it into their manifest."""
    record.update(features=file_stamp(coll.features), digest=digest or rows_digest(coll.embeddings),
                  seconds=round(time.time() - t0, 2))  # fmt: skip
    mpath = manifest_path(coll.features)
    manifest = json.loads(mpath.read_text())
    manifest["index"] = coll.index_record = record
    write_text(mpath, json.dumps(manifest, indent=1) + "\n")
    return record


class NotExtendable(CoalaEmbedError):
    """The index of a collection cannot take the rows added after the ones it covers; ``why`` says why."""

    def __init__(self, coll: Collection, why: str) -> None:
        super().__init__(f"the index of {coll.features} cannot be extended: {why}")
        self.why = why


def _check_extendable(coll: Collection) -> Any:
    """The sha256 state of the rows the index of ``coll`` covers, when it can take the rows added after them: it
    covers fewer rows than the features have, those rows are unchanged (their digest), and it is the model's.

    Raises:
        NotExtendable: it cannot; the index must be built again.
    """
    record = coll.index_record
    files = index_files(coll.features)
    if not record.get("digest"):
        raise NotExtendable(coll, "the manifest records no digest of the indexed rows")
    if record.get("rows") == len(coll):
        raise NotExtendable(coll, f"it covers all {len(coll)} rows already")
    if not 0 < record.get("rows", 0) < len(coll) or record.get("z_dim") != coll.z.shape[1]:
        raise NotExtendable(coll, f"it covers {record.get('rows')} rows, the features have {len(coll)}")
    if not same_model(record.get("model") or {}, coll.model_info):
        raise NotExtendable(coll, "it was built from the rows of another checkpoint")
    for space, entry in record.get("files", {}).items():
        if entry.get("stamp") != file_stamp(files[space]):
            raise NotExtendable(coll, f"{files[space].name} is missing or was rewritten since")
    h = _rows_hash(coll.embeddings[: record["rows"]])
    if h.hexdigest() != record["digest"]:
        raise NotExtendable(coll, f"the first {record['rows']} rows of {coll.features.name} changed since")
    return h


def not_extendable(coll: Collection) -> str | None:
    """Why the index of ``coll`` cannot take the rows added after the ones it covers, or None when it can."""
    try:
        _check_extendable(coll)
    except NotExtendable as e:
        return e.why
    return None


def extend(
    coll: Collection, project: Callable[[np.ndarray], np.ndarray | None] | None = None, progress: bool = False
) -> dict:
    """Add the rows of ``coll`` after the ones its index covers to the index files, without training again; return
    the new record. When a search index exists, ``project`` maps the new rows' z to their audio projections
    (:func:`projections`); it is called only then, after the index was found extendable. The rows are hashed once:
    the digest of the covered rows that checks them goes on over the new ones.

    Raises:
        NotExtendable: the index cannot be extended: it must be built again.
    """
    h = _check_extendable(coll)
    faiss = faiss_module()
    t0 = time.time()
    record, files = dict(coll.index_record), index_files(coll.features)
    start = record["rows"]
    for space in record["files"]:
        rows = coll.z[start:] if space == "z" else project(coll.z[start:]) if project else None
        if rows is None or len(rows) != len(coll) - start:
            raise CoalaEmbedError(f"extending {files[space].name} needs the {len(coll) - start} new rows' projections")
        index = faiss.read_index(str(files[space]))
        _add(index, rows, progress)
        record["files"][space] = _save(index, files[space])
    record.update(rows=len(coll), added=len(coll) - start)
    return _record(coll, record, t0, _rows_hash(coll.embeddings[start:], h).hexdigest())


def load(coll: Collection, space: str = "z") -> Any | None:
    """The index of ``coll`` for ``space`` ("z" or "projection"), or None when none was built.

    Raises:
        CoalaEmbedError: the index no longer matches the features (other rows, another model, a rewritten
            features or index file), or FAISS is missing while an index exists; the message says how to rebuild
            it, or how to add the rows appended since.
    """
    record = coll.index_record
    path = index_files(coll.features)[space]
    rebuild = f"rebuild it with `coala-embed index {coll.features} -f`, or add --exact"
    if not record or space not in record.get("files", {}):
        if path.exists():  # the features were written again (a new run, a merge) after the index was built
            raise CoalaEmbedError(f"the index {path.name} is stale: the manifest of {coll.features} does not record it; "
                                  f"{rebuild}")  # fmt: skip
        return None
    entry = record["files"][space]
    why = None
    if not path.exists():
        why = f"{path.name} is missing"
    elif record.get("rows") != len(coll) or record.get("z_dim") != coll.z.shape[1]:
        why = f"it covers {record.get('rows')} rows, the features have {len(coll)}"
    elif record.get("model") != coll.model_info:
        why = "it was built from the rows of another checkpoint"
    elif record.get("features") != file_stamp(coll.features):
        why = f"{coll.features.name} was rewritten since"
    elif entry.get("stamp") != file_stamp(path):
        why = f"{path.name} was rewritten since"
    if why and record.get("rows", 0) < len(coll) and not_extendable(coll) is None:
        rebuild = f"add the new rows to it with `coala-embed index {coll.features}`, or add --exact"
    if why:
        raise CoalaEmbedError(f"the index of {coll.features} is stale: {why}; {rebuild}")
    faiss = faiss_module()
    return faiss.read_index(str(path))


def knn(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities ``[Q, k]`` and rows ``[Q, k]`` (-1 where fewer exist) of the ``k`` nearest rows."""
    sims, rows = index.search(normalized(np.atleast_2d(queries)), k)
    return sims, rows


def nearest(index: Any, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """:func:`coala_embed.collection.neighbours` through the index: ``(row, cosine)`` of the ``k`` nearest rows to
    one ``query``, best first."""
    sims, rows = knn(index, query, k)
    return [(int(i), float(v)) for i, v in zip(rows[0], sims[0]) if i >= 0]


def projections(model: Any, x: np.ndarray) -> np.ndarray:
    """The audio projections ``[N, 1152]`` of the rows ``x`` (``tags.audio_projections``), block by block."""
    from .tags import audio_projections

    parts = [audio_projections(model, block).cpu().numpy() for block in _blocks(x)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.model.embedding_dim), np.float32)


def duplicate_pairs(index: Any, x: np.ndarray, threshold: float, progress: bool = False) -> Pairs:
    """Pairs ``(i, j)`` of rows whose cosine similarity is at least ``threshold``, in blocks of arrays (a pair may
    come twice), for :func:`coala_embed.collection.group_pairs`.

    With an inverted file, each row is compared with the rows of the ``DUPLICATE_NPROBE`` lists nearest to it, one
    list at a time: the rows that probe a list against the list's members, a matrix product on the rows ``x``
    themselves (the index's only part is the partition, so the cosines are the exact comparison's, also for
    ``ivf-sq8``). A pair is found when either row probes the other's list. A flat index compares every pair."""
    faiss = faiss_module()
    if not isinstance(index, faiss.IndexIVF):
        yield from exact_pairs(x, threshold)
        return
    n, lists = len(x), index.nlist
    nprobe = min(DUPLICATE_NPROBE, lists)
    norms = np.concatenate([np.linalg.norm(b, axis=1) for b in _blocks(x)] or [np.zeros(0, np.float32)])
    norms = np.maximum(norms, 1e-12).astype(np.float32)  # rows are scaled on the fly: no normalised copy of x
    probes = np.zeros((n, nprobe), np.int64)
    for a in range(0, n, ADD_BLOCK):
        probes[a : a + ADD_BLOCK] = index.quantizer.search(
            x[a : a + ADD_BLOCK] / norms[a : a + ADD_BLOCK, None], nprobe
        )[1]
    order = np.argsort(probes.ravel(), kind="stable")  # the rows that probe each list, list by list
    starts = np.searchsorted(probes.ravel()[order], np.arange(lists + 1))
    from tqdm import tqdm

    for lst in tqdm(range(lists), unit="list", disable=not progress, desc="duplicates"):
        size, queries = index.invlists.list_size(lst), order[starts[lst] : starts[lst + 1]] // nprobe
        if not size or not len(queries):
            continue
        members = faiss.rev_swig_ptr(index.invlists.get_ids(lst), size).astype(np.int64)
        xm = (x[members] / norms[members, None]).T
        step = max(1, min(QUERY_ROWS, SIMS_AT_ONCE // len(members)))
        for c in range(0, len(queries), step):
            q = queries[c : c + step]
            qi, mj = np.nonzero((x[q] / norms[q, None]) @ xm >= threshold)
            i, j = q[qi], members[mj]
            keep = i != j
            yield np.minimum(i, j)[keep], np.maximum(i, j)[keep]
