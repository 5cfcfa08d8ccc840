"""Stage 3, evaluation: the held-out tasks (``tasks``), linear and MLP probes of every model (``evaluate``, run as
``python -m training.eval``), checkpoint and seed selection (``select``) and the corpus analyses (``analysis``)."""
