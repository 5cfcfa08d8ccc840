"""``python -m coala_embed`` runs the command line."""

from .cli import main

main()
