"""The ``coala-embed`` command: parse the arguments, call the package, write the outputs.

One module per topic: ``embed`` (the default command, and ``merge``), ``tags`` (``tags``, ``search``, ``vocab``),
``views`` (``map``, ``neighbours``, ``duplicates``, ``index``), ``convert``; ``common`` holds the error boundary and the
options they share. Heavy imports (torch, the model) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..version import __version__
from .common import EXIT_FAILED_FILES, EXIT_INTERRUPTED, EXIT_RUN_FAILED

__all__ = ["EXIT_FAILED_FILES", "EXIT_INTERRUPTED", "EXIT_RUN_FAILED", "main"]


class _DefaultGroup(click.Group):
    """A group whose default command is ``embed``: ``coala-embed DIR -o feats.npy`` means
    ``coala-embed embed DIR -o feats.npy``; the other commands are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["embed", *args]
        ctx.meta["coala_embed.first_arg"] = args[0] if args else None
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        """A usage error of a subcommand whose name is also a file or folder here says how to embed that path
        instead (each command's own errors go through ``common.boundary``)."""
        try:
            return super().invoke(ctx)
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
      coala-embed index feats.npy                    an index for a million sounds (the [index] extra)
      coala-embed convert --audio-encoder a.pt ...   the authors' checkpoints to safetensors

    Run `coala-embed embed --help` for all options of the default command.
    """


from .convert import convert_cmd  # noqa: E402  (the commands, registered on the group below)
from .embed import embed_cmd, merge_cmd  # noqa: E402
from .tags import search_cmd, tags_cmd, vocab_cmd  # noqa: E402
from .views import duplicates_cmd, index_cmd, map_cmd, neighbours_cmd  # noqa: E402

for _command in (embed_cmd, merge_cmd, tags_cmd, search_cmd, vocab_cmd, map_cmd, neighbours_cmd, duplicates_cmd,
                 index_cmd, convert_cmd):  # fmt: skip
    main.add_command(_command)
