"""coala-embed: pretrained COALA audio embeddings (co-aligned autoencoders) for any audio file or array.

The public names below are imported on first use (PEP 562), so that ``import coala_embed`` and the command
line's ``--help`` start without loading torch; ``from coala_embed import get_embedding`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it
_LAZY = {
    "embed_file": "api",
    "embed_files": "api",
    "get_embedding": "api",
    "ClipConfig": "config",
    "CoalaConfig": "config",
    "FrontendConfig": "config",
    "ModelConfig": "config",
    "AudioError": "errors",
    "CheckpointError": "errors",
    "CoalaEmbedError": "errors",
    "DeviceError": "errors",
    "HubError": "errors",
    "NoPretrainedWeightsError": "errors",
    "load_model": "hub",
    "save_pretrained": "hub",
    "CoalaModel": "model",
}

__all__ = [
    "AudioError",
    "CheckpointError",
    "ClipConfig",
    "CoalaConfig",
    "CoalaEmbedError",
    "CoalaModel",
    "DeviceError",
    "FrontendConfig",
    "HubError",
    "ModelConfig",
    "NoPretrainedWeightsError",
    "__version__",
    "embed_file",
    "embed_files",
    "get_embedding",
    "load_model",
    "save_pretrained",
]

if TYPE_CHECKING:
    from .api import embed_file, embed_files, get_embedding
    from .config import ClipConfig, CoalaConfig, FrontendConfig, ModelConfig
    from .errors import AudioError, CheckpointError, CoalaEmbedError, DeviceError, HubError, NoPretrainedWeightsError
    from .hub import load_model, save_pretrained
    from .model import CoalaModel


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
