"""``coala-embed embed`` (the default command) and ``merge``: audio files in, a features file and its manifest out."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .common import (
    DEVICE,
    EXIT_FAILED_FILES,
    FORCE,
    boundary,
    check_new_file,
    freeze_startup_objects,
    load,
    locked,
    on_failure,
    tune_malloc,
    weights_option,
)


@dataclass(frozen=True)
class EmbedRequest:
    """Everything ``coala-embed embed`` was asked, as its options name it (``--help`` explains each)."""

    inputs: tuple[Path, ...]
    out: Path
    fmt: str | None
    frames: bool
    exts: tuple[str, ...]
    no_recursive: bool
    follow_links: bool
    weights: str | None
    device: str
    batch_size: int
    workers: int | None
    decoders: str
    log_mel_on: str
    precision: str
    readout: str | None
    hop: int | None
    fast_frontend: bool
    shard: str | None
    resume: bool
    append: bool
    force: bool
    max_hours: float
    quiet: bool

    def shard_slice(self) -> tuple[int, int] | None:
        """``--shard K/N`` as ``(K, N)``, or None."""
        if not self.shard:
            return None
        try:
            k, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            k = n = 0
        if not 1 <= k <= n:
            raise click.UsageError(f"--shard must be K/N with 1 <= K <= N, got {self.shard!r}")
        return k, n


def _max_hours(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a number of hours above 0, got {value}")
    return value


@click.command("embed")
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
@weights_option()
@DEVICE
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
@click.option("--append", is_flag=True,
              help="Add the inputs not yet in OUTPUT after its rows (same checkpoint and options as the run that "
              "wrote it); a file that failed there is tried again. The rows already there are kept as they are, "
              "and `coala-embed index` then adds the new ones to the index.")  # fmt: skip
@click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs and discard interrupted progress.")
@click.option("--max-hours", default=24.0, show_default=True, callback=_max_hours,
              help="Files longer than this are reported as failures (hours, above 0).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (it is also off when stderr is not a terminal).")
@boundary
def embed_cmd(**options) -> None:
    """Embed INPUTS (files and folders) into one matrix with a manifest.

    Writes OUTPUT ([N, D] float32 rows, one per file that worked, in sorted path order; D = 1664 with the
    bundled checkpoint, see --readout) and, beside
    it, OUTPUT-stem.manifest.json: for every input its row or its error, its duration, the model (source,
    sha256), the front-end settings and the package version. Outputs are written atomically. Progress is
    kept in OUTPUT.partial/ so that `--resume` finishes a killed run with the same result. `--append` adds new
    files to an existing OUTPUT (progress in OUTPUT.append/; `--append --resume` finishes it).

    \b
    Exit status:
      0  every file was embedded
      1  some files failed (listed on stderr and in the manifest); the others were embedded
      2  usage error (bad option or output path, output exists without -f, another run writing it,
         unknown device or weights)
      3  the run failed while writing its output (e.g. disk full); rerun with --resume
      130  interrupted (Ctrl-C); rerun with --resume
    \b
    Example:
      coala-embed recordings/ -o feats.npy        # then: numpy.load("feats.npy"), feats.manifest.json
      coala-embed recordings/ -o feats.npy --append   # later: only the files added since
    """
    from .. import batch
    from ..config import PATCH_FRAMES

    req = EmbedRequest(**options)
    tune_malloc(fine_hop=req.hop is not None and req.hop < PATCH_FRAMES)
    if req.frames and (req.fmt or req.out.suffix.lower().lstrip(".")) != "npz":
        raise click.UsageError(
            f"--frames writes clips, frames and times into one .npz file: use -o {req.out.with_suffix('.npz')}"
        )
    fmt = batch.check_output(req.out, req.fmt)
    shard = req.shard_slice()
    with locked(req.out):
        _embed(req, fmt, shard)


def _embed(req: EmbedRequest, fmt: str, shard: tuple[int, int] | None) -> None:
    """The embed command once the output is held."""
    from .. import batch
    from ..audio_io import AUDIO_EXTENSIONS, find_audio
    from ..journal import state_dir

    base = None
    if req.append:
        base = _check_append(req)
    else:
        _check_out(req.out, req.force, req.resume)
    paths = find_audio(req.inputs, req.exts or AUDIO_EXTENSIONS, recursive=not req.no_recursive,
                       follow_links=req.follow_links)  # fmt: skip
    if not paths:
        raise click.UsageError("no audio files found in the inputs (check --ext)")
    if base is not None:
        paths, retried = _new_inputs(paths, base, req.out)
        if not paths:
            click.echo(f"nothing to add: every input is already in {req.out}", err=True)
            return
    fingerprint, total = batch.inputs_fingerprint(paths), len(paths)
    indices = list(range(len(paths)))
    if shard:  # a shard may be empty (more shards than files): it still writes a valid, empty part for merge
        indices = indices[shard[0] - 1 :: shard[1]]
        paths = [paths[i] for i in indices]
    model = load(req.weights, req.device)
    freeze_startup_objects()
    if req.fast_frontend:
        model.config = model.config.replace(stft_dtype="float32")
    if req.hop is not None:
        model.config = model.config.replace(chunk_hop=req.hop)
    if req.readout is not None:
        model.config = model.config.with_clip(readout=req.readout)
    opts = batch.Options(
        fmt=fmt,
        frames=req.frames,
        batch_size=req.batch_size,
        workers=req.workers or batch.default_workers(model.device.type),
        decoders=req.decoders,
        log_mel_on=req.log_mel_on,
        max_hours=req.max_hours,
        precision=req.precision,
    )
    if base is not None:
        _append(req, paths, model, opts, base, retried)
        return
    on_failure(f"{req.out} was left as it was and the progress is kept in {state_dir(req.out)}: rerun the "
               "same command with --resume to finish")  # fmt: skip
    manifest = batch.run(paths, req.out, model, opts, indices=indices, shard=req.shard, resume=req.resume,
                         progress=not req.quiet, fingerprint=fingerprint, total_inputs=total)  # fmt: skip
    _report(manifest, req.out)


def append_dir(out: Path) -> Path:
    """Where ``--append`` embeds the new files before they join ``out``: ``feats.npy`` -> ``feats.npy.append/``."""
    return out.with_name(out.name + ".append")


def _check_append(req: EmbedRequest) -> dict:
    """The manifest of the output that ``--append`` adds to, once the request can append to it."""
    from ..errors import CoalaEmbedError
    from ..joining import read_output
    from ..journal import state_dir

    if req.force or req.shard:
        raise click.UsageError(f"--append adds to {req.out}; it does not go with {'-f' if req.force else '--shard'}")
    if not req.out.exists():
        raise click.UsageError(f"{req.out} does not exist: there is nothing to append to (run without --append)")
    if state_dir(req.out).exists():
        raise click.UsageError(f"{state_dir(req.out)} holds an interrupted run of {req.out}: finish it with --resume "
                               "(without --append) first")  # fmt: skip
    try:
        return read_output(req.out)
    except (CoalaEmbedError, ValueError) as e:
        raise click.UsageError(f"cannot append to {req.out}: {e}") from e


def _new_inputs(paths: list[Path], base: dict, out: Path) -> tuple[list[Path], set[int]]:
    """The inputs not yet embedded in ``out`` (whose manifest is ``base``), and the indices of the entries of
    ``out`` that failed and are tried again. An input is known when it is the same file as an entry's (its path as
    given or beside ``out``), or has the same path as given or made absolute; a known input whose content changed
    since it was embedded is refused (an append only adds rows)."""
    import os

    from ..journal import file_stamp

    def identity(p: str | Path) -> tuple[int, int] | None:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    known: dict = {}
    for e in base["files"]:
        known[e["path"]] = known[os.path.abspath(e["path"])] = e
        ident = identity(e["path"]) or identity(out.parent / e["path"])
        if ident:
            known[ident] = e
    entries = [(p, known.get(identity(p)) or known.get(str(p)) or known.get(os.path.abspath(p))) for p in paths]
    changed = [p for p, e in entries if e and e["status"] == "ok" and e.get("stamp") and file_stamp(p) != e["stamp"]]
    if changed:
        raise click.UsageError(
            f"{len(changed)} input(s) changed since they were embedded into {out} (first: {changed[0]}); --append "
            "only adds files: embed the collection again with -f"
        )
    new = [p for p, e in entries if not e or e["status"] != "ok"]
    if len(new) < len(paths):
        click.echo(f"{len(paths) - len(new)} of the {len(paths)} inputs are already in {out}", err=True)
    return new, {e["index"] for _, e in entries if e and e["status"] != "ok"}


def _append(req: EmbedRequest, paths: list[Path], model, opts, base: dict, retried: set[int]) -> None:
    """Embed ``paths`` into a part beside the output, then join it after the output's rows (the entries
    ``retried``, which failed there, give way to the part's)."""
    import shutil

    from .. import batch, joining
    from ..journal import state_dir

    why = joining.append_conflict(base, model, opts)
    if why:
        raise click.UsageError(f"cannot append to {req.out}: {why}")
    folder = append_dir(req.out)
    part = folder / req.out.name
    if folder.exists() and not state_dir(part).exists():
        shutil.rmtree(folder)  # a part whose join was interrupted: its files are in the output already, or redone
    if folder.exists() and not req.resume:
        raise click.UsageError(f"{folder} holds an interrupted --append: add --resume to finish it")
    folder.mkdir(exist_ok=True)
    on_failure(f"{req.out} was left as it was and the progress is kept in {folder}: rerun the same command with "
               "--resume to finish")  # fmt: skip
    manifest = batch.run(paths, part, model, opts, resume=req.resume, progress=not req.quiet)
    joined = joining.append(req.out, part, replaced=retried)
    shutil.rmtree(folder)
    _report(manifest, req.out, joined)


