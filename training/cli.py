"""What every ``python -m training.<stage>`` command shares: the data folder, its option, and logging."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path


def data_dir(arg: str | None = None) -> Path:
    """The data folder: ``--data``, else ``COALA_EMBED_DATA``, else ``~/.cache/coala-embed``."""
    return Path(arg or os.environ.get("COALA_EMBED_DATA") or Path.home() / ".cache" / "coala-embed")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the module docstring as its help and the ``--data`` option."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (default: $COALA_EMBED_DATA or ~/.cache/coala-embed)")
    return p


def start(p: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, Path]:
    """Parse the arguments, start logging, and resolve the data folder."""
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return a, data_dir(a.data)
