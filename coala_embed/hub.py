"""Resolve, load and save checkpoints: local folders and Hub repos, safetensors only, strict checks."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import CoalaConfig
from .errors import CheckpointError, HubError, NoPretrainedWeightsError
from .files import atomic_write
from .model import CoalaModel

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ENV_WEIGHTS = "COALA_EMBED_WEIGHTS"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


def default_weights_dir() -> Path:
    """The checkpoint the wheel carries (``coala_embed/_weights``), or ``weights/`` of a source checkout."""
    packaged = Path(__file__).parent / "_weights"
    if (packaged / CONFIG_NAME).is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "weights"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(repo_spec: str, local_files_only: bool | None) -> Path:
    """Fetch ``config.json`` and ``model.safetensors`` of ``owner/name[@revision]`` through huggingface_hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .version import __version__

    repo_id, _, revision = repo_spec.partition("@")
    kwargs: dict[str, Any] = dict(revision=revision or None, library_name="coala-embed", library_version=__version__)
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        cfg = hf_hub_download(repo_id, CONFIG_NAME, **kwargs)
        hf_hub_download(repo_id, WEIGHTS_NAME, **kwargs)
    except LocalEntryNotFoundError as e:
        raise HubError(
            f"{repo_spec}: not in the local Hugging Face cache and the Hub cannot be reached (offline, "
            f"HF_HUB_OFFLINE=1 or local_files_only). Download it once with network access, or pass a local "
            f"folder as weights=. ({e})"
        ) from e
    except RevisionNotFoundError as e:
        raise HubError(f"{repo_spec}: revision {revision!r} does not exist; check the branch, tag or commit") from e
    except RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_spec}: no such model repo on the Hub (or it is private: log in with `hf auth login`)"
        ) from e
    except EntryNotFoundError as e:
        raise HubError(
            f"{repo_spec}: the repo has no {CONFIG_NAME} or {WEIGHTS_NAME}; is it a coala-embed checkpoint?"
        ) from e
    except HfHubHTTPError as e:
        raise HubError(f"{repo_spec}: the Hub answered with an error: {e}") from e
    return Path(cfg).parent


def resolve_weights(weights: str | os.PathLike | None = None, *, local_files_only: bool | None = None) -> Path:
    """Return the local folder of a checkpoint.

    Order: ``weights`` (a folder, or a Hub repo id ``owner/name[@revision]``), then the
    ``COALA_EMBED_WEIGHTS`` environment variable (same meaning), then the checkpoint the wheel carries.

    Raises:
        CheckpointError: a folder without ``config.json``; HubError for Hub failures.
    """
    spec = weights if weights is not None else os.environ.get(ENV_WEIGHTS) or None
    if spec is None:
        return default_weights_dir()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: folder has no {CONFIG_NAME}; it is not a coala-embed checkpoint")
        return path
    text = str(spec)
    if _REPO_ID.match(text) and not path.exists() and not text.startswith((".", "/", "~")):
        return _download(text, local_files_only)
    raise CheckpointError(
        f"weights={text!r} is neither a folder holding {CONFIG_NAME} + {WEIGHTS_NAME} nor a Hub repo id 'owner/name[@revision]'"
    )


def load_state(folder: Path, config: CoalaConfig) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` from ``folder``, checking its sha256 when config.json records one."""
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS_NAME} is missing")
    expected = config.info.get("sha256")
    if expected and sha256_file(file) != expected:
        raise CheckpointError(
            f"{file}: sha256 does not match config.json; the file is corrupt or was replaced. Download it again."
        )
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({e}); download or export it again") from e


def load_model(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    optimize: bool = True,
    local_files_only: bool | None = None,
) -> CoalaModel:
    """Load a checkpoint into a :class:`CoalaModel` in eval mode.

    Args:
        weights: a folder with ``config.json`` + ``model.safetensors``, a Hub repo id
            ``owner/name[@revision]``, or None (``COALA_EMBED_WEIGHTS``, then the bundled checkpoint).
        device: ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        optimize: fold BatchNorm into the convolutions and use channels-last (same embeddings within 1e-5).
        local_files_only: passed to huggingface_hub for repo ids.

    Raises:
        CheckpointError: missing or corrupt files, wrong keys or shapes, sha256 mismatch.
        NoPretrainedWeightsError: no argument was given and the bundled checkpoint is not a trained one.
    """
    from .device import resolve_device

    folder = resolve_weights(weights, local_files_only=local_files_only)
    explicit = weights is not None or bool(os.environ.get(ENV_WEIGHTS))
    if not (folder / CONFIG_NAME).is_file():
        raise NoPretrainedWeightsError(
            f"no trained checkpoint is bundled in {folder}; pass weights= (a folder or a Hub repo id) or set "
            f"{ENV_WEIGHTS}"
        )
    config = CoalaConfig.load(folder / CONFIG_NAME)
    if not explicit and not config.trained:
        raise NoPretrainedWeightsError(
            f"the bundled checkpoint in {folder} holds untrained weights; pass weights= or set {ENV_WEIGHTS}"
        )
    model = CoalaModel(config)
    state = load_state(folder, config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME} does not match config.json: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}; it was written for another model or version"
        )
    bad = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if bad:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: wrong tensor shapes: {'; '.join(bad[:5])}")
    model.load_state_dict(state, strict=True)
    model.source = str(weights or os.environ.get(ENV_WEIGHTS) or folder)
    model.config_sha256 = sha256_file(folder / CONFIG_NAME)  # front-end and vocabulary: manifests record it too
    model.eval()
    if optimize:
        model.optimize()
    return model.to(resolve_device(device))


def save_pretrained(model: CoalaModel, folder: str | os.PathLike, *, trained: bool, info: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``: the one writer of checkpoints.

    Files are written to temporary names and renamed, so a crash never leaves a half-written checkpoint.
    ``config.json`` records the weights' sha256, checked by :func:`load_model`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    all_info = dict(model.config.info)
    all_info.update(info or {})

    def write_weights(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"format": "pt"})
        all_info["sha256"] = sha256_file(tmp)

    atomic_write(folder / WEIGHTS_NAME, write_weights)
    config = dataclasses.replace(model.config, trained=trained, info=all_info)
    atomic_write(folder / CONFIG_NAME, config.save)
    model.config = config
    return folder
