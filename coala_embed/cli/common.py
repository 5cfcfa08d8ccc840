"""What every command shares: the error boundary, the options defined once, loading the checkpoint, checks of
output paths and of the model that made a features file."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import CoalaEmbedError

# Exit status: 0 all done; 1 some input files failed (the others are done); 2 usage error (click's own);
# 3 the run itself failed while writing (disk full, output removed): nothing half-written is left as the output;
# 130 interrupted (Ctrl-C). A command may leave a hint for the last two (``on_failure``: e.g. "rerun with --resume").
EXIT_FAILED_FILES, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 1, 3, 130
_HINT = "coala_embed.on_failure"

F = TypeVar("F", bound=Callable[..., Any])


def boundary(f: F) -> F:
    """The one error boundary of every command: a ``CoalaEmbedError`` (bad input, path, weights, device) is a usage
    error (exit 2) naming the problem; an ``OSError`` while writing exits 3 naming the file and, for a full disk,
    saying so; Ctrl-C exits 130. Both print the hint the command left with :func:`on_failure`."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return f(*args, **kwargs)
        except CoalaEmbedError as e:
            raise click.UsageError(str(e), ctx) from e
        except OSError as e:
            import errno

            why = f"the disk is full ({e.strerror})" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            click.echo(f"error: {e.filename or 'a file'}: {why}" + _hint(ctx, "; "), err=True)
            sys.exit(EXIT_RUN_FAILED)
        except KeyboardInterrupt:
            click.echo("interrupted" + _hint(ctx, ": "), err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def on_failure(hint: str) -> None:
    """What the boundary adds to a write failure or an interruption of the running command."""
    click.get_current_context().meta[_HINT] = hint


def _hint(ctx: click.Context, sep: str) -> str:
    hint = ctx.meta.get(_HINT)
    return f"{sep}{hint}" if hint else ""


def weights_option(what: str = "Checkpoint folder or Hub repo id owner/name[@revision]") -> Callable[[F], F]:
    """``--weights``, the same everywhere but for what the checkpoint is to the command."""
    return click.option("--weights", default=None,
                        help=f"{what} [default: $COALA_EMBED_WEIGHTS, then the bundled model].")  # fmt: skip


DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)  # an input file every command checks alike
FEATURES = click.argument("features", type=EXISTING_FILE)
ANY_MODEL = click.option(
    "--any-model",
    is_flag=True,
    help="Use the checkpoint even when the manifest says another one made FEATURES (scores then mean little).",
)
FORCE = click.option("-f", "--force", is_flag=True, help="Overwrite existing outputs.")
EXACT = click.option(
    "--exact", is_flag=True, help="Compare every row (brute force) even where an index of FEATURES exists."
)


def load(weights: str | None, device: str):
    """The checkpoint on ``device`` (``--weights``, ``--device``)."""
    from ..device import resolve_device
    from ..hub import load_model

    return load_model(weights, device=resolve_device(device))


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold the output for the whole command (journal.output_lock); a second run on it is a usage error."""
    from ..journal import output_lock

    with output_lock(out):
        yield


def check_new_file(path: Path, force: bool, reads: list[Path]) -> None:
    """An output of a command other than embed: never a file the command reads (features, manifest, labels),
    even with ``-f``, and an existing file only with ``-f``."""
    for r in reads:
        if path.resolve() == r.resolve() or (path.exists() and r.exists() and os.path.samefile(path, r)):
            what = "" if str(path) == str(r) else f" (the same file as {r})"
            raise click.UsageError(f"{path} is an input of this command{what}; write the output to another file")
    if path.is_dir():
        raise click.UsageError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise click.UsageError(f"{path} exists; add -f to overwrite it")


def check_model(coll, model, any_model: bool) -> None:
    """Refuse to score the rows of ``coll`` with a checkpoint other than the one that made them."""
    from ..batch import model_info
    from ..collection import model_mismatch

    why = model_mismatch(coll.model_info, model_info(model))
    if why and not any_model:
        raise click.UsageError(
            f"the rows of {coll.features} cannot be compared with this checkpoint's: {why}. Pass --weights "
            f"{coll.model or 'WEIGHTS'} (the one that made them), re-embed the files, or add --any-model"
        )


def collection(features: Path):
    """The features file with its manifest (``collection.load_collection``)."""
    from ..collection import load_collection

    return load_collection(features)


def tune_malloc(fine_hop: bool = False) -> None:
    """Keep freed memory in the process for reuse (glibc only; a no-op elsewhere).

    Every file allocates and frees buffers of megabytes (decoded audio, spectrograms, patches). With glibc's
    defaults each is a fresh mmap whose pages fault in again and are unmapped on free: a tenth of the CLI's
    CPU time went to the kernel (``bench/throughput.py``; 1.3 of 12.7 CPU-s on 200 files). Raising the
    mmap and trim thresholds keeps those pages in the heap (1.3 -> 0.8 kernel CPU-s there) without raising
    the peak: the 1-hour FLAC peaks at 805-861 MB with it and 815-820 MB without (two runs each). Only the
    command line does this: it owns its process, the library does not.

    ``fine_hop`` (``--hop`` under a patch): the blocks of patches (about 9 MB each, ``streaming.stream_block_seconds``)
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


def freeze_startup_objects() -> None:
    """Move the objects made so far (torch's modules, the model) out of the garbage collector's sight.

    The collector's full passes, and the one at interpreter exit, would otherwise walk torch's hundreds of
    thousands of objects again: exiting after ``import torch`` took 0.4 s on the dev machine, 0.07 s after
    ``gc.freeze()``. Objects made later are collected as usual.
    """
    import gc

    gc.freeze()
