"""On-the-fly augmentation of training patches, in the log-mel domain (before the min-max scaler).

The corpus stores each sound's log-mel (natural log of mel magnitudes), so every augmentation is written as what
it does to a magnitude spectrogram, vectorised over the batch, with draws from one seeded generator (a resumed run
augments exactly as an uninterrupted one):

* ``mix``: with this probability a patch is mixed with another patch of the batch at a random level ratio of
  up to ``mix_db`` dB either way, shifted down by ``mix_below_db`` (a background: ``mix_db=7, mix_below_db=13``
  puts the other patch 6-20 dB under), magnitudes adding (``logaddexp``); the tag target is the union of both
  tag sets.
* ``gain_db``: a random gain of up to this many dB either way.
* ``eq_db``: a random equaliser: a spectral tilt plus one bell of up to this many dB either way, and with
  probability 1/4 a low-pass or high-pass slope.
* ``pitch``: speed change by resampling of up to this many semitones either way: the spectrum moves along the
  mel axis by the frequency ratio and time is stretched by the same ratio (bilinear interpolation).
* ``reverb``: with this probability, a synthetic room: each band's power is convolved with an exponential decay
  (RT60 0.2-1.2 s) and added at a random wet level.
* ``noise``: with this probability, a noise floor 15-45 dB under the patch's peak, randomly coloured.

All are off by default (the paper's recipe); ``training/configs/*.json`` turn them on. The cost is measured in
``bench/train_speed.py`` (``--augment``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from coala_embed.config import HOP_LENGTH, PATCH_FRAMES, SAMPLE_RATE, FrontendConfig

DB = math.log(10.0) / 20.0  # one dB of magnitude in natural-log units


@dataclass(frozen=True)
class Augment:
    """The augmentation settings of a run (``TrainConfig.augment`` and ``view.augment``); see the module docstring."""

    mix: float = 0.0
    mix_db: float = 6.0
    mix_below_db: float = 0.0
    gain_db: float = 0.0
    eq_db: float = 0.0
    pitch: float = 0.0
    reverb: float = 0.0
    noise: float = 0.0

    @property
    def active(self) -> bool:
        return any((self.mix, self.gain_db, self.eq_db, self.pitch, self.reverb, self.noise))

    @property
    def extra_frames(self) -> int:
        """Frames to gather beyond the patch so that a faster playback (up to +``pitch`` semitones) has input."""
        return math.ceil(PATCH_FRAMES * (2 ** (self.pitch / 12) - 1)) if self.pitch else 0


def mel_centres(cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Centre frequencies (Hz) of the front-end's Slaney mel bands."""
    import librosa

    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.fmax, htk=False)[1:-1]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def resample_patches(x: torch.Tensor, ratio: torch.Tensor, centres: np.ndarray, frames: int) -> torch.Tensor:
    """Play each patch ``ratio`` times faster: ``x`` ``[B, mels, T]`` (T >= ``frames`` * max ratio) ->
    ``[B, mels, frames]``; band m takes the value at frequency ``f_m / ratio`` and frame t the value at ``t * ratio``."""
    b, n_mels, width = x.shape
    f = torch.from_numpy(centres).float()
    src_f = f[None, :] / ratio[:, None]  # [B, mels] source frequency of each output band
    pos = torch.from_numpy(np.interp(src_f.numpy(), centres, np.arange(n_mels))).float()  # fractional band index
    t = torch.arange(frames).float()[None] * ratio[:, None]  # [B, frames] source frame
    grid_y = (2 * pos + 1) / n_mels - 1  # align_corners=False coordinates
    grid_x = (2 * t + 1) / width - 1
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]


