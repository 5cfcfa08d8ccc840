"""A collection of embedded files (an output of ``coala-embed`` with its manifest): loading it, nearest
neighbours, groups of near-duplicates and the 2-D projection behind ``coala-embed map``."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .batch import manifest_path
from .errors import CoalaEmbedError

PROJECTIONS = ("auto", "umap", "tsne", "pca")
# "auto" uses t-SNE up to this many points (it keeps neighbours better than UMAP and is faster there: 25 s for
# 10,000 points on two cores against UMAP's 42 s, bench/soundmap.py), UMAP above (113 s for 100,000 points), and
# PCA where UMAP is not installed
TSNE_MAX_POINTS = 20_000


@dataclass
class Collection:
    """The rows of a features file and the files they came from (in row order)."""

    embeddings: np.ndarray  # [N, D] float32
    paths: list[str]  # each row's file as the manifest names it
    durations: np.ndarray  # [N] seconds; NaN where the manifest has none
    features: Path  # the .npy/.npz file
    model: str = ""  # the checkpoint that made it, as the manifest names it
    z_dim: int | None = None  # the leading columns that hold the mean of z (None: all of them)
    model_info: dict = field(default_factory=dict)  # the manifest's record of that checkpoint (batch.model_info)
    index_record: dict = field(default_factory=dict)  # the manifest's record of its index (coala_embed.index)

    @property
    def z(self) -> np.ndarray:
        """The columns that compare sounds: the mean of the code z. A z+max row's block maxima are non-negative and
        share a large common part, so its cosine ranks worse (README "See a collection")."""
        return self.embeddings[:, : self.z_dim]

    def __len__(self) -> int:
        return len(self.paths)

    def resolve(self, i: int) -> Path:
        """The file of row ``i`` on this machine: absolute as given, else relative to the working folder, else
        to the features file's folder."""
        p = Path(self.paths[i])
        if p.is_absolute() or p.exists():
            return p.absolute()
        return (self.features.parent / p).absolute()

    @functools.cached_property
    def files(self) -> list[Path]:
        """Every row's file (:meth:`resolve`), worked out once: a relative path costs a file-system lookup."""
        return [self.resolve(i) for i in range(len(self))]


def read_features(features: Path) -> np.ndarray:
    """The embedding matrix ``[N, D]`` of a .npy/.npz output of coala-embed (never unpickles).

    Raises:
        CoalaEmbedError: the file cannot be read or holds no 2-D matrix.
    """
    try:
        data = np.load(features, allow_pickle=False)
        emb = data["embeddings"] if isinstance(data, np.lib.npyio.NpzFile) else data
    except (OSError, ValueError, KeyError) as e:
        raise CoalaEmbedError(f"{features} is not a .npy/.npz output of coala-embed ({e})") from e
    if emb.ndim != 2:
        raise CoalaEmbedError(f"{features} holds an array of shape {emb.shape}, not [files, dim]")
    return np.asarray(emb, np.float32)


