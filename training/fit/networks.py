"""Training-only networks (docs/method.md section 3): AudioDecoder, TagDecoder and the CNN tagger baseline.

The encoders come from ``coala_embed.model``, so training and inference share one definition."""

from __future__ import annotations

import torch
from torch import nn

from coala_embed.config import ModelConfig
from coala_embed.model import AudioEncoder, TagEncoder

__all__ = [
    "CNN", "AudioDecoder", "AudioEncoder", "FastDropout", "TagDecoder", "TagEncoder", "ViewHead", "use_fast_dropout",
]  # fmt: skip


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` as one ``addcmul`` kernel each way (bit-identical to the two products: one rounding of
    the exact product either way); the boolean mask is what backward keeps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale), None, None


class FastDropout(nn.Dropout):
    """Element-wise dropout as ``nn.Dropout`` (same p, same 1/(1-p) scaling, same eval identity), with the
    mask drawn from random 64-bit words split into bytes: on the CPU ``bernoulli_`` took 30% of an AE-C step.
    p is quantised to 1/256 (0.25 exactly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        # The full int64 range: a plain random_() stops at 2**63 - 1, which leaves every 8th byte below 128.
        bits = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        u8 = bits.view(torch.uint8)[:n]
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = x.shape
            u8 = u8.view(b, h, w, c).permute(0, 3, 1, 2)  # same layout as x, so the product stays channels-last
        else:
            u8 = u8.view(x.shape)
        threshold = round(self.p * 256)
        return _MaskedScale.apply(x, u8 >= threshold, 256.0 / (256 - threshold))


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Swap every ``nn.Dropout`` inside ``module`` for :class:`FastDropout` (no parameters change)."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)
    return module


class AudioDecoder(nn.Module):
    """z ``[B, 1152]`` -> reconstruction ``[B, 1, 96, 96]`` in (0, 1); indices match the original
    (0 unflatten, 1 dropout, then ConvTranspose/BN/ReLU/Dropout blocks, no dropout in block 4,
    17 ConvTranspose to one channel, 18 BatchNorm2d(1), 19 Sigmoid)."""

    def __init__(self, channels: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Unflatten(1, (channels, 3, 3)), nn.Dropout(dropout)]
        for block in range(4):
            layers += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.BatchNorm2d(channels), nn.ReLU()]
            if block < 3:
                layers.append(nn.Dropout(dropout))
        layers += [nn.ConvTranspose2d(channels, 1, 4, 2, 1), nn.BatchNorm2d(1), nn.Sigmoid()]
        self.audio_decoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.audio_decoder(z)


class TagDecoder(nn.Module):
    """z ``[B, 1152]`` -> tag probabilities ``[B, n_tags]``; no dropout after the second block, BN before the
    sigmoid, as the original."""

    def __init__(self, n_tags: int, dim: int = 1152, dropout: float = 0.25) -> None:
        super().__init__()
        self.tag_decoder = nn.Sequential(
            nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
            nn.Linear(512, n_tags), nn.BatchNorm1d(n_tags), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.tag_decoder(z)


class ViewHead(nn.Module):
    """The projection head of the audio-audio invariance loss (SimCLR's): z ``[B, 1152]`` (or z+max ``[B, 1664]``,
    ``view.readout``) -> ``[B, out]`` through Linear, BatchNorm, ReLU, Linear. Training only: the loss pulls two
    views of one sound together in this space, so z keeps what the head discards, and the head is not exported."""

    def __init__(self, dim: int = 1152, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)


class CNN(nn.Module):
    """The supervised tagger baseline: the AudioEncoder's conv stack (key prefix ``encoder``), then
    Linear(1152, 1152) + ReLU + Linear(1152, n_tags) + Sigmoid. Returns ``(z, y)``."""

    def __init__(self, n_tags: int, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.encoder = AudioEncoder(cfg).audio_encoder
        dim = cfg.embedding_dim
        self.fc = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, n_tags), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.fc(z)
