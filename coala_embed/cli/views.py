"""``coala-embed map``, ``neighbours`` and ``duplicates``: views of an embedded collection."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    ANY_MODEL,
    DEVICE,
    EXACT,
    EXISTING_FILE,
    FEATURES,
    boundary,
    check_model,
    check_new_file,
    collection,
    load,
    weights_option,
)
from .tags import MADE_FEATURES


@click.command("map")
@FEATURES
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The HTML page to write (one self-contained file).")  # fmt: skip
@click.option("--labels", type=EXISTING_FILE,
              help="CSV with columns path,label to colour the points [default: top-level folder].")  # fmt: skip
@click.option("--projection", type=click.Choice(["auto", "umap", "tsne", "pca"]), default="auto", show_default=True,
              help="auto: t-SNE up to 20,000 points, else UMAP when umap-learn is installed, else PCA.")  # fmt: skip
@click.option("--embed-audio", is_flag=True, help="Put the sounds into the page (small collections, up to 200 MB).")
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), help="Also write a static picture (matplotlib)."
)
@click.option("--title", help="Page title [default: the features file and the number of sounds].")
@click.option("--seed", default=0, show_default=True, help="Seed of the projection.")
@weights_option(MADE_FEATURES)
@ANY_MODEL
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing page or picture.")
@boundary
def map_cmd(features, out, labels, projection, embed_audio, png, title, seed, weights, any_model, force) -> None:
    """Draw the sounds of FEATURES (an output of `coala-embed`, read with its manifest) as an interactive 2-D map
    in one HTML page: hover a point for its file, duration and top tags, click it to play the sound, type words
    to keep the sounds whose tags or file names hold them. No network is needed to open the page; without
    --embed-audio it plays the files from their place relative to the page.

    \b
    Example:
      coala-embed sounds/ -o feats.npy && coala-embed map feats.npy -o map.html --png map.png"""
    from ..batch import manifest_path
    from ..soundmap import build_page, layout, read_labels, write_png

    reads = [features, manifest_path(features), *([labels] if labels else [])]
    check_new_file(out, force, reads)
    if png:
        check_new_file(png, force, [*reads, out])
    coll = collection(features)
    model = load(weights, "cpu")
    check_model(coll, model, any_model)
    lay = layout(coll, read_labels(labels, coll) if labels else None, projection, seed)
    info = build_page(coll, out, lay, model=model, embed_audio=embed_audio, title=title)
    if png:
        write_png(coll, png, lay)
    click.echo(
        f"{out}: {info['points']:,} sounds, {info['groups']} groups, {info['method']} in {info['seconds']:.1f} s, "
        f"{info['bytes'] / 2**20:.1f} MB" + (f"; {png}" if png else ""),
        err=True,
    )


@click.command("neighbours")
@FEATURES
@click.argument("query")
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Neighbours to list.")
@weights_option(MADE_FEATURES)
@DEVICE
@ANY_MODEL
@EXACT
@boundary
def neighbours_cmd(features, query, top_k, weights, device, any_model, exact) -> None:
    """List the files of FEATURES most similar to QUERY: a file of the collection (its path as the manifest names
    it, or its file name when that is unique) or any audio file, which is embedded first. Similarity is the cosine
    of the clips' mean codes z (the first 1152 columns of a z+max row).

    \b
    Output: one line per neighbour, "COSINE  FILE", most similar first (QUERY itself is left out).
    Example:
      coala-embed neighbours feats.npy sounds/dog/bark1.wav -k 5"""

    from ..collection import neighbours

    coll = collection(features)
    if len(coll) == 0:
        raise click.UsageError(f"{features} holds no embedded files: there is nothing to compare {query} with")
    rows = [i for i, p in enumerate(coll.paths) if p == query]
    if not rows:
        same = [i for i, p in enumerate(coll.paths) if Path(p).name == Path(query).name]
        target = Path(query).absolute()
        rows = [i for i in same if coll.resolve(i) == target] or (same if len(same) == 1 else [])
    if rows:
        vec = coll.z[rows[0]]
    elif Path(query).is_file():
        from ..api import embed_file

        model = load(weights, device)
        check_model(coll, model, any_model)
        vec = embed_file(query, model=model).clip[: coll.z.shape[1]]
        if vec.shape[-1] != coll.z.shape[1]:
            raise click.UsageError(f"{query} embeds to {vec.shape[-1]} dimensions, {features} has {coll.z.shape[1]}")
    else:
        raise click.UsageError(f"{query} is neither a file of {features.name} nor an audio file")
    if rows and len(coll) == 1:
        click.echo(f"{features} holds only {query} itself: no other file to compare it with", err=True)
        return
    from .. import index

    ix = None if exact else index.load(coll)
    k = min(len(coll), top_k + len(rows[:1]))
    hits = neighbours(coll.z, vec, k) if ix is None else index.nearest(ix, vec, k)
    for i, sim in hits:
        if rows and i == rows[0]:
            continue
        click.echo(f"{sim:.4f}  {coll.paths[i]}")


@click.command("duplicates")
@FEATURES
@click.option("--threshold", default=0.98, show_default=True, type=click.FloatRange(-1, 1),
              help="Cosine similarity from which two files count as the same sound.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON (lists of paths).")
@EXACT
@boundary
def duplicates_cmd(features, threshold, as_json, exact) -> None:
    """Find groups of near-duplicates in FEATURES: files whose mean codes z have a cosine similarity of at least
    --threshold (re-encodes, resampled copies, the same sound under two names).

    \b
    Output: one group per paragraph, largest first, "COSINE  FILE" per file (the similarity to the group's
    first file). Exit status 0 whether or not duplicates were found. Example:
      coala-embed duplicates feats.npy --threshold 0.99"""
    import json
    import sys

    from .. import index
    from ..collection import duplicates, group_pairs, normalized

    coll = collection(features)
    ix = None if exact else index.load(coll)
    if ix is None:
        groups = duplicates(coll.z, threshold)
    else:  # the index's lists say which rows to compare; the cosines are computed on the rows themselves
        groups = group_pairs(len(coll), index.duplicate_pairs(ix, coll.z, threshold, progress=sys.stderr.isatty()))
    if as_json:
        click.echo(json.dumps([[coll.paths[i] for i in g] for g in groups], indent=1))
        return
    x = normalized(coll.z)
    for g in groups:
        for i in g:
            click.echo(f"{float(x[g[0]] @ x[i]):.4f}  {coll.paths[i]}")
        click.echo("")
    click.echo(f"{len(groups)} groups, {sum(map(len, groups))} files of {len(coll)}", err=True)


@click.command("index")
@FEATURES
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf", "ivf-sq8"]), default="auto", show_default=True,
              help="flat: exact; ivf: an inverted file (approximate, fast at a million rows); ivf-sq8: the same in a "
              "quarter of the memory; auto: flat up to 50,000 rows, else ivf.")  # fmt: skip
@weights_option(MADE_FEATURES)
@ANY_MODEL
@click.option(
    "--no-search", is_flag=True, help="Index only the codes z (neighbours, duplicates), not `search`'s space."
)
@click.option("-f", "--force", is_flag=True, help="Build the index again from all the rows, replacing the old one.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@boundary
def index_cmd(features, kind, weights, any_model, no_search, force, quiet) -> None:
    """Build an approximate-neighbour index of FEATURES (needs `pip install 'coala-embed[index]'`): the clips'
    mean codes z for `neighbours` and `duplicates` and, unless --no-search, their audio projections for
    `search`. The index files lie beside FEATURES (FEATURES-stem.index.faiss, .search.faiss) and the manifest
    records them; a command finds and checks them itself (--exact there ignores them), and refuses a stale one.
    After `coala-embed --append` added files to FEATURES, the same command adds their rows to the index (an
    inverted file keeps the lists it was trained with: after the collection has grown several times over, -f
    trains new ones); after FEATURES were written again, -f builds the index again.

    \b
    Output: one line, "FEATURES: N rows, KIND, SECONDS s, MB". Example:
      coala-embed sounds/ -o feats.npy && coala-embed index feats.npy && coala-embed duplicates feats.npy
      coala-embed new_sounds/ -o feats.npy --append && coala-embed index feats.npy"""
    import sys

    from .. import index

    index.faiss_module()  # before any work: the extra is missing
    coll = collection(features)
    files = index_files_present(coll)
    progress = not quiet and sys.stderr.isatty()

    def project(z):  # the audio projections of rows z, for the search index
        model = load(weights, "cpu")
        check_model(coll, model, any_model)
        return index.projections(model, z) if model.tag is not None else None

    extended = bool(files) and not force
    if extended:
        have = {f["kind"] for f in coll.index_record.get("files", {}).values()}
        if kind != "auto" and have and have != {kind}:
            raise click.UsageError(f"the index is {'/'.join(sorted(have))}; add -f to build it again as {kind}")
        try:
            record = index.extend(coll, project, progress)
        except index.NotExtendable as e:
            raise click.UsageError(
                f"{', '.join(files)} exist and take no new rows ({e.why}); add -f to rebuild the index"
            ) from None
    else:
        record = index.write(coll, kind, None if no_search else project(coll.z), progress)
    mb = sum(f["bytes"] for f in record["files"].values()) / 2**20
    kinds = "/".join(f["kind"] for f in record["files"].values())
    what = f"{record['added']:,} rows added, {record['rows']:,} in all" if extended else f"{record['rows']:,} rows"
    click.echo(f"{features}: {what}, {kinds}, {record['seconds']:.1f} s, {mb:.1f} MB", err=True)
    if extended and record["rows"] > index.REBUILD_GROWTH * record["trained_rows"]:
        click.echo(f"the index was built on {record['trained_rows']:,} rows; `coala-embed index {features} -f` builds "
                   "it for the collection as it is now (its lists, or an inverted file instead of a flat one)",
                   err=True)  # fmt: skip


def index_files_present(coll) -> list[str]:
    """The names of the index files that already lie beside the collection's features."""
    from ..index import index_files

    return [p.name for p in index_files(coll.features).values() if p.exists()]
