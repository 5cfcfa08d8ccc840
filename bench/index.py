"""The approximate-neighbour index (``coala-embed index``) against the exact path, measured in one run on this
machine: build time, peak memory, index size and k-NN query latency at each size, recall@10 against brute force
on held-out queries, and near-duplicate groups at the largest size (time, and recall of planted duplicate pairs).
``--append F`` then adds F times the rows to each collection (as ``coala-embed --append`` does) and times
``index.extend`` against the build from zero, with recall@10 over all the rows afterwards.

Rows are real-shaped: the 1152-d codes z of real clips (the five evaluation tasks' audio when the training cache
holds them, else FSDD and the bundled examples), each synthetic row a random mix of two real codes plus noise, so
that neighbourhoods look like a collection's; 1 % of the rows are planted near-copies of others.

    python bench/index.py [--rows 100000 1000000] [--kind ivf] [--weights DIR]
    python bench/index.py --rows 100000 --append 0.1 --no-duplicates
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coala_embed.device import cpu_name  # noqa: E402

QUERIES = 200

_BUILD = """
import json, resource, sys, time
from coala_embed import index
from coala_embed.collection import load_collection
coll = load_collection(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rec = index.write(coll, sys.argv[2])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": rec["seconds"], "bytes": rec["files"]["z"]["bytes"], "kind": rec["files"]["z"]["kind"],
                  "rss_before_mb": before // 1024, "rss_peak_mb": peak // 1024}))
"""


def real_codes(weights: str | None) -> np.ndarray:
    """z of up to 3,000 real clips (cached in the system's temporary folder)."""
    cache = Path(tempfile.gettempdir()) / "coala-bench-index-z.npy"
    if cache.exists():
        return np.load(cache)
    from coala_embed import embed_files, load_model

    data = Path(os.environ.get("COALA_EMBED_DATA", Path.home() / ".cache" / "coala-embed")) / "tasks"
    files = sorted(p for p in data.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    if not files:
        fsdd = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"
        files = sorted(fsdd.glob("*.wav")) + sorted((Path(__file__).resolve().parents[1] / "examples").glob("*"))
    rng = np.random.default_rng(0)
    files = [files[i] for i in sorted(rng.choice(len(files), min(3000, len(files)), replace=False))]
    model = load_model(weights, device="cpu")
    z = np.stack([e.clip[:1152] for _, e in embed_files(files, model=model) if not isinstance(e, Exception)])
    np.save(cache, z)
    return z


def synthetic(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` rows, each ``w a + (1 - w) b + noise`` of two real codes (non-negative, as z)."""
    rng = np.random.default_rng(seed)
    scale = 0.15 * real.std(axis=0)
    out = np.empty((n, real.shape[1]), np.float32)
    for a in range(0, n, 100_000):
        m = min(100_000, n - a)
        i, j = rng.integers(0, len(real), m), rng.integers(0, len(real), m)
        w = rng.random((m, 1), dtype=np.float32)
        x = w * real[i] + (1 - w) * real[j] + scale * rng.standard_normal((m, real.shape[1]), dtype=np.float32)
        out[a : a + m] = np.maximum(x, 0)
    return out


def write_collection(path: Path, rows: np.ndarray, index: dict | None = None) -> None:
    np.save(path, rows)
    files = [{"index": i, "path": f"f{i:07d}.wav", "status": "ok", "row": i} for i in range(len(rows))]
    manifest = {"output": path.name, "files": files, "dims": {"z": rows.shape[1]}, "model": {"source": "bench"},
                "index": index or {}}  # fmt: skip
    path.with_name(path.stem + ".manifest.json").write_text(json.dumps(manifest))


def recall_at_10(ix, z: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 of the index's k-NN of ``queries`` against brute force over the rows ``z``."""
    from coala_embed import index
    from coala_embed.collection import normalized

    _, found = index.knn(ix, queries, 10)
    qn = normalized(queries)
    sims = np.concatenate([normalized(z[a : a + 65_536]) @ qn.T for a in range(0, len(z), 65_536)])
    exact = np.argpartition(-sims, 10, axis=0)[:10].T
    return float(np.mean([len(set(found[k]) & set(exact[k])) / 10 for k in range(len(queries))]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kind", default="ivf", choices=["flat", "ivf", "ivf-sq8"])
    p.add_argument("--weights", default=None)
    p.add_argument("--no-duplicates", action="store_true")
    p.add_argument("--append", type=float, default=0.0, help="then add this fraction of rows and extend the index")
    a = p.parse_args()
    from coala_embed import index
    from coala_embed.collection import exact_pairs, group_pairs, load_collection

    where = f"[{cpu_name()}, {os.cpu_count()} cores]"
    real = real_codes(a.weights)
    print(f"{len(real)} real codes; kind {a.kind}  {where}")
    tmp = Path(tempfile.mkdtemp(prefix="coala-index-"))
    for n in a.rows:
        rows = synthetic(real, n, seed=n)
        rng = np.random.default_rng(1)
        planted = rng.choice(n, n // 50, replace=False)
        src, dst = planted[: n // 100], planted[n // 100 :]
        rows[dst] = np.maximum(rows[src] * (1 + 0.002 * rng.standard_normal(rows[src].shape, dtype=np.float32)), 0)
        feats = tmp / f"f{n}.npy"
        write_collection(feats, rows)
        del rows
        r = subprocess.run([sys.executable, "-c", _BUILD, str(feats), a.kind], capture_output=True, text=True,
                           check=True)  # fmt: skip
        built = json.loads(r.stdout.strip().splitlines()[-1])
        coll = load_collection(feats)
        ix = index.load(coll)
        queries = synthetic(real, QUERIES, seed=n + 1)  # held out: not rows of the index
        t = time.perf_counter()
        for q in queries:
            index.knn(ix, q, 10)
        ms = 1000 * (time.perf_counter() - t) / QUERIES
        recall = recall_at_10(ix, coll.z, queries)
        per_million = built["bytes"] / 2**30 * 1e6 / n
        print(f"{n:>9,} rows: build {built['seconds']:.1f} s ({built['kind']}), peak RSS {built['rss_peak_mb']} MB "
              f"(features alone {built['rss_before_mb']} MB), index {built['bytes'] / 2**20:.0f} MB "
              f"({per_million:.2f} GB per million rows), k-NN query {ms:.2f} ms, recall@10 {recall:.3f}  {where}")  # fmt: skip
        if not a.no_duplicates and n == max(a.rows):
            t = time.perf_counter()
            groups = group_pairs(n, index.duplicate_pairs(ix, coll.z, 0.98, progress=True))
            dup_s = time.perf_counter() - t
            label = np.full(n, -1)
            for k, g in enumerate(groups):
                label[g] = k
            found_pairs = np.mean((label[src] >= 0) & (label[src] == label[dst]))
            print(f"{n:>9,} rows: duplicates (cosine >= 0.98) in {dup_s:.1f} s, {len(groups):,} groups, planted "
                  f"pairs found {found_pairs:.4f}  {where}")  # fmt: skip
            if n <= 200_000:  # the exact path's groups, for comparison (quadratic)
                t = time.perf_counter()
                same = group_pairs(n, exact_pairs(coll.z, 0.98)) == groups
                print(f"{n:>9,} rows: exact duplicates {time.perf_counter() - t:.1f} s, same groups: {same}  {where}")
        if a.append:
            m = int(n * a.append)
            write_collection(
                feats, np.concatenate([coll.embeddings, synthetic(real, m, seed=n + 2)]), coll.index_record
            )
            grown = load_collection(feats)
            t = time.perf_counter()
            index.extend(grown)
            ext_s = time.perf_counter() - t
            recall = recall_at_10(index.load(grown), grown.z, queries)
            print(f"{n:>9,} rows + {m:,} appended: index extended in {ext_s:.1f} s (built from zero for {n:,}: "
                  f"{built['seconds']:.1f} s), recall@10 over all rows {recall:.3f}  {where}")  # fmt: skip
            del grown
        del coll, ix
        for f in tmp.glob(f"f{n}*"):
            f.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"this process peaked at {peak} MB  {where}")


if __name__ == "__main__":
    main()
