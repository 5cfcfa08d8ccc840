"""Embed a collection on a Ray cluster with Ray Data (``pip install coala-embed[ray]``): file paths in,
``map_batches`` with one model per worker (or GPU), paths, embeddings and status out as Parquet."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class CoalaEmbedder:
    """A callable class for ``Dataset.map_batches``: Ray builds one per worker, so each holds one model."""

    def __init__(self, weights: str | None = None, device: str | None = None, batch_size: int = 64) -> None:
        from .hub import load_model

        self.model = load_model(weights, device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .api import embed_files

        dim = self.model.config.clip_dim
        paths = [str(p) for p in batch["path"]]
        rows, status, errors, durations = [], [], [], []
        for _, res in embed_files(paths, model=self.model, batch_size=self.batch_size):
            if isinstance(res, Exception):
                rows.append(np.zeros(dim, np.float32))
                status.append("error")
                errors.append(str(res))
                durations.append(0.0)
            else:
                rows.append(res.clip)
                status.append("ok")
                errors.append("")
                durations.append(res.duration)
        return {
            "path": np.asarray(paths),
            "embedding": np.stack(rows).astype(np.float32),
            "status": np.asarray(status),
            "error": np.asarray(errors),
            "duration": np.asarray(durations),
        }


def embed_with_ray(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    weights: str | None = None,
    concurrency: int = 1,
    num_gpus: float = 0,
    files_per_batch: int = 16,
    batch_size: int = 64,
) -> Path:
    """Embed ``paths`` with Ray Data and write Parquet files (columns path, embedding, status, error,
    duration) into ``out_dir``. Connects to the running Ray cluster, or starts a local one.

    Args:
        concurrency: number of model replicas (actors).
        num_gpus: GPUs per replica (e.g. 1 to put one model on each GPU); 0 runs on CPUs.
        files_per_batch: files handed to a replica at a time.
    """
    import ray

    items = [{"path": str(p)} for p in paths]
    ds: ray.data.Dataset = ray.data.from_items(items)
    ds = ds.map_batches(
        CoalaEmbedder,
        fn_constructor_kwargs={"weights": weights, "device": "cuda" if num_gpus else "cpu", "batch_size": batch_size},
        batch_size=files_per_batch,
        concurrency=concurrency,
        num_gpus=num_gpus,
        batch_format="numpy",
    )
    ds.write_parquet(str(out_dir))
    return Path(out_dir)


def read_parquet(out_dir: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """Read the output back without Ray: ``(paths, embeddings [N, clip_dim], status)`` sorted by path."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(out_dir))
    paths = table.column("path").to_pylist()
    emb = np.stack([np.asarray(e, dtype=np.float32).reshape(-1) for e in table.column("embedding").to_pylist()])
    status = table.column("status").to_pylist()
    order = np.argsort(paths, kind="stable")
    return [paths[i] for i in order], emb[order], [status[i] for i in order]
