"""Convert the COALA authors' checkpoints (``audio_encoder_epoch_200.pt``, ``tag_encoder_epoch_200.pt``,
the pickled scaler's arrays) into a coala-embed folder. Old files are read with ``weights_only=True`` only."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from .config import CoalaConfig, ModelConfig
from .errors import CheckpointError
from .hub import save_pretrained
from .model import CoalaModel


def _load_state(path: str | os.PathLike, prefix: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or unsafe pickles; all mean "cannot use it"
        raise CheckpointError(f"{path}: cannot be read as a plain state_dict with weights_only=True ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state_dict of tensors")
    if not any(k.startswith(prefix) for k in state):
        raise CheckpointError(f"{path}: no '{prefix}*' keys; is it the right file?")
    return state


def convert_original(
    audio_encoder: str | os.PathLike,
    scaler: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tag_encoder: str | os.PathLike | None = None,
    vocabulary: str | os.PathLike | None = None,
) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` from the original files.

    Args:
        audio_encoder: the AudioEncoder state_dict (keys ``audio_encoder.*``, ``fc_audio.0.weight``).
        scaler: JSON with the MinMaxScaler's ``min_`` and ``scale_`` (96 values, per time column).
        tag_encoder: optional TagEncoder state_dict (keys ``tag_encoder.*``, ``fc_tag.0.weight``).
        vocabulary: optional ``id2token`` JSON (``{"0": "close", ...}``) giving the tag order.

    Raises:
        CheckpointError: unreadable files, unexpected keys or shapes.
    """
    audio = _load_state(audio_encoder, "audio_encoder.")
    tags_state = _load_state(tag_encoder, "tag_encoder.") if tag_encoder else None
    n_tags = int(tags_state["tag_encoder.0.weight"].shape[1]) if tags_state else 0
    vocab: tuple[str, ...] = ()
    if vocabulary:
        id2token = json.loads(Path(vocabulary).read_text())
        vocab = tuple(id2token[str(i)] for i in range(len(id2token)))
    elif n_tags:
        vocab = tuple(f"tag{i}" for i in range(n_tags))
    if n_tags and len(vocab) != n_tags:
        raise CheckpointError(f"{vocabulary}: {len(vocab)} tags, but the tag encoder takes {n_tags}")
    params = json.loads(Path(scaler).read_text())
    config = CoalaConfig(
        model=ModelConfig(n_tags=n_tags), tags=vocab, info={"converted_from": "COALA authors' checkpoints"}
    )
    config = dataclasses.replace(config, frontend=dataclasses.replace(config.frontend, pooling="original"))
    model = CoalaModel(config)
    state = {f"audio.{k}": v for k, v in audio.items()}
    if tags_state:
        state.update({f"tag.{k}": v for k, v in tags_state.items()})
    state["scaler_min"] = torch.from_numpy(np.asarray(params["min_"], dtype=np.float32))
    state["scaler_scale"] = torch.from_numpy(np.asarray(params["scale_"], dtype=np.float32))
    expected = model.state_dict()
    if set(state) != set(expected):
        raise CheckpointError(
            f"unexpected keys: missing {sorted(set(expected) - set(state))[:5]}, extra {sorted(set(state) - set(expected))[:5]}"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise CheckpointError(f"wrong shapes for {bad[:5]}")
    model.load_state_dict(state, strict=True)
    # The authors trained on Freesound for 200 epochs: these are trained weights; their recipe is `original`.
    return save_pretrained(model, out, trained=True)