def load_collection(features: str | os.PathLike) -> Collection:
    """Read a features file and the manifest beside it (``feats.npy`` -> ``feats.manifest.json``).

    Raises:
        CoalaEmbedError: no manifest, a manifest of another output, or rows and manifest that disagree.
    """
    features = Path(features)
    emb = read_features(features)
    mpath = manifest_path(features)
    if not mpath.exists():
        raise CoalaEmbedError(f"{features}: its manifest {mpath.name} is missing (it names the file of each row)")
    try:
        m = json.loads(mpath.read_text())
        files = [f for f in m["files"] if f.get("status") == "ok"]
        rows = sorted(files, key=lambda f: f["row"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CoalaEmbedError(f"{mpath} is not a coala-embed manifest ({e})") from e
    if m.get("output") != features.name:
        raise CoalaEmbedError(f"{mpath} describes {m.get('output')}, not {features.name}")
    if [f["row"] for f in rows] != list(range(len(emb))):
        raise CoalaEmbedError(
            f"{features} has {len(emb)} rows but its manifest lists {len(rows)} embedded files; "
            "they do not belong together"
        )
    durations = np.array([f.get("duration", np.nan) for f in rows], np.float64)
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    z_dim = (m.get("dims") or {}).get("z")
    return Collection(
        emb,
        [f["path"] for f in rows],
        durations,
        features,
        str(model.get("source") or ""),
        z_dim,
        dict(model),
        dict(m.get("index") or {}),
    )


def model_mismatch(recorded: dict, current: dict) -> str | None:
    """Why features recorded as made by ``recorded`` (a manifest's ``model``) cannot be compared with what the
    checkpoint ``current`` (``batch.model_info``) computes, or None when they can: the weights' or the config's
    sha256 differ (a hash either side lacks is not compared)."""
    for key, what in (("sha256", "weights"), ("config_sha256", "config.json")):
        a, b = recorded.get(key), current.get(key)
        if a and b and a != b:
            return (
                f"they were made by {recorded.get('source') or 'another checkpoint'} ({what} sha256 {a[:12]}), "
                f"not by {current.get('source') or 'this checkpoint'} ({what} sha256 {b[:12]})"
            )
    return None


def normalized(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(embeddings: np.ndarray, query: np.ndarray, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` rows of ``embeddings`` with the highest cosine similarity to ``query`` ``[D]``, best first."""
    sims = normalized(embeddings) @ normalized(query[None])[0]
    k = min(k, len(sims))
    best = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
    best = best[np.argsort(-sims[best], kind="stable")]
    return [(int(i), float(sims[i])) for i in best]


def duplicates(embeddings: np.ndarray, threshold: float = 0.98, block: int = 2048) -> list[list[int]]:
    """Groups of rows whose cosine similarity is at least ``threshold``, joined transitively (a group holds every
    row linked to another of it by such a pair); largest groups first, rows in order.

    Compares every pair in blocks of ``block`` rows: ``N**2 * D / 2`` multiply-adds (``bench/soundmap.py`` times
    it); ``coala_embed.index.duplicate_pairs`` proposes the pairs from an index instead, for :func:`group_pairs`.
    """
    return group_pairs(len(embeddings), exact_pairs(embeddings, threshold, block))


Pairs = Iterator[tuple[np.ndarray, np.ndarray]]  # blocks of row pairs: (i, j), both int64 [P]


def exact_pairs(embeddings: np.ndarray, threshold: float, block: int = 2048) -> Pairs:
    """Every pair ``(i, j)``, ``i < j``, whose cosine similarity is at least ``threshold``, in blocks of arrays."""
    x = normalized(embeddings)
    for a in range(0, len(x), block):
        sims = x[a : a + block] @ x[a:].T  # only pairs (i, j) with j >= i
        ii, jj = np.nonzero(sims >= threshold)
        keep = jj > ii
        yield ii[keep].astype(np.int64) + a, jj[keep].astype(np.int64) + a


def _find(parent: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The roots of ``rows`` in the forest ``parent``, halving their paths on the way (only these rows' paths are
    touched, so a block of pairs costs its own size, not the collection's)."""
    while True:
        up = parent[rows]
        if np.array_equal(up, rows):
            return rows
        grand = parent[up]
        parent[rows] = grand  # path halving: each row now points at its grandparent (an ancestor, never past a root)
        rows = grand


def _roots(parent: np.ndarray) -> np.ndarray:
    """Point every row of the forest ``parent`` (each row's parent at or below it) straight at its root."""
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def group_pairs(n: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[list[int]]:
    """The connected groups (two rows or more) of ``n`` rows linked by ``pairs`` (blocks of row arrays ``(i, j)``;
    a pair may repeat); largest first, rows in order. A union-find on arrays: each block hooks the larger of two
    roots under the smaller until every pair of the block shares its root."""
    parent = np.arange(n, dtype=np.int64)
    for i, j in pairs:
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        while len(i):
            ri, rj = _find(parent, i), _find(parent, j)
            apart = ri != rj
            if not apart.any():
                break
            i, j, ri, rj = i[apart], j[apart], ri[apart], rj[apart]
            np.minimum.at(parent, np.maximum(ri, rj), np.minimum(ri, rj))
    roots = _roots(parent)
    order = np.argsort(roots, kind="stable")  # rows in order within each root
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    groups = [g.tolist() for g in np.split(order, cuts) if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def available_projection(method: str, n: int) -> str:
    """The projection ``method`` resolves to for ``n`` points: ``"auto"`` is t-SNE up to ``TSNE_MAX_POINTS`` points
    (when scikit-learn is installed), else UMAP (when umap-learn is), else PCA.

    Raises:
        CoalaEmbedError: an unknown method, or one whose library is missing (naming the extra to install).
    """
    import importlib.util

    if method not in PROJECTIONS:
        raise CoalaEmbedError(f"projection must be one of {PROJECTIONS}, got {method!r}")
    has = {m: importlib.util.find_spec(lib) is not None for m, lib in (("umap", "umap"), ("tsne", "sklearn"))}
    if method == "auto":
        if has["tsne"] and n <= TSNE_MAX_POINTS:
            return "tsne"
        return "umap" if has["umap"] else "pca"
    if method != "pca" and not has[method]:
        lib = {"umap": "umap-learn", "tsne": "scikit-learn"}[method]
        raise CoalaEmbedError(f"projection {method!r} needs {lib}: pip install 'coala-embed[map]'")
    return method


def project(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str, float]:
    """2-D coordinates ``[N, 2]`` of the rows (cosine geometry: rows are normalized first), the method used
    and its seconds. All methods start from the 50 leading principal components, and are seeded."""
    t0 = time.time()
    x = normalized(embeddings)
    n = len(x)
    method = available_projection(method, n)
    if n < 3:
        return np.zeros((n, 2), np.float32), "pca", time.time() - t0
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False) if n <= 5000 else _randomized_svd(x, 50, seed)
    pcs = (u[:, :50] * s[:50]).astype(np.float32)
    if n < 5:  # too few points for a neighbour graph
        method = "pca"
    if method == "pca":
        xy = pcs[:, :2]
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed).fit_transform(pcs)
    else:
        import umap  # type: ignore[import-untyped]

        xy = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1).fit_transform(pcs)
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    return np.asarray(xy, np.float32), method, time.time() - t0


def _randomized_svd(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading ``k`` singular triplets by a randomized range finder (Halko et al.), for many rows."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], k + 10)).astype(np.float32))
    for _ in range(2):
        q, _ = np.linalg.qr(x @ (x.T @ q))
    u, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return (q @ u)[:, :k], s[:k], vt[:k]
