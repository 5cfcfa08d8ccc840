"""Stage 1, the corpus: Debian's sound packages (or your own tagged collection) -> log-mels, tags and patches in
``DATA/corpus/`` (``python -m training.corpus``; ``build`` runs it, ``sources`` says what may enter)."""
