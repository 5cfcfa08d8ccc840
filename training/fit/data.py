"""What a training run draws its batches from: the corpus's log-mels in memory (or the authors' HDF5 files), the
windows of every training sound, and the second views of the invariance loss."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from ..corpus.patches import PATCH, window_starts
from .augment import Augment, augment
from .config import TrainConfig


class PatchData:
    """The corpus's log-mels in memory and vectorised patch gathering: no Python work per sample."""

    def __init__(self, corpus: Path, cfg: TrainConfig) -> None:
        if cfg.hdf5_train:
            return self._from_hdf5(cfg)
        self.logmel = torch.from_numpy(np.load(corpus / "logmel.npy"))  # [96, F] float16
        z = np.load(corpus / "index.npz")
        self.labels = torch.from_numpy(z["labels"].astype(np.float32))
        self.scaler_min = torch.from_numpy(z["scaler_min"])
        self.scaler_scale = torch.from_numpy(z["scaler_scale"])
        val = z["val"]
        offset, frames, signal = z["offset"], z["frames"], z["signal_frames"]
        best = z["max_energy_start"]  # absolute frame index
        self.vocabulary = json.loads((corpus / "vocabulary.json").read_text())
        train_ids = np.flatnonzero(~val)
        if cfg.patch_mode == "max_energy":
            starts, sound = best[train_ids], train_ids
        else:
            starts, sound = _windows(train_ids, offset, frames, signal)
        self.train_start = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        self.train_sound = torch.from_numpy(np.asarray(sound, dtype=np.int64))
        self._partners(corpus, train_ids, offset, frames, signal, best if cfg.patch_mode == "max_energy" else None)
        # each window's sound's first and last patch start: the range another crop of that sound is drawn from
        self.train_first = self.sound_first[self.train_sound]
        self.train_last = self.sound_last[self.train_sound]
        val_ids = np.flatnonzero(val)
        self.val_start = torch.from_numpy(best[val_ids].astype(np.int64))
        self.val_sound = torch.from_numpy(val_ids.astype(np.int64))
        self._ar = torch.arange(PATCH)

    def _partners(self, corpus: Path, train_ids, offset, frames, signal, best) -> None:
        """For every sound, the training sounds that share its raw tags (``manifest.csv``; itself included), as
        ``group_members[group_start[s] : group_start[s] + group_count[s]]``, and each sound's range of patch
        starts (``sound_first``, ``sound_last``). Without a manifest every sound is its own group."""
        n = len(offset)
        keys: list[str] = [str(i) for i in range(n)]
        manifest = corpus / "manifest.csv"
        if manifest.exists():
            with open(manifest, newline="") as f:
                keys = [r["raw_tags"] or str(i) for i, r in enumerate(csv.DictReader(f))]
        groups: dict[str, list[int]] = {}
        for i in train_ids:
            groups.setdefault(keys[i], []).append(int(i))
        start, count = np.zeros(n, np.int64), np.ones(n, np.int64)
        members: list[int] = []
        for ids in groups.values():
            for i in ids:
                start[i], count[i] = len(members), len(ids)
            members += ids
        train = set(int(i) for i in train_ids)
        for i in range(n):  # validation sounds (never drawn) point at themselves
            if i not in train:
                start[i] = len(members)
                members.append(i)
        self.group_start, self.group_count = torch.from_numpy(start), torch.from_numpy(count)
        self.group_members = torch.from_numpy(np.asarray(members, np.int64))
        hi = np.maximum(0, np.minimum(frames, np.maximum(signal, PATCH)) - PATCH)
        first = offset if best is None else best
        self.sound_first = torch.from_numpy(np.asarray(first, np.int64))
        self.sound_last = torch.from_numpy(np.asarray(offset + hi if best is None else best, np.int64))

    def _from_hdf5(self, cfg: TrainConfig) -> None:
        """The authors' HDF5 files (already scaled max-energy patches, multi-hot labels), laid end to end
        as one spectrogram so that the same gathering code serves them; the scaler is then the identity."""
        from ..corpus.patches import read_hdf5

        _, tr, ytr = read_hdf5(cfg.hdf5_train)
        _, va, yva = read_hdf5(cfg.hdf5_val)
        patches = np.concatenate([tr, va])
        self.logmel = torch.from_numpy(patches.transpose(1, 0, 2).reshape(patches.shape[1], -1).astype(np.float16))
        self.labels = torch.from_numpy(np.concatenate([ytr, yva]).astype(np.float32))
        self.scaler_min, self.scaler_scale = torch.zeros(PATCH), torch.ones(PATCH)
        vocab_file = cfg.vocabulary
        self.vocabulary = (
            json.loads(Path(vocab_file).read_text()) if vocab_file else [str(i) for i in range(self.labels.shape[1])]
        )
        if isinstance(self.vocabulary, dict):  # the original id2token_top_1000.json
            self.vocabulary = [self.vocabulary[str(i)] for i in range(len(self.vocabulary))]
        n_tr = len(tr)
        starts = torch.arange(len(patches)) * PATCH
        self.train_start = self.train_first = self.train_last = starts[:n_tr]
        self.train_sound = torch.arange(n_tr)
        n = len(patches)  # no raw tags here: every sound is its own group
        self.group_start, self.group_count, self.group_members = (
            torch.arange(n),
            torch.ones(n, dtype=torch.long),
            torch.arange(n),
        )
        self.sound_first = self.sound_last = starts
        self.val_start, self.val_sound = starts[n_tr:], torch.arange(n_tr, len(patches))
        self._ar = torch.arange(PATCH)

    def fingerprint(self) -> str:
        """Names this version of the corpus (its vocabulary, sounds, tag assignments and frames), so that a run
        never continues on a rebuilt corpus it was not trained on."""
        import hashlib

        h = hashlib.sha1(json.dumps([self.vocabulary, list(self.logmel.shape)]).encode())
        h.update(self.labels.cpu().numpy().tobytes())  # which sound has which tags, exactly
        return h.hexdigest()[:16]

    def to(self, device: torch.device) -> PatchData:
        """Move the spectrograms and indices to ``device`` (on a GPU the gathering then runs there too)."""
        for name in ("logmel", "labels", "scaler_min", "scaler_scale", "train_start", "train_first", "train_last",
                     "train_sound", "val_start", "val_sound", "_ar", "group_start", "group_count", "group_members",
                     "sound_first", "sound_last"):  # fmt: skip
            setattr(self, name, getattr(self, name).to(device))
        return self

    def raw(self, starts: torch.Tensor, width: int, last: torch.Tensor) -> torch.Tensor:
        """Unscaled log-mels ``[B, 96, width]`` from absolute frames ``starts``; frames past ``last`` (each
        sound's last frame) repeat it, so a window never reads the next sound."""
        frames = torch.minimum(starts[:, None] + torch.arange(width, device=starts.device), last[:, None])
        return self.logmel[:, frames].permute(1, 0, 2).float()

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Raw log-mel patches ``[B, 96, 96]`` -> scaled ``[B, 1, 96, 96]`` clamped to [0, 1] (the scaler was
        fitted on the training patches; validation clamps as the original)."""
        return (x * self.scaler_scale.to(x.device) + self.scaler_min.to(x.device)).clamp_(0, 1).unsqueeze(1)

    def patches(self, starts: torch.Tensor) -> torch.Tensor:
        """Scaled patches ``[B, 1, 96, 96]`` (mel x time) starting at absolute frames ``starts``."""
        return self.scale(self.logmel[:, starts[:, None] + self._ar].permute(1, 0, 2).float())


def _windows(
    ids: np.ndarray, offset: np.ndarray, frames: np.ndarray, signal: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every training window of the sounds ``ids``: its start frame and its sound's index."""
    starts, sound = [], []
    for i in ids:
        w = window_starts(int(frames[i]), int(signal[i]))
        starts.append(offset[i] + w)
        sound.append(np.full(len(w), i))
    return np.concatenate(starts), np.concatenate(sound)


