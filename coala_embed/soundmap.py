"""``coala-embed map``: one self-contained HTML page that draws a collection's clip embeddings in 2-D.

Points are coloured by top-level folder (or by labels from a CSV); hovering shows the file, its duration and its
top tags in the co-aligned tag space; clicking plays the sound; a search box keeps the points whose top tags (or
file paths) hold every word typed. The page has no dependency and makes no network request: the data sits in
the page as JSON and a plain canvas draws it, so 100,000 points stay responsive.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import mimetypes
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .collection import Collection, project
from .errors import CoalaEmbedError
from .files import atomic_write, write_text
from .model import CoalaModel

TOP_TAGS = 5  # tags kept per point for hover and search
# The "tab20"-like categorical palette; groups beyond it share OTHER_COLOUR
PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #17becf #bcbd22 #7f7f7f "
    "#aec7e8 #ffbb78 #98df8a #ff9896 #c5b0d5 #c49c94 #f7b6d2 #9edae5 #dbdb8d"
).split()
OTHER_COLOUR = "#c8c8c8"
MAX_EMBEDDED_AUDIO = 200 * 2**20  # bytes of audio --embed-audio puts into one page


def folder_groups(coll: Collection) -> list[str]:
    """Each row's top-level folder below the collection's common folder ("(top folder)" for files directly in it)."""
    paths = [str(f) for f in coll.files]
    if not paths:
        return []
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    groups = []
    for p in paths:
        parts = Path(os.path.relpath(p, root)).parts
        groups.append(parts[0] if len(parts) > 1 else "(top folder)")
    return groups


def read_labels(path: Path, coll: Collection) -> list[str]:
    """Labels from a CSV with columns ``path`` and ``label``; rows are matched by the path as the manifest
    names it, else by the resolved path, else by the file name. Unlisted files get ``"(no label)"``.

    Raises:
        CoalaEmbedError: the CSV cannot be read, lacks the columns, or matches no file.
    """
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise CoalaEmbedError(f"{path}: needs the columns 'path' and 'label', has {reader.fieldnames}")
            table = {r["path"]: r["label"] for r in reader}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CoalaEmbedError(f"cannot read labels from {path}: {e}") from e
    by_name = {Path(p).name: v for p, v in table.items()}
    by_abs = {str(Path(p).absolute()): v for p, v in table.items()}
    out = []
    for i, p in enumerate(coll.paths):
        label = table.get(p) or by_abs.get(str(coll.files[i])) or by_name.get(Path(p).name)
        out.append(label if label is not None else "(no label)")
    if table and all(v == "(no label)" for v in out):
        raise CoalaEmbedError(f"{path}: none of its {len(table)} paths is a file of {coll.features.name}")
    return out


def top_tags(model: CoalaModel, embeddings: np.ndarray, k: int = TOP_TAGS) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The vocabulary and, per row, the indices ``[N, k]`` and scores ``[N, k]`` of its best tags
    (``tags.tag_scores``), in blocks so that 100,000 rows fit in memory."""
    from .tags import tag_scores

    vocab = list(model.config.tags)
    if not vocab or model.tag is None:
        return [], np.zeros((len(embeddings), 0), np.int64), np.zeros((len(embeddings), 0), np.float32)
    idx, val = [], []
    for a in range(0, len(embeddings), 4096):
        s = tag_scores(model, embeddings[a : a + 4096])  # reads the mean of z, the rows' first columns
        v, i = s.topk(min(k, len(vocab)), dim=1)
        idx.append(i.numpy())
        val.append(v.numpy())
    return vocab, np.concatenate(idx), np.concatenate(val)


def _audio_links(coll: Collection, out: Path, embed: bool) -> tuple[list[str], list[int], list[str]]:
    """Folders, per-row folder index and per-row file reference: a path relative to the page, or with ``embed``
    the file itself as a data URI."""
    if embed:
        total = sum(f.stat().st_size for f in coll.files if f.exists())
        if total > MAX_EMBEDDED_AUDIO:
            raise CoalaEmbedError(
                f"--embed-audio would put {total / 2**20:.0f} MB of audio into the page (limit "
                f"{MAX_EMBEDDED_AUDIO // 2**20} MB); leave it out and keep the page beside the files"
            )
        refs = []
        for p in coll.files:
            mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
            data = base64.b64encode(p.read_bytes()).decode() if p.exists() else ""
            refs.append(f"data:{mime};base64,{data}" if data else "")
        return [""], [0] * len(coll), refs
    dirs: dict[str, int] = {}
    index, names = [], []
    base = out.absolute().parent
    for f in coll.files:
        rel = Path(os.path.relpath(f, base))
        index.append(dirs.setdefault(rel.parent.as_posix(), len(dirs)))
        names.append(rel.name)
    return list(dirs), index, names