def _check_out(out: Path, force: bool, resume: bool) -> None:
    """Refuse to overwrite without ``-f``, and refuse even with it to take over another output's manifest
    (``feats.npy`` and ``feats.npz`` would share ``feats.manifest.json``)."""
    import json

    from ..batch import manifest_path
    from ..journal import discard, state_dir

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
        discard(state_dir(out))
        return
    if resume and state_dir(out).exists():
        return
    for p in (out, manifest_path(out)):
        if p.exists():
            raise click.UsageError(f"{p} exists; add -f to overwrite it")


def _report(manifest: dict, out: Path, joined: dict | None = None) -> None:
    """The run's failures and its one-line summary on stderr; exit 1 when files failed. ``joined``: the output
    that an ``--append`` run's rows (``manifest``) were added to."""
    from ..batch import manifest_path

    s = manifest["summary"]
    failed = [e for e in manifest["files"] if e["status"] != "ok"]
    for e in failed:
        click.echo(f"failed: {e['error']}", err=True)
    if joined is None:
        done = f"{s['ok']} of {s['inputs']} files embedded ({s['audio_hours']:.3f} h of audio) -> {out}"
    else:
        done = (f"{s['ok']} of {s['inputs']} new files embedded ({s['audio_hours']:.3f} h of audio) and added to "
                f"{out} ({joined['summary']['ok']:,} rows)")  # fmt: skip
    click.echo(f"{done}, {manifest_path(out)}" + (f"; {len(failed)} failed" if failed else ""), err=True)
    index = (joined or {}).get("index")
    if index:
        click.echo(f"its index covers the first {index['rows']:,} rows: `coala-embed index {out}` adds the new ones",
                   err=True)  # fmt: skip
    if failed:
        sys.exit(EXIT_FAILED_FILES)


@click.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), help="Merged .npy file.")
@FORCE
@boundary
def merge_cmd(shards, out, force) -> None:
    """Join the shard outputs of one sharded run into one output and manifest, rows in input order.

    \b
    The parts must be every shard 1..N of one run (--shard K/N over the same inputs, model and format),
    each once; npz parts keep their frames. Example:
      coala-embed audio/ -o part1.npz --shard 1/2 && coala-embed audio/ -o part2.npz --shard 2/2
      coala-embed merge -o all.npz part1.npz part2.npz
    """
    from .. import batch, joining
    from ..errors import CoalaEmbedError

    batch.check_output(out)
    reads = [q for s in shards for q in (s, batch.manifest_path(s))]
    for target in (out, batch.manifest_path(out)):
        check_new_file(target, True, reads)  # -f may replace an old merge, never a shard
    with locked(out):
        _check_out(out, force, False)
        try:
            manifest = joining.merge(list(shards), out)
        except (CoalaEmbedError, KeyError, ValueError) as e:
            raise click.UsageError(f"cannot merge: {e}") from e
    _report(manifest, out)
