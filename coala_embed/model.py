"""The COALA audio and tag encoders (docs/method.md section 3), built from config only; no I/O."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from .config import CoalaConfig, ModelConfig


def through_blocks(layers: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` through the encoder's ``layers`` (the training layout or the folded one), with each channel's maximum
    over the feature map after every block's ReLU but the last's: ``(z [B, 1152], maxima [B, 128 * (n_blocks -
    1)])``, the columns that the ``z+max`` readout puts after z. The maxima are the same whichever kernel takes
    them: amax on fp32 maps without gradient, the pooling kernel otherwise (bf16 maps, and training, where its
    backward is 5x amax's speed)."""
    maxima = []
    for layer in layers:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            fp32 = x.dtype == torch.float32 and not x.requires_grad
            maxima.append(x.amax(dim=(2, 3)) if fp32 else F.adaptive_max_pool2d(x, 1).flatten(1))
    return torch.flatten(x, 1), torch.cat(maxima[:-1], dim=1)


class AudioEncoder(nn.Module):
    """Five Conv(k4, s2, p1) + BN + ReLU + Dropout blocks, ``[B, 1, 96, 96] -> z [B, 1152]``, and the
    bias-free projection ``fc_audio`` to ``z_d [B, 1152]``. Module indices match the original state_dict
    (``audio_encoder.{0,4,8,12,16}`` convolutions, ``.{1,5,...}`` BatchNorm, ``fc_audio.0``)."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for _ in range(cfg.n_blocks):
            layers += [
                nn.Conv2d(in_ch, cfg.channels, kernel_size=4, stride=2, padding=1),
                nn.BatchNorm2d(cfg.channels),
                nn.ReLU(),
                nn.Dropout(cfg.dropout),
            ]
            in_ch = cfg.channels
        layers.append(nn.Flatten())  # C-major: index = c * 9 + h * 3 + w, as the original
        self.audio_encoder = nn.Sequential(*layers)
        self.fc_audio = nn.Sequential(
            nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False), nn.Dropout(cfg.dropout)
        )

    def forward(self, x: torch.Tensor, maxima: bool = False) -> tuple[torch.Tensor, ...]:
        """Return ``(z, z_d)`` for scaled patches ``x [B, 1, 96, 96]`` (H = mel, W = time); with ``maxima``,
        ``(z, z_d, m)`` where ``m [B, 128 * (n_blocks - 1)]`` holds the channel maxima of every block but the
        last (after its ReLU): the columns that the ``z+max`` readout puts after z (:meth:`CoalaModel.forward`)."""
        if not maxima:
            z = self.audio_encoder(x)
            return z, self.fc_audio(z)
        z, m = through_blocks(self.audio_encoder, x)
        return z, self.fc_audio(z), m


class TagEncoder(nn.Module):
    """Multi-hot tags ``[B, n_tags] -> z [B, 1152]`` (three Linear + BN1d + ReLU + Dropout blocks) and the
    bias-free projection ``fc_tag`` to ``z_d``; indices match the original state_dict."""

    def __init__(self, n_tags: int, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        dims = [n_tags, 512, 512, cfg.embedding_dim]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(), nn.Dropout(cfg.dropout)]
        self.tag_encoder = nn.Sequential(*layers)
        self.fc_tag = nn.Sequential(
            nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False), nn.Dropout(cfg.dropout)
        )

    def forward(self, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.tag_encoder(tags)
        return z, self.fc_tag(z)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d equal to ``bn(conv(x))`` with BN in eval mode (running statistics), computed in float64."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("fold_conv_bn needs a BatchNorm2d that tracks running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    pair = lambda v: cast(tuple[int, int], v)  # noqa: E731 (Conv2d stores 2-tuples)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, pair(conv.kernel_size), pair(conv.stride),
                      pair(conv.padding), bias=True)  # fmt: skip
    w = conv.weight.double() * scale[:, None, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    b = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    fused.weight.data.copy_(w.float())
    assert fused.bias is not None  # built with bias=True
    fused.bias.data.copy_(b.float())
    return fused.to(conv.weight.device)


def folded_encoder(encoder: AudioEncoder) -> nn.Sequential:
    """Inference copy of ``encoder.audio_encoder`` with BatchNorm folded in and dropout removed."""
    seq = encoder.audio_encoder
    layers: list[nn.Module] = []
    for i, m in enumerate(seq):
        if isinstance(m, nn.Conv2d):
            bn = seq[i + 1]
            assert isinstance(bn, nn.BatchNorm2d)
            layers += [fold_conv_bn(m, bn), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers).eval()


class CoalaModel(nn.Module):
    """Inference model: the per-time-column min-max scaler, the audio encoder and, when the checkpoint has
    a vocabulary, the tag encoder of the co-aligned space.

    ``forward`` maps unscaled log-mel patches ``[B, 96, 96]`` to their readout ``[B, config.readout_dim]``: the
    embeddings z ``[B, 1152]``, followed with ``config.clip.readout == "z+max"`` by each channel's maximum over
    the feature map of every block but the last (``[B, 4 * 128]``).
    """

    scaler_min: torch.Tensor
    scaler_scale: torch.Tensor
    source: str | None = None  # where load_model found the weights (folder or Hub repo)
    config_sha256: str | None = None  # sha256 of the checkpoint's config.json, when load_model read one

    def __init__(self, config: CoalaConfig) -> None:
        super().__init__()
        self.config = config
        frames = config.frontend.patch_frames
        self.audio = AudioEncoder(config.model)
        self.tag = TagEncoder(config.model.n_tags, config.model) if config.model.n_tags else None
        # x_scaled[m, t] = x[m, t] * scale[t] + min[t]: the original scaler works per time column (docs/method.md 1.5).
        self.register_buffer("scaler_min", torch.zeros(frames))
        self.register_buffer("scaler_scale", torch.ones(frames))
        self._fast: nn.Sequential | None = None
        self._channels_last = False

    def scale(self, patches: torch.Tensor) -> torch.Tensor:
        """Apply the min-max scaler per time column; no clamping, as the original ``encode.py``."""
        return patches * self.scaler_scale + self.scaler_min

    def optimize(self, fold_bn: bool = True, channels_last: bool = True) -> CoalaModel:
        """Switch to eval mode and the fast path: BN folded into the convolutions, channels-last memory.

        Embeddings stay within 1e-5 of the unfolded model (``tests/test_model.py``).
        """
        self.eval()
        self._fast = folded_encoder(self.audio) if fold_bn else None
        self._channels_last = channels_last
        if self._fast is not None and channels_last:
            self._fast = self._fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    def _apply(self, fn, *args, **kwargs):  # keep the folded copy on the same device as the weights
        out = super()._apply(fn, *args, **kwargs)
        if self._fast is not None:
            self._fast._apply(fn, *args, **kwargs)
        return out

    def forward(self, patches: torch.Tensor, readout: str | None = None) -> torch.Tensor:
        """``readout`` overrides ``config.clip.readout`` (``"z"``: the patch embeddings alone, without the work of
        the block maxima)."""
        x = self.scale(patches).unsqueeze(1)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        layers = self.audio.audio_encoder if self.training or self._fast is None else self._fast
        if (readout or self.config.clip.readout) == "z":
            return torch.flatten(layers(x), 1)
        z, maxima = through_blocks(layers, x)
        return torch.cat([z, maxima], dim=1)

    def project_audio(self, z: torch.Tensor) -> torch.Tensor:
        """Audio projection head: z ``[B, 1152]`` -> z_d ``[B, 1152]`` in the co-aligned space."""
        return self.audio.fc_audio(z)

    def tag_projection(self, tags: torch.Tensor) -> torch.Tensor:
        """Multi-hot tags ``[B, n_tags]`` -> tag projection z_d ``[B, 1152]``."""
        if self.tag is None:
            from .errors import CheckpointError

            raise CheckpointError("this checkpoint has no tag encoder (config.model.n_tags is 0)")
        return self.tag(tags)[1]

    @property
    def device(self) -> torch.device:
        return self.scaler_min.device
