"""The ``coala-embed`` command: parse the arguments, call the package, write the outputs."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .errors import CoalaEmbedError
from .version import __version__

# Exit status: 0 all done; 1 some input files failed (the others are done); 2 usage error (click's own);
# 3 the run itself failed while writing (disk full, output removed): nothing half-written is left as the output.
# 130: interrupted (Ctrl-C); an embed run keeps its progress for --resume.
EXIT_FAILED_FILES, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 1, 3, 130


class _DefaultGroup(click.Group):
    """A group whose default command is ``embed``: ``coala-embed DIR -o feats.npy`` means
    ``coala-embed embed DIR -o feats.npy``; the other commands are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["embed", *args]
        ctx.meta["coala_embed.first_arg"] = args[0] if args else None
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        """Ctrl-C exits 130 (as shells report a SIGINT), never 1, which means "some files failed"; a usage error
        of a subcommand whose name is also a file or folder here says how to embed that path instead."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.UsageError as e:
            first = ctx.meta.get("coala_embed.first_arg")
            if first and first != "embed" and first in self.commands and Path(first).exists():
                hint = (
                    f"\n'{first}' is a coala-embed command; to embed the path {first!r} here, write "
                    f"`coala-embed embed {first} ...` or `coala-embed ./{first} ...`"
                )
                raise click.UsageError(e.message + hint, e.ctx) from e
            raise


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coala-embed")
def main() -> None:
    """Embed audio files with COALA (one float32 vector per file: 1664-d with the bundled checkpoint).

    \b
      coala-embed audio_dir/ -o feats.npy            embed a folder (recursive)
      coala-embed a.wav b.flac -o feats.npz --format npz --frames
      coala-embed merge -o all.npy shard1.npy shard2.npy
      coala-embed tags dog.wav                       zero-shot tags of a sound
      coala-embed search feats.npy "animal growl"    rank embedded files by words
      coala-embed vocab                              the words tags and search know
      coala-embed map feats.npy -o map.html          an interactive map of the collection
      coala-embed neighbours feats.npy dog.wav       the most similar embedded files
      coala-embed duplicates feats.npy               groups of near-duplicate files
      coala-embed convert --audio-encoder a.pt ...   the authors' checkpoints to safetensors

    Run `coala-embed embed --help` for all options of the default command.
    """


def _tune_malloc(fine_hop: bool = False) -> None:
    """Keep freed memory in the process for reuse (glibc only; a no-op elsewhere).

    Every file allocates and frees buffers of megabytes (decoded audio, spectrograms, patches). With glibc's
    defaults each is a fresh mmap whose pages fault in again and are unmapped on free: a tenth of the CLI's
    CPU time went to the kernel (``bench/throughput.py``; 1.3 of 12.7 CPU-s on 200 files). Raising the
    mmap and trim thresholds keeps those pages in the heap (1.3 -> 0.8 kernel CPU-s there) without raising
    the peak: the 1-hour FLAC peaks at 805-861 MB with it and 815-820 MB without (two runs each). Only the
    command line does this: it owns its process, the library does not.

    ``fine_hop`` (``--hop`` under a patch): the blocks of patches (about 9 MB each, ``api.stream_block_seconds``)
    are mapped and unmapped instead (mmap threshold 4 MB). Kept in the heap, they fragmented it and the peak grew
    with the duration (``--hop 2``: 497 MB for 1 minute, 774 MB for 10; with 4 MB, 537 and 583 MB;
    ``bench/memory.py --hop 2``).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, (4 if fine_hop else 256) << 20)
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 512 << 20)


def _freeze_startup_objects() -> None:
    """Move the objects made so far (torch's modules, the model) out of the garbage collector's sight.

    The collector's full passes, and the one at interpreter exit, would otherwise walk torch's hundreds of
    thousands of objects again: exiting after ``import torch`` took 0.4 s on the dev machine, 0.07 s after
    ``gc.freeze()``. Objects made later are collected as usual.
    """
    import gc

    gc.freeze()


