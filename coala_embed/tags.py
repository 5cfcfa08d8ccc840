"""Zero-shot tags and text search in COALA's co-aligned space: audio projection vs tag projection."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import numpy as np
import torch

from .api import _model, clip_vector, embed_patches
from .errors import CoalaEmbedError
from .frontend import prepare
from .model import CoalaModel


class UnknownTagError(CoalaEmbedError, ValueError):
    """A query word is not in the checkpoint's tag vocabulary."""


def _require_tags(model: CoalaModel) -> list[str]:
    if model.tag is None or not model.config.tags:
        raise CoalaEmbedError("this checkpoint has no tag encoder and vocabulary; use a COALA checkpoint with tags")
    return list(model.config.tags)


@torch.inference_mode()
def tag_projections(model: CoalaModel) -> torch.Tensor:
    """``[n_tags, 1152]``: each vocabulary word, one-hot, through the tag encoder and its projection head."""
    vocab = _require_tags(model)
    eye = torch.eye(len(vocab), device=model.device)
    return model.tag_projection(eye).float()


@torch.inference_mode()
def audio_projections(model: CoalaModel, z: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Embeddings z ``[N, 1152]`` (from get_embedding or the CLI) -> their projections ``[N, 1152]``. Wider clip
    vectors (``config.clip``) start with the mean of z; only those first 1152 columns are used."""
    z = torch.as_tensor(np.asarray(z, dtype=np.float32), device=model.device)
    z = z.reshape(-1, z.shape[-1])[:, : model.config.model.embedding_dim]
    return model.project_audio(z).float()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).t()


METHODS = ("auto", "neighbours", "one-hot")


@torch.inference_mode()
def tag_scores(
    model: CoalaModel,
    z: np.ndarray | torch.Tensor,
    *,
    method: str = "auto",
    k: int = 20,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Scores ``[N, n_tags]`` of every vocabulary tag for embeddings z ``[N, 1152]``.

    ``"neighbours"``: the ``k`` training tag sets (``config.tag_sets``) whose projections are nearest to the
    sound's projection vote for their tags, each with weight ``count * exp((cos - best cos) / temperature)``;
    a score is the weighted share of votes, in [0, 1]. ``"one-hot"``: cosine between the sound's projection and
    each single tag's projection, in [-1, 1] (the tag encoder only saw multi-hot sets in training, so one-hot
    inputs rank worse: see the model card). ``"auto"``: neighbours when the checkpoint has tag sets.

    Raises:
        CoalaEmbedError: no tag encoder, an unknown method, or ``"neighbours"`` without tag sets.
    """
    _require_tags(model)
    if method not in METHODS:
        raise CoalaEmbedError(f"method must be one of {METHODS}, got {method!r}")
    sets = model.config.tag_sets
    if method == "auto":
        method = "neighbours" if sets else "one-hot"
    a = audio_projections(model, z)
    if method == "one-hot":
        return _cosine(a, tag_projections(model)).cpu()
    if not sets:
        raise CoalaEmbedError("this checkpoint has no training tag sets; use method='one-hot'")
    multi_hot = torch.zeros(len(sets), len(model.config.tags), device=model.device)
    for row, s in enumerate(sets):
        multi_hot[row, list(s)] = 1.0
    counts = torch.tensor(model.config.tag_set_counts, dtype=torch.float32, device=model.device)
    sims = _cosine(a, model.tag_projection(multi_hot).float())
    near, idx = sims.topk(min(k, len(sets)), dim=1)
    w = counts[idx] * torch.exp((near - near[:, :1]) / temperature)
    w = w / w.sum(dim=1, keepdim=True)
    return (w[:, :, None] * multi_hot[idx]).sum(dim=1).cpu()


def predict_tags(
    audio: np.ndarray | torch.Tensor,
    sr: int,
    *,
    model: CoalaModel | None = None,
    top_k: int = 10,
    method: str = "auto",
) -> list[tuple[str, float]]:
    """Rank the vocabulary's tags for a sound from its projection in the co-aligned space (encoder + audio
    projection head, averaged over its patches); see :func:`tag_scores` for the methods.

    Returns:
        ``[(tag, score), ...]``, the ``top_k`` best.
    """
    model = _model(model, None)
    vocab = _require_tags(model)
    p = prepare(audio, sr, model.config.frontend)
    z = clip_vector(embed_patches(model, p.patches, readout="z"))[None]
    scores = tag_scores(model, z, method=method)[0]
    best = torch.topk(scores, min(top_k, len(vocab)))
    return [(vocab[i], float(s)) for s, i in zip(best.values, best.indices)]


def query_vector(model: CoalaModel, query: str | Sequence[str]) -> torch.Tensor:
    """Multi-hot vector ``[1, n_tags]`` of a text query made of vocabulary words.

    Words are lowercased; a plural whose singular is in the vocabulary is accepted.

    Raises:
        UnknownTagError: a word is not in the vocabulary; the message lists the vocabulary words spelled like
            it, or says that none is.
    """
    vocab = _require_tags(model)
    index = {t: i for i, t in enumerate(vocab)}
    words = query.split() if isinstance(query, str) else list(query)
    if not words:
        raise UnknownTagError("the query is empty; give one or more vocabulary words")
    vec = torch.zeros(1, len(vocab), device=model.device)
    for w in words:
        w = w.lower().strip(".,;:!?\"'")
        candidates = [w, w[:-1] if w.endswith("s") else w, w[:-2] if w.endswith("es") else w]
        hit = next((index[c] for c in candidates if c in index), None)
        if hit is None:
            near = difflib.get_close_matches(w, vocab, n=5, cutoff=0.6)
            hint = (
                f"; near words: {', '.join(near)}"
                if near
                else f"; no vocabulary word is spelled like it (`coala-embed vocab` lists all {len(vocab)})"
            )
            raise UnknownTagError(f"{w!r} is not in the tag vocabulary{hint}")
        vec[0, hit] = 1.0
    return vec


@torch.inference_mode()
def query_projection(model: CoalaModel, query: str | Sequence[str]) -> torch.Tensor:
    """A text query's tag projection ``[1, 1152]`` in the co-aligned space (what :func:`search` ranks rows by)."""
    return model.tag_projection(query_vector(model, query)).float()


@torch.inference_mode()
def search(
    query: str | Sequence[str], embeddings: np.ndarray, *, model: CoalaModel | None = None, top_k: int = 10
) -> list[tuple[int, float]]:
    """Rank the rows of an embedding matrix ``[N, 1152]`` (e.g. the CLI's ``feats.npy``) by a text query.

    Returns:
        ``[(row, score), ...]``, the ``top_k`` best rows by cosine similarity of projections.
    """
    model = _model(model, None)
    q = query_projection(model, query)
    scores = _cosine(audio_projections(model, embeddings), q)[:, 0].cpu()
    best = torch.topk(scores, min(top_k, len(scores)))
    return [(int(i), float(s)) for s, i in zip(best.values, best.indices)]