def aug_seed(seed: int, epoch: int, step: int, stream: int = 1) -> int:
    """The seed of a step's augmentation draws (apart from the masking draws of ``spec_mask``); ``stream`` 2
    draws the second views."""
    return int(np.random.SeedSequence([seed, epoch, step, stream]).generate_state(1)[0])


def second_view(
    cfg: TrainConfig, data: PatchData, idx: torch.Tensor, starts: torch.Tensor, aug: Augment, seed: int, centres
) -> torch.Tensor:
    """The second view of the batch's windows ``idx`` (first views at ``starts``): scaled ``[B, 1, 96, 96]``, a
    crop of the same sound drawn uniformly over its patch starts (``cfg.view.crop``; else the same crop), or
    with probability ``cfg.view.partner`` a crop of another training sound with the same raw tags, augmented
    with ``aug`` on the CPU from draws seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    first, last = data.train_first[idx].cpu(), data.train_last[idx].cpu()
    crop = torch.full((len(idx),), bool(cfg.view.crop))
    if cfg.view.partner:
        sound = data.train_sound[idx].cpu()
        start, count = data.group_start[sound].cpu(), data.group_count[sound].cpu()
        pick = data.group_members.cpu()[start + (torch.rand(len(idx), generator=gen) * count).long()]
        use = torch.rand(len(idx), generator=gen) < cfg.view.partner
        sound = torch.where(use, pick, sound)
        first = torch.where(use, data.sound_first[sound].cpu(), first)
        last = torch.where(use, data.sound_last[sound].cpu(), last)
        crop |= use
    if crop.any():
        drawn = first + (torch.rand(len(idx), generator=gen) * (last - first + 1)).long().clamp_max(last - first)
        starts = torch.where(crop, drawn, starts.cpu())
    raw = data.raw(starts.to(data.logmel.device), PATCH + aug.extra_frames, (last + PATCH - 1).to(data.logmel.device))
    raw, _ = augment(raw.cpu(), data.labels[data.train_sound[idx]].cpu(), aug, gen, PATCH, centres)
    return data.scale(raw)
