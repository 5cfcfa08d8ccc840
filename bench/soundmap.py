"""The sound map's projection and page at 1k, 10k and 100k points, measured in one run on this machine.

For each size and method (PCA, t-SNE, UMAP) prints the projection's seconds and how well it keeps neighbours:
trustworthiness and continuity (scikit-learn's ``trustworthiness``, k=10, the second with the spaces swapped) on
2,000 random points, and the share of each point's 10 nearest neighbours (cosine, 1152-d) that stay among its
10 nearest on the map. Then the page's build time and size. t-SNE is skipped above ``--tsne-max`` points.

The vectors are real: clip embeddings of random windows of the pretraining corpus's log-mels (``--data``, the
corpus that ``python -m training.corpus`` builds), embedded with ``--weights``; a synthetic manifest names them.

    python bench/soundmap.py [--weights weights] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from coala_embed import load_model
from coala_embed.api import embed_patches
from coala_embed.collection import Collection, duplicates, project
from coala_embed.device import cpu_name
from coala_embed.soundmap import build_page, layout


def corpus_vectors(data: Path, n: int, weights: str) -> np.ndarray:
    """``n`` embeddings of random 96-frame windows of the corpus log-mels (seed 0)."""
    logmel = np.load(data / "corpus" / "logmel.npy", mmap_mode="r")
    starts = np.sort(np.random.default_rng(0).integers(0, logmel.shape[1] - 96, n))
    model = load_model(weights, device="cpu")
    out = []
    for a in range(0, n, 4096):
        patches = torch.from_numpy(np.stack([logmel[:, s : s + 96] for s in starts[a : a + 4096]]).astype(np.float32))
        out.append(embed_patches(model, patches, 256, precision="auto"))
    return np.concatenate(out)


def kept_neighbours(x: np.ndarray, xy: np.ndarray, k: int = 10, sample: int = 2000) -> dict[str, float]:
    from sklearn.manifold import trustworthiness
    from sklearn.neighbors import NearestNeighbors

    idx = np.random.default_rng(1).choice(len(x), min(sample, len(x)), replace=False)
    xs = x[idx] / np.linalg.norm(x[idx], axis=1, keepdims=True)
    ys = xy[idx]
    a = NearestNeighbors(n_neighbors=k + 1).fit(xs).kneighbors(xs, return_distance=False)[:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(ys).kneighbors(ys, return_distance=False)[:, 1:]
    overlap = np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b)])
    return {
        "trust": float(trustworthiness(xs, ys, n_neighbors=k)),
        "cont": float(trustworthiness(ys, xs, n_neighbors=k)),
        "knn": float(overlap),
    }


def browser_times(page: Path, n: int) -> None:
    """Load the page in headless Chromium (when it and playwright are installed) and time the load, one full
    redraw, one search and one hover."""
    import shutil

    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print(f"  browser, {n:,} points: skipped (no chromium or playwright)")
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        t0 = time.time()
        tab.goto(page.as_uri())
        tab.wait_for_function("window.soundMap && window.soundMap.drawn > 0")
        load = time.time() - t0
        draw = tab.evaluate("(() => { const t = performance.now(); draw(); return performance.now() - t; })()")
        search = tab.evaluate(
            "(() => { const t = performance.now(); filter('window0001'); return performance.now() - t; })()"
        )
        hover = tab.evaluate(
            "(() => { const t = performance.now(); nearest(300, 300); return performance.now() - t; })()"
        )
        browser.close()
    print(
        f"  browser, {n:,} points: load {load:.1f} s, redraw {draw:.0f} ms, search {search:.0f} ms, hover {hover:.1f} ms"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument(
        "--data", type=Path, default=Path(os.environ.get("COALA_EMBED_DATA", Path.home() / ".cache/coala-embed"))
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--methods", nargs="+", default=["pca", "tsne", "umap"])
    p.add_argument("--tsne-max", type=int, default=20000)
    a = p.parse_args()
    print(f"# {cpu_name()}, torch {torch.__version__}, {os.cpu_count()} cores")
    x_all = corpus_vectors(a.data, max(a.sizes), a.weights)
    print("| points | method | seconds | trustworthiness | continuity | 10-NN kept | page MB | page seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for n in a.sizes:
        x = x_all[np.random.default_rng(2).choice(len(x_all), n, replace=False)] if n < len(x_all) else x_all
        for method in a.methods:
            if method == "tsne" and n > a.tsne_max:
                print(f"| {n:,} | tsne | skipped (> {a.tsne_max:,}) | | | | | |", flush=True)
                continue
            xy, used, secs = project(x, method)
            q = kept_neighbours(x, xy)
            page = ""
            if method == a.methods[-1]:
                with tempfile.TemporaryDirectory() as d:
                    feats = Path(d) / "f.npy"
                    np.save(feats, x)
                    coll = Collection(x, [f"corpus/window{i:06d}.wav" for i in range(n)], np.full(n, 2.23), feats)
                    t0 = time.time()
                    info = build_page(coll, Path(d) / "map.html", layout(coll, method="pca"),
                                      model=load_model(a.weights, device="cpu"))  # fmt: skip
                    page = f"{info['bytes'] / 2**20:.1f} | {time.time() - t0 - info['seconds']:.1f}"
                    browser_times(Path(d) / "map.html", n)
            print(f"| {n:,} | {used} | {secs:.1f} | {q['trust']:.3f} | {q['cont']:.3f} | {q['knn']:.3f} | {page or ' | '} |",
                  flush=True)  # fmt: skip
    for n in a.sizes:
        t0 = time.time()
        groups = duplicates(x_all[:n])
        print(f"duplicates, {n:,} points: {time.time() - t0:.1f} s ({len(groups)} groups at 0.98)", flush=True)
    print(json.dumps({"cpu": cpu_name()}))


if __name__ == "__main__":
    main()