def reverberate(x: torch.Tensor, rt60: torch.Tensor, wet_db: torch.Tensor) -> torch.Tensor:
    """Each band's power convolved with ``exp(-6.9 t / rt60)`` (a diffuse tail, causal), added ``wet_db`` below."""
    b, n_mels, t = x.shape
    frame = HOP_LENGTH / SAMPLE_RATE
    k = int(math.ceil(float(rt60.max()) / frame))
    lags = torch.arange(1, k + 1).float() * frame
    kernel = torch.exp(-6.9 * lags[None] / rt60[:, None])  # [B, K], power decay (-60 dB at rt60)
    kernel = kernel / kernel.sum(1, keepdim=True)
    power = torch.exp(2 * (x - x.amax(dim=(1, 2), keepdim=True)))  # normalised to the peak for range
    padded = F.pad(power.reshape(1, b * n_mels, t), (k, 0))
    weight = kernel.flip(1).repeat_interleave(n_mels, 0)[:, None]  # [B*mels, 1, K]
    tail = F.conv1d(padded, weight, groups=b * n_mels)[..., :t].reshape(b, n_mels, t)
    wet = torch.exp(2 * DB * wet_db)[:, None, None]
    return x + 0.5 * torch.log1p(wet * tail / power.clamp_min(1e-30))


def augment(
    x: torch.Tensor, tags: torch.Tensor, aug: Augment, gen: torch.Generator, frames: int = PATCH_FRAMES, centres=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment raw log-mel patches ``x`` ``[B, mels, frames + aug.extra_frames]`` and their tag targets
    ``[B, n_tags]``; return ``[B, mels, frames]`` and the new targets. CPU tensors; draws come from ``gen``."""
    b, n_mels, _ = x.shape
    if aug.pitch:
        ratio = 2 ** (_uniform(b, -aug.pitch, aug.pitch, gen) / 12)
        x = resample_patches(x, ratio, mel_centres() if centres is None else centres, frames)
    else:
        x = x[..., :frames]
    if aug.mix:
        partner = torch.randperm(b, generator=gen)
        mixed = torch.rand(b, generator=gen) < aug.mix
        level = (_uniform(b, -aug.mix_db, aug.mix_db, gen) - aug.mix_below_db) * DB
        both = torch.logaddexp(x, x[partner] + level[:, None, None])
        x = torch.where(mixed[:, None, None], both, x)
        tags = torch.where(mixed[:, None], torch.maximum(tags, tags[partner]), tags)
    if aug.gain_db:
        x = x + (_uniform(b, -aug.gain_db, aug.gain_db, gen) * DB)[:, None, None]
    if aug.eq_db:
        m = torch.linspace(-1, 1, n_mels)[None]
        tilt = _uniform(b, -1, 1, gen)[:, None] * m
        centre, width = _uniform(b, -1, 1, gen)[:, None], _uniform(b, 0.1, 0.5, gen)[:, None]
        bell = _uniform(b, -1, 1, gen)[:, None] * torch.exp(-(((m - centre) / width) ** 2))
        cut, kind = _uniform(b, -0.5, 0.8, gen)[:, None], torch.rand(b, generator=gen)[:, None]
        slope = -4 * torch.where(
            kind < 0.125, (m - cut).clamp_min(0), torch.where(kind < 0.25, (-m - cut).clamp_min(0), 0 * m)
        )
        x = x + (aug.eq_db * DB * (tilt + bell + slope))[:, :, None]
    if aug.reverb:
        on = torch.rand(b, generator=gen) < aug.reverb
        rt60, wet = _uniform(b, 0.2, 1.2, gen), _uniform(b, -12, 0, gen)
        if on.any():
            x = torch.where(on[:, None, None], reverberate(x, rt60, wet), x)
    if aug.noise:
        on = torch.rand(b, generator=gen) < aug.noise
        floor = x.amax(dim=(1, 2)) - _uniform(b, 15, 45, gen) * DB
        colour = _uniform(b, -10, 10, gen)[:, None] * DB * torch.linspace(-1, 1, n_mels)[None]
        fluct = 0.5 * torch.randn(x.shape, generator=gen)
        noisy = torch.logaddexp(x, floor[:, None, None] + colour[:, :, None] + fluct)
        x = torch.where(on[:, None, None], noisy, x)
    return x, tags


def drop_tags(tags: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Tag dropout: each positive tag is removed with probability ``p``; a sound keeps at least one tag."""
    if not p:
        return tags
    draw = torch.rand(tags.shape, generator=gen)
    dropped = tags * (draw >= p)
    # a sound that lost every tag keeps one of its own, drawn at random
    one = F.one_hot((tags * (draw + 1)).argmax(1), tags.shape[1]).to(tags.dtype) * tags
    empty = dropped.sum(1) == 0
    return torch.where(empty[:, None], one, dropped)
