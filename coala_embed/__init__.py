"""coala-embed: pretrained COALA audio embeddings (co-aligned autoencoders) for any audio file or array."""

__version__ = "0.1.0"

from .api import embed_file, embed_files, get_embedding  # noqa: E402
from .config import CoalaConfig, FrontendConfig, ModelConfig  # noqa: E402
from .errors import AudioError, CheckpointError, CoalaEmbedError, DeviceError, HubError, NoPretrainedWeightsError  # noqa: E402
from .hub import load_model, save_pretrained  # noqa: E402
from .model import CoalaModel  # noqa: E402

__all__ = [
    "AudioError",
    "CheckpointError",
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
