"""``coala-embed tags``, ``search`` and ``vocab``: the co-aligned audio-tag space."""

from __future__ import annotations

import sys

import click

from .common import (
    ANY_MODEL,
    DEVICE,
    EXACT,
    EXISTING_FILE,
    EXIT_FAILED_FILES,
    FEATURES,
    boundary,
    check_model,
    load,
    weights_option,
)

MADE_FEATURES = "The checkpoint that made FEATURES"


@click.command("tags")
@click.argument("files", nargs=-1, required=True, type=EXISTING_FILE)
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Tags per file.")
@weights_option()
@DEVICE
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--method",
    type=click.Choice(["auto", "neighbours", "one-hot"]),
    default="auto",
    show_default=True,
    help="neighbours: the training tag sets nearest to the sound vote (scores 0-1); one-hot: cosine of the "
    "sound and each single tag (-1-1); auto: neighbours when the checkpoint holds tag sets.",
)
@boundary
def tags_cmd(files, top_k, weights, device, as_json, method) -> None:
    """Print the tags that best describe each of FILES, from COALA's co-aligned audio-tag space.

    \b
    Output: one line per file, "FILE: tag (score), ..." (or JSON with --json); words come from the
    checkpoint's vocabulary (`coala-embed vocab` lists it). Example:
      coala-embed tags examples/drum_heavy_kick.flac -k 5
    """
    import json

    from ..audio_io import load_audio
    from ..errors import CoalaEmbedError
    from ..frontend import check_sample_rate
    from ..tags import predict_tags

    model = load(weights, device)
    out, failed = {}, False
    for f in files:
        try:
            audio, sr = load_audio(f)
            check_sample_rate(sr, str(f), file=True)
            out[str(f)] = predict_tags(audio, sr, model=model, top_k=top_k, method=method)
        except CoalaEmbedError as e:
            click.echo(f"failed: {e}", err=True)
            failed = True
    for f, tags in out.items():
        if not as_json:
            click.echo(f"{f}: " + ", ".join(f"{t} ({s:.2f})" for t, s in tags))
    if as_json:
        click.echo(json.dumps({f: [{"tag": t, "score": round(s, 4)} for t, s in v] for f, v in out.items()}, indent=1))
    if failed:
        sys.exit(EXIT_FAILED_FILES)


@click.command("search")
@FEATURES
@click.argument("query")
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Results to show.")
@weights_option(MADE_FEATURES)
@DEVICE
@ANY_MODEL
@EXACT
@boundary
def search_cmd(features, query, top_k, weights, device, any_model, exact) -> None:
    """Rank the files embedded in FEATURES (a .npy/.npz from `coala-embed`, with its manifest) by QUERY,
    words of the tag vocabulary (`coala-embed vocab` lists them).

    \b
    Output: one line per hit, "SCORE  FILE", best first. Example:
      coala-embed examples/ -o feats.npy && coala-embed search feats.npy "drum hit" -k 3"""
    from ..batch import manifest_path
    from ..collection import load_collection, read_features
    from ..tags import search

    coll = None
    if manifest_path(features).exists():
        coll = load_collection(features)
        emb, paths = coll.embeddings, dict(enumerate(coll.paths))
    else:
        emb, paths = read_features(features), {}
    model = load(weights, device)
    if coll is not None:
        check_model(coll, model, any_model)
    from .. import index

    ix = None if exact or coll is None else index.load(coll, "projection")
    if ix is None:
        hits = search(query, emb, model=model, top_k=top_k)
    else:
        from ..tags import query_projection

        hits = index.nearest(ix, query_projection(model, query).cpu().numpy(), min(top_k, len(emb)))
    for row, score in hits:
        click.echo(f"{score:.3f}  {paths.get(row, f'row {row}')}")


@click.command("vocab")
@weights_option()
@boundary
def vocab_cmd(weights) -> None:
    """List the tag vocabulary of the checkpoint: the words `tags` can print and `search` understands.

    \b
    Output: one word per line, most frequent in the training corpus first. Example:
      coala-embed vocab | grep -x dog || echo "not in the vocabulary"
    """
    model = load(weights, "cpu")
    if not model.config.tags:
        raise click.UsageError("this checkpoint has no tag vocabulary (it was saved without its tag encoder)")
    for word in model.config.tags:
        click.echo(word)