@dataclass
class Layout:
    """Where the points of a map go and how they are coloured: computed once, drawn by the page and the PNG."""

    xy: np.ndarray  # [N, 2]
    method: str  # the projection that ran
    seconds: float  # its time
    groups: list[str]  # each point's group
    order: list[str]  # the groups, largest first (their colours are PALETTE in this order)

    def colour(self, k: int) -> str:
        return PALETTE[k] if k < len(PALETTE) else OTHER_COLOUR


def layout(coll: Collection, labels: list[str] | None = None, method: str = "auto", seed: int = 0) -> Layout:
    """Project the collection (:func:`~coala_embed.collection.project`) and group its points: by ``labels``, else
    by top-level folder.

    Raises:
        CoalaEmbedError: an empty collection, or a projection whose library is missing.
    """
    if len(coll) == 0:
        raise CoalaEmbedError(f"{coll.features} holds no embedded file; there is nothing to map")
    xy, method, seconds = project(coll.embeddings, method, seed)
    groups = labels if labels is not None else folder_groups(coll)
    return Layout(xy, method, seconds, groups, [g for g, _ in Counter(groups).most_common()])


def build_page(
    coll: Collection,
    out: Path,
    lay: Layout,
    *,
    model: CoalaModel | None,
    embed_audio: bool = False,
    title: str | None = None,
) -> dict:
    """Write the map of ``coll`` laid out by ``lay`` to ``out`` (HTML) and return what it holds: points, method,
    seconds, groups, bytes. ``model`` gives the top tags (None: no tags, the search box then matches file paths
    only).
    """
    xy, order = lay.xy, lay.order
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    q = np.round((xy - lo) / np.where(hi > lo, hi - lo, 1) * 65535).astype(np.int64)
    gindex = {g: i for i, g in enumerate(order)}
    colours = [lay.colour(i) for i in range(len(order))]
    vocab, tag_idx, tag_val = top_tags(model, coll.embeddings) if model is not None else ([], None, None)
    dirs, dir_index, refs = _audio_links(coll, out, embed_audio)
    title = title or f"{coll.features.name}: {len(coll):,} sounds"
    data = {
        "title": title,
        "model": coll.model or (model.source if model is not None else "") or "",
        "method": lay.method,
        "x": q[:, 0].tolist(),
        "y": q[:, 1].tolist(),
        "group": [gindex[g] for g in lay.groups],
        "groups": order,
        "colours": colours,
        "paths": coll.paths,
        "dirs": dirs,
        "dir": dir_index,
        "ref": refs,
        "duration": [None if not np.isfinite(d) else round(float(d), 2) for d in coll.durations],
        "vocab": vocab,
        "tags": tag_idx.tolist() if tag_idx is not None else [],
        "scores": np.round(tag_val, 2).tolist() if tag_val is not None else [],
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    page = template().replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    write_text(out, page)
    return {"points": len(coll), "method": lay.method, "seconds": lay.seconds, "groups": len(order), "bytes": len(page)}


def write_png(coll: Collection, out: Path, lay: Layout) -> None:
    """A static picture of the same map (matplotlib; ``pip install 'coala-embed[map]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise CoalaEmbedError("--png needs matplotlib: pip install 'coala-embed[map]'") from e

    xy, groups, order = lay.xy, lay.groups, lay.order
    fig, ax = plt.subplots(figsize=(9, 7), dpi=110)
    size = max(1.0, min(30.0, 3000 / max(len(coll), 1)))
    for i, g in enumerate(order):
        m = np.array([x == g for x in groups])
        colour = lay.colour(i)
        ax.scatter(xy[m, 0], xy[m, 1], s=size, c=colour, label=g if i < len(PALETTE) else None, linewidths=0)
    ax.set_title(f"{coll.features.name}: {len(coll):,} sounds ({lay.method})")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(order) > 1:
        ax.legend(loc="best", fontsize=7, markerscale=max(1.0, 6 / size), frameon=False)
    fig.tight_layout()
    atomic_write(out, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def template() -> str:
    """The page (``coala_embed/assets/soundmap.html``): canvas, legend and search box in plain JavaScript; the build
    puts the title at ``__TITLE__`` and the points' JSON at ``__DATA__``."""
    from importlib.resources import files

    return files("coala_embed").joinpath("assets/soundmap.html").read_text(encoding="utf-8")
