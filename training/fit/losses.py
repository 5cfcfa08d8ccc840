"""The paper's losses (docs/method.md section 4), computed in float32 whatever the autocast dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KL_EPS = 1e-5
CONTRASTIVE_EPS = 1e-5


def generalised_kl(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """I-divergence ``x (ln(x + eps) - ln(x_hat + eps)) + (x_hat - x)`` summed over time (last axis), then
    averaged over batch, channel and mel."""
    x_hat, x = x_hat.float(), x.float()
    d = x * (torch.log(x + KL_EPS) - torch.log(x_hat + KL_EPS)) + (x_hat - x)
    return d.sum(dim=-1).mean()


def tag_bce(probs: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between sigmoid outputs and the multi-hot tags.

    Computed outside autocast: CUDA autocast refuses ``binary_cross_entropy`` outright (even on float32 inputs),
    and the paper's loss is BCE on the sigmoid outputs, so ``BCEWithLogits`` would change the model."""
    with torch.autocast(probs.device.type, enabled=False):
        return F.binary_cross_entropy(probs.float(), tags.float())


def nt_xent(z_audio: torch.Tensor, z_tag: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """NT-Xent over the 2N concatenated projections: cosine similarities / tau, diagonal masked out, the
    positive of audio i is tag i and back; ``-ln(num / denom + 1e-5)`` averaged over the 2N rows.

    The identity mask is built on the similarities' own device (the original built it on the CPU and
    moved it with ``.cuda()``, which crashed CPU runs on CUDA-enabled torch builds).
    """
    z = torch.cat([z_audio, z_tag], dim=0).float()
    n = z_audio.shape[0]
    norm = z.norm(dim=1, keepdim=True)
    sim = (z @ z.t()) / (norm * norm.t())
    e = torch.exp(sim / tau) * (1 - torch.eye(2 * n, device=sim.device, dtype=sim.dtype))
    denom = e.sum(dim=1)
    num = torch.cat([torch.diagonal(e[:n, n:]), torch.diagonal(e[n:, :n])])
    return -torch.log(num / denom + CONTRASTIVE_EPS).mean()