def _load(weights: str | None, device: str):
    from .device import resolve_device
    from .hub import load_model

    try:
        return load_model(weights, device=resolve_device(device))
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the output for the whole command (batch.output_lock); a second run on it is a usage error."""
    from .batch import output_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(output_lock(out))
        except CoalaEmbedError as e:
            raise click.UsageError(str(e)) from e
        yield


def _check_out(out: Path, force: bool, resume: bool) -> None:
    """Refuse to overwrite without ``-f``, and refuse even with it to take over another output's manifest
    (``feats.npy`` and ``feats.npz`` would share ``feats.manifest.json``)."""
    import json

    from .batch import manifest_path, state_dir

    manifest = manifest_path(out)
    if manifest.exists():
        try:
            owner = json.loads(manifest.read_text()).get("output")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner and owner != out.name and out.with_name(owner).exists():
            raise click.UsageError(
                f"{manifest} belongs to {out.with_name(owner)}; write to another name (each output needs its own "
                "manifest), or remove that output first"
            )
    if force:
        import shutil

        shutil.rmtree(state_dir(out), ignore_errors=True)
        return
    if resume and state_dir(out).exists():
        return
    for p in (out, manifest_path(out)):
        if p.exists():
            raise click.UsageError(f"{p} exists; add -f to overwrite it")


def _check_new_file(path: Path, force: bool, reads: list[Path]) -> None:
    """An output of a command other than embed: never a file the command reads (features, manifest, labels),
    even with ``-f``, and an existing file only with ``-f``."""
    for r in reads:
        if path.resolve() == r.resolve() or (path.exists() and r.exists() and os.path.samefile(path, r)):
            raise click.UsageError(f"{path} is {r}, which this command reads; write the output to another file")
    if path.is_dir():
        raise click.UsageError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; add -f to overwrite it")


def _max_hours(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a number of hours above 0, got {value}")
    return value


@main.command("embed")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Output file (.npy or .npz)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["npy", "npz"]),
    default=None,
    help="Output format; must agree with the output's extension, which sets it [default: from the extension].",
)
@click.option(
    "--frames", is_flag=True, help="Also store patch embeddings with their times and per-file offsets (npz only)."
)
@click.option(
    "--ext",
    "exts",
    multiple=True,
    help="Only files with this extension inside folders (repeatable, e.g. --ext wav --ext flac) [default: all audio types].",
)
@click.option("--no-recursive", is_flag=True, help="Do not descend into subfolders.")
@click.option(
    "--follow-links",
    is_flag=True,
    help="Follow symlinked folders that lead outside the input folder [default: only those inside it].",
)
@click.option(
    "--weights",
    default=None,
    help="Checkpoint folder or Hub repo id owner/name[@revision] [default: $COALA_EMBED_WEIGHTS, then the bundled model].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Patches per forward pass (patches of several files share a batch).",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1),
    help="Threads or processes (--decoders) decoding and computing log-mels while the model runs [default: on a "
    "GPU all CPU cores but two, on a CPU half of them; at least 2].",
)
@click.option(
    "--decoders",
    type=click.Choice(["auto", "threads", "processes"]),
    default="auto",
    show_default=True,
    help="What the --workers are. Processes scale past a few cores and survive a decoder that crashes (the file "
    "is reported as failed); threads start at once. auto: processes on machines with 4 cores or more.",
)
@click.option(
    "--log-mel-on",
    type=click.Choice(["auto", "cpu", "device"]),
    default="auto",
    show_default=True,
    help="Where the log-mels are computed: on the CPU by the decoding workers, or on the model's --device beside "
    "the encoder (the workers then only decode and resample). auto: device on a GPU.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "auto"]),
    default="fp32",
    show_default=True,
    help="bf16: faster on GPUs and CPUs with AVX-512 BF16 or AMX, within the tolerance stated in the README; on "
    "other CPUs it would be several times slower, so fp32 runs there (with a warning). auto: bf16 where native. "
    "The manifest records the precision that ran.",
)
@click.option(
    "--readout",
    type=click.Choice(["z", "z+max"]),
    default=None,
    help="What each clip row averages over the patches [default: the checkpoint's; the bundled one: z+max]: z+max "
    "is the code z beside the channel maxima of the encoder's blocks 1-4 (1664 columns), z the paper's code alone "
    "(1152). --frames always holds z.",
)
@click.option(
    "--hop",
    type=click.IntRange(1, 96),
    default=None,
    help="Hop between patches in STFT frames (23.3 ms each) [default: the checkpoint's, 96 = non-overlapping "
    "2.23-s patches]. With --frames, 2 gives an embedding every 46 ms for event detection, at 48 times the "
    "encoder's work; the clip row is the mean over the same patches.",
)
@click.option(
    "--fast-frontend",
    is_flag=True,
    help="Float32 STFT (about 2x faster log-mels); embeddings within 1e-5 relative of the float64 default (README).",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Embed only the K-th of N deterministic slices of the inputs (K = 1..N); join them with `coala-embed merge`.",
)
@click.option("--resume", is_flag=True, help="Finish an interrupted run with the same inputs and options.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs and discard interrupted progress.")
@click.option("--max-hours", default=24.0, show_default=True, callback=_max_hours,
              help="Files longer than this are reported as failures (hours, above 0).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (it is also off when stderr is not a terminal).")
def embed_cmd(inputs, out, fmt, frames, exts, no_recursive, follow_links, weights, device, batch_size, workers, decoders, log_mel_on, precision, readout, hop, fast_frontend, shard, resume, force, max_hours, quiet) -> None:  # fmt: skip
    """Embed INPUTS (files and folders) into one matrix with a manifest.

    Writes OUTPUT ([N, D] float32 rows, one per file that worked, in sorted path order; D = 1664 with the
    bundled checkpoint, see --readout) and, beside
    it, OUTPUT-stem.manifest.json: for every input its row or its error, its duration, the model (source,
    sha256), the front-end settings and the package version. Outputs are written atomically. Progress is
    kept in OUTPUT.partial/ so that `--resume` finishes a killed run with the same result.

    \b
    Exit status:
      0  every file was embedded
      1  some files failed (listed on stderr and in the manifest); the others were embedded
      2  usage error (bad option or output path, output exists without -f, another run writing it,
         unknown device or weights)
      3  the run failed while writing its output (e.g. disk full); rerun with --resume
    \b
    Example:
      coala-embed recordings/ -o feats.npy        # then: numpy.load("feats.npy"), feats.manifest.json
    """
    from . import batch
    from .config import PATCH_FRAMES

    _tune_malloc(fine_hop=hop is not None and hop < PATCH_FRAMES)
    if frames and (fmt or out.suffix.lower().lstrip(".")) != "npz":
        raise click.UsageError(
            f"--frames writes clips, frames and times into one .npz file: use -o {out.with_suffix('.npz')}"
        )
    try:
        fmt = batch.check_output(out, fmt)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    k = n = None
    if shard:
        try:
            k, n = (int(x) for x in shard.split("/"))
            assert 1 <= k <= n
        except (ValueError, AssertionError):
            raise click.UsageError(f"--shard must be K/N with 1 <= K <= N, got {shard!r}") from None
    with _locked(out):
        _embed_locked(batch, inputs, out, fmt, frames, exts, no_recursive, follow_links, weights, device, batch_size, workers,
                      decoders, log_mel_on, precision, readout, hop, fast_frontend, shard, k, n, resume, force, max_hours, quiet)  # fmt: skip


def _embed_locked(batch, inputs, out, fmt, frames, exts, no_recursive, follow_links, weights, device, batch_size, workers, decoders, log_mel_on, precision, readout, hop, fast_frontend, shard, k, n, resume, force, max_hours, quiet) -> None:  # fmt: skip
    """The embed command once the output is held (cli.embed_cmd took its lock)."""
    from .audio_io import AUDIO_EXTENSIONS, find_audio

    _check_out(out, force, resume)
    try:
        paths = find_audio(inputs, exts or AUDIO_EXTENSIONS, recursive=not no_recursive, follow_links=follow_links)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    if not paths:
        raise click.UsageError("no audio files found in the inputs (check --ext)")
    fingerprint, total = batch.inputs_fingerprint(paths), len(paths)
    indices = list(range(len(paths)))
    if shard:  # a shard may be empty (more shards than files): it still writes a valid, empty part for merge
        assert k is not None and n is not None  # parsed above
        indices = indices[k - 1 :: n]
        paths = [paths[i] for i in indices]
    model = _load(weights, device)
    _freeze_startup_objects()
    if fast_frontend:
        model.config = model.config.replace(stft_dtype="float32")
    if hop is not None:
        model.config = model.config.replace(chunk_hop=hop)
    if readout is not None:
        model.config = model.config.with_clip(readout=readout)
    if workers is None:
        workers = batch.default_workers(model.device.type)
    opts = batch.Options(
        fmt=fmt,
        frames=frames,
        batch_size=batch_size,
        workers=workers,
        decoders=decoders,
        log_mel_on=log_mel_on,
        max_hours=max_hours,
        precision=precision,
    )
    try:
        manifest = batch.run(paths, out, model, opts, indices=indices, shard=shard, resume=resume, progress=not quiet,
                             fingerprint=fingerprint, total_inputs=total)  # fmt: skip
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    except OSError as e:
        why = f"the disk is full ({e.strerror})" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        click.echo(f"error: writing {e.filename or out} failed: {why}; {out} was left as it was and the progress "
                   f"is kept in {batch.state_dir(out)}: rerun with --resume once the cause is fixed", err=True)  # fmt: skip
        sys.exit(EXIT_RUN_FAILED)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the progress is kept in {batch.state_dir(out)}; rerun the same command with "
                   "--resume to finish", err=True)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    _report(manifest, out)


def _report(manifest: dict, out: Path) -> None:
    from .batch import manifest_path

    s = manifest["summary"]
    failed = [e for e in manifest["files"] if e["status"] != "ok"]
    for e in failed:
        click.echo(f"failed: {e['error']}", err=True)
    click.echo(
        f"{s['ok']} of {s['inputs']} files embedded ({s['audio_hours']:.3f} h of audio) -> {out}, {manifest_path(out)}"
        + (f"; {len(failed)} failed" if failed else ""),
        err=True,
    )
    if failed:
        sys.exit(EXIT_FAILED_FILES)


@main.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Merged .npy file.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
def merge_cmd(shards, out, force) -> None:
    """Join the shard outputs of one sharded run into one output and manifest, rows in input order.

    \b
    The parts must be every shard 1..N of one run (--shard K/N over the same inputs, model and format),
    each once; npz parts keep their frames. Example:
      coala-embed audio/ -o part1.npz --shard 1/2 && coala-embed audio/ -o part2.npz --shard 2/2
      coala-embed merge -o all.npz part1.npz part2.npz
    """
    from . import batch

    try:
        batch.check_output(out)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    reads = [q for s in shards for q in (s, batch.manifest_path(s))]
    for target in (out, batch.manifest_path(out)):
        _check_new_file(target, True, reads)  # -f may replace an old merge, never a shard
    with _locked(out):
        _check_out(out, force, False)
        try:
            manifest = batch.merge(list(shards), out)
        except (CoalaEmbedError, OSError, KeyError, ValueError) as e:
            raise click.UsageError(f"cannot merge: {e}") from e
    _report(manifest, out)


@main.command("tags")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Tags per file.")
@click.option(
    "--weights",
    default=None,
    help="Checkpoint folder or Hub repo id [default: $COALA_EMBED_WEIGHTS, then the bundled model].",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--method",
    type=click.Choice(["auto", "neighbours", "one-hot"]),
    default="auto",
    show_default=True,
    help="neighbours: the training tag sets nearest to the sound vote (scores 0-1); one-hot: cosine of the "
    "sound and each single tag (-1-1); auto: neighbours when the checkpoint holds tag sets.",
)
def tags_cmd(files, top_k, weights, device, as_json, method) -> None:
    """Print the tags that best describe each of FILES, from COALA's co-aligned audio-tag space.

    \b
    Output: one line per file, "FILE: tag (score), ..." (or JSON with --json); words come from the
    checkpoint's vocabulary (`coala-embed vocab` lists it). Example:
      coala-embed tags examples/drum_heavy_kick.flac -k 5
    """
    import json

    from .audio_io import load_audio
    from .frontend import check_sample_rate
    from .tags import predict_tags

    model = _load(weights, device)
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


_FEATURES = click.argument("features", type=click.Path(exists=True, dir_okay=False, path_type=Path))
_ANY_MODEL = click.option(
    "--any-model",
    is_flag=True,
    help="Use the checkpoint even when the manifest says another one made FEATURES (scores then mean little).",
)


def _check_model(coll, model, any_model: bool) -> None:
    """Refuse to score the rows of ``coll`` with a checkpoint other than the one that made them."""
    from .batch import model_info
    from .collection import model_mismatch

    why = model_mismatch(coll.model_info, model_info(model))
    if why and not any_model:
        raise click.UsageError(
            f"the rows of {coll.features} cannot be compared with this checkpoint's: {why}. Pass --weights "
            f"{coll.model or 'WEIGHTS'} (the one that made them), re-embed the files, or add --any-model"
        )


_WEIGHTS = click.option(
    "--weights",
    default=None,
    help="The checkpoint that made FEATURES [default: $COALA_EMBED_WEIGHTS, then the bundled model].",
)


@main.command("search")
@_FEATURES
@click.argument("query")
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Results to show.")
@_WEIGHTS
@click.option("--device", default="auto", show_default=True)
@_ANY_MODEL
def search_cmd(features, query, top_k, weights, device, any_model) -> None:
    """Rank the files embedded in FEATURES (a .npy/.npz from `coala-embed`, with its manifest) by QUERY,
    words of the tag vocabulary (`coala-embed vocab` lists them).

    \b
    Output: one line per hit, "SCORE  FILE", best first. Example:
      coala-embed examples/ -o feats.npy && coala-embed search feats.npy "drum hit" -k 3"""
    from .batch import manifest_path
    from .collection import load_collection, read_features
    from .tags import search

    coll = None
    try:
        if manifest_path(features).exists():
            coll = load_collection(features)
            emb, paths = coll.embeddings, dict(enumerate(coll.paths))
        else:
            emb, paths = read_features(features), {}
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    model = _load(weights, device)
    if coll is not None:
        _check_model(coll, model, any_model)
    try:
        hits = search(query, emb, model=model, top_k=top_k)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    for row, score in hits:
        click.echo(f"{score:.3f}  {paths.get(row, f'row {row}')}")


def _collection(features: Path):
    from .collection import load_collection

    try:
        return load_collection(features)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e


@main.command("map")
@_FEATURES
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The HTML page to write (one self-contained file).")  # fmt: skip
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns path,label to colour the points [default: top-level folder].")  # fmt: skip
@click.option("--projection", type=click.Choice(["auto", "umap", "tsne", "pca"]), default="auto", show_default=True,
              help="auto: t-SNE up to 20,000 points, else UMAP when umap-learn is installed, else PCA.")  # fmt: skip
@click.option("--embed-audio", is_flag=True, help="Put the sounds into the page (small collections, up to 200 MB).")
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), help="Also write a static picture (matplotlib)."
)
@click.option("--title", help="Page title [default: the features file and the number of sounds].")
@click.option("--seed", default=0, show_default=True, help="Seed of the projection.")
@_WEIGHTS
@_ANY_MODEL
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing page or picture.")
def map_cmd(features, out, labels, projection, embed_audio, png, title, seed, weights, any_model, force) -> None:
    """Draw the sounds of FEATURES (an output of `coala-embed`, read with its manifest) as an interactive 2-D map
    in one HTML page: hover a point for its file, duration and top tags, click it to play the sound, type words
    to keep the sounds whose tags or file names hold them. No network is needed to open the page; without
    --embed-audio it plays the files from their place relative to the page.

    \b
    Example:
      coala-embed sounds/ -o feats.npy && coala-embed map feats.npy -o map.html --png map.png"""
    from .batch import manifest_path
    from .soundmap import build_page, layout, read_labels, write_png

    reads = [features, manifest_path(features), *([labels] if labels else [])]
    _check_new_file(out, force, reads)
    if png:
        _check_new_file(png, force, [*reads, out])
    coll = _collection(features)
    model = _load(weights, "cpu")
    _check_model(coll, model, any_model)
    try:
        lay = layout(coll, read_labels(labels, coll) if labels else None, projection, seed)
        info = build_page(coll, out, lay, model=model, embed_audio=embed_audio, title=title)
        if png:
            write_png(coll, png, lay)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    click.echo(
        f"{out}: {info['points']:,} sounds, {info['groups']} groups, {info['method']} in {info['seconds']:.1f} s, "
        f"{info['bytes'] / 2**20:.1f} MB" + (f"; {png}" if png else ""),
        err=True,
    )


@main.command("neighbours")
@_FEATURES
@click.argument("query")
@click.option("-k", "--top-k", default=10, show_default=True, type=click.IntRange(1), help="Neighbours to list.")
@_WEIGHTS
@click.option("--device", default="auto", show_default=True)
@_ANY_MODEL
def neighbours_cmd(features, query, top_k, weights, device, any_model) -> None:
    """List the files of FEATURES most similar to QUERY: a file of the collection (its path as the manifest names
    it, or its file name when that is unique) or any audio file, which is embedded first. Similarity is the cosine
    of the clips' mean codes z (the first 1152 columns of a z+max row).

    \b
    Output: one line per neighbour, "COSINE  FILE", most similar first (QUERY itself is left out).
    Example:
      coala-embed neighbours feats.npy sounds/dog/bark1.wav -k 5"""

    from .collection import neighbours

    coll = _collection(features)
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
        from .api import embed_file

        model = _load(weights, device)
        _check_model(coll, model, any_model)
        try:
            vec = embed_file(query, model=model).clip[: coll.z.shape[1]]
        except CoalaEmbedError as e:
            raise click.UsageError(f"cannot embed {query}: {e}") from e
        if vec.shape[-1] != coll.z.shape[1]:
            raise click.UsageError(f"{query} embeds to {vec.shape[-1]} dimensions, {features} has {coll.z.shape[1]}")
    else:
        raise click.UsageError(f"{query} is neither a file of {features.name} nor an audio file")
    if rows and len(coll) == 1:
        click.echo(f"{features} holds only {query} itself: no other file to compare it with", err=True)
        return
    for i, sim in neighbours(coll.z, vec, top_k + len(rows[:1])):
        if rows and i == rows[0]:
            continue
        click.echo(f"{sim:.4f}  {coll.paths[i]}")


@main.command("duplicates")
@_FEATURES
@click.option("--threshold", default=0.98, show_default=True, type=click.FloatRange(-1, 1),
              help="Cosine similarity from which two files count as the same sound.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON (lists of paths).")
def duplicates_cmd(features, threshold, as_json) -> None:
    """Find groups of near-duplicates in FEATURES: files whose mean codes z have a cosine similarity of at least
    --threshold (re-encodes, resampled copies, the same sound under two names).

    \b
    Output: one group per paragraph, largest first, "COSINE  FILE" per file (the similarity to the group's
    first file). Exit status 0 whether or not duplicates were found. Example:
      coala-embed duplicates feats.npy --threshold 0.99"""
    import json

    from .collection import duplicates, normalized

    coll = _collection(features)
    groups = duplicates(coll.z, threshold)
    if as_json:
        click.echo(json.dumps([[coll.paths[i] for i in g] for g in groups], indent=1))
        return
    x = normalized(coll.z)
    for g in groups:
        for i in g:
            click.echo(f"{float(x[g[0]] @ x[i]):.4f}  {coll.paths[i]}")
        click.echo("")
    click.echo(f"{len(groups)} groups, {sum(map(len, groups))} files of {len(coll)}", err=True)


@main.command("vocab")
@click.option(
    "--weights",
    default=None,
    help="Checkpoint folder or Hub repo id [default: $COALA_EMBED_WEIGHTS, then the bundled model].",
)
def vocab_cmd(weights) -> None:
    """List the tag vocabulary of the checkpoint: the words `tags` can print and `search` understands.

    \b
    Output: one word per line, most frequent in the training corpus first. Example:
      coala-embed vocab | grep -x dog || echo "not in the vocabulary"
    """
    model = _load(weights, "cpu")
    if not model.config.tags:
        raise click.UsageError("this checkpoint has no tag vocabulary (it was saved without its tag encoder)")
    for word in model.config.tags:
        click.echo(word)


@main.command("convert")
@click.option(
    "--audio-encoder",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The authors' audio_encoder_epoch_200.pt.",
)
@click.option(
    "--tag-encoder",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The authors' tag_encoder_epoch_200.pt.",
)
@click.option(
    "--scaler",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="scaler_top_1000_params.json (the pickled MinMaxScaler's arrays).",
)
@click.option(
    "--vocabulary",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="json/id2token_top_1000.json (tag order).",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write config.json + model.safetensors.",
)
def convert_cmd(audio_encoder, tag_encoder, scaler, vocabulary, out) -> None:
    """Convert the COALA authors' checkpoints into a coala-embed folder (safetensors; old files are read
    with torch.load(weights_only=True) only).

    \b
    Output: OUTPUT/config.json and OUTPUT/model.safetensors, usable with --weights OUTPUT. Example:
      coala-embed convert --audio-encoder audio_encoder_epoch_200.pt --scaler scaler_top_1000_params.json -o orig/
    """
    from .convert import convert_original

    try:
        convert_original(audio_encoder, scaler, out, tag_encoder=tag_encoder, vocabulary=vocabulary)
    except CoalaEmbedError as e:
        raise click.UsageError(str(e)) from e
    click.echo(f"converted -> {out}", err=True)


if __name__ == "__main__":
    main()
