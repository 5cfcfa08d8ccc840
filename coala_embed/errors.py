"""The package's exceptions: every failure a user can cause derives from CoalaEmbedError."""


class CoalaEmbedError(Exception):
    """Base class of every error coala-embed raises on purpose."""


class AudioError(CoalaEmbedError, ValueError):
    """The audio (an array or a file) cannot be embedded; the message names the input and why."""


class CheckpointError(CoalaEmbedError):
    """A checkpoint is missing, corrupt, or does not match the model (keys, shapes, sha256)."""


class HubError(CheckpointError):
    """A checkpoint could not be fetched from the Hugging Face Hub (offline, unknown repo or revision)."""


class NoPretrainedWeightsError(CheckpointError):
    """No trained checkpoint is available as a default."""


class DeviceError(CoalaEmbedError, ValueError):
    """The requested device does not exist here (e.g. CUDA on a machine without a GPU)."""
