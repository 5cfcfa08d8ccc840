"""Train AE-C, E-C or the CNN tagger baseline on the corpus (docs/method.md sections 4-5), resumably.

    python -m training.fit training/configs/ae_c.json [--data DIR] [--out DIR] [--set key=value ...]
    torchrun --nproc-per-node 2 -m training.fit training/configs/ae_c.json   # DistributedDataParallel

Rerunning the same command continues from the last checkpoint (written atomically every few minutes).
Everything lands in ``OUT`` (default ``DATA/runs/<variant>``): ``config.json`` (resolved), ``ckpt.pt``
(latest), ``best.pt`` (lowest validation loss), ``losses.csv`` (per epoch), ``steps.csv``, ``losses.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from coala_embed.config import ModelConfig
from coala_embed.device import cpu_name, resolve_precision
from coala_embed.files import atomic_write, write_text
from coala_embed.model import AudioEncoder, TagEncoder

from ..cli import parser, start
from ..corpus.patches import PATCH, window_starts
from .augment import Augment, augment, drop_tags, mel_centres
from .checkpoints import model_config
from .losses import generalised_kl, nt_xent, tag_bce
from .networks import CNN, AudioDecoder, TagDecoder, ViewHead, use_fast_dropout

log = logging.getLogger(__name__)

DEFAULTS: dict = {
    "variant": "ae_c",  # ae_c | e_c | cnn
    # The encoders' dimensions (coala_embed.config.ModelConfig, less n_tags, which the corpus gives); export
    # writes them into the checkpoint's config.json
    "model": {k: v for k, v in dataclasses.asdict(ModelConfig()).items() if k != "n_tags"},
    # view: the audio-audio invariance loss (NT-Xent between two views of one sound, through ViewHead); 0: off
    "loss_weights": {"audio": 5.0, "tag": 5.0, "contrastive": 10.0, "view": 0.0},
    "tau": 0.1,
    # The second view of each training patch, seen by the audio encoder alone when loss_weights.view > 0: another
    # crop of the same sound (crop=true; false: the same crop) through its own augmentation (training/fit/augment.py);
    # the default is the signal augmentations plus, for half the views, another sound of the batch 6-20 dB under.
    "view": {
        "tau": 0.2,
        "crop": True,
        # probability that the second view comes from another training sound with the same raw tags (the same GM
        # program and register from another soundfont or pitch, variants of one game sound), when it has one
        "partner": 0.0,
        "augment": dataclasses.asdict(
            Augment(mix=0.5, mix_db=7.0, mix_below_db=13.0, gain_db=6.0, eq_db=6.0, pitch=2.0, reverb=0.3, noise=0.3)
        ),
    },
    "optimizer": "adam",  # adam | sgd (the paper: two plain SGD, lr 5e-3)
    "lr": 1e-3,
    # [[samples, factor], ...]: from that many samples on, lr * factor (a step decay; [] keeps lr constant)
    "lr_milestones": [],
    "batch_size": 128,  # per process
    "patch_mode": "multi",  # multi (windows over each sound, jittered) | max_energy (the original: one per sound)
    "jitter": 48,  # frames of random shift of multi-patch windows
    # Masking of the audio encoder's input (SpecAugment-style: per patch one band of up to `freq` mel bins and one
    # of up to `time` frames set to 0); the audio decoder still reconstructs the unmasked patch. 0: off (the paper).
    "mask": {"freq": 0, "time": 0},
    # On-the-fly augmentation of the training patches (training/fit/augment.py); all off: the paper's recipe
    "augment": dataclasses.asdict(Augment()),
    "tag_dropout": 0.0,  # probability of removing each positive tag of a training target (at least one stays)
    "weight_decay": 0.0,  # > 0: AdamW with this decoupled weight decay instead of Adam
    "max_samples": 1_500_000,  # stop after this many samples...
    "min_samples": 1_000_000,  # ...or once validation stops improving for `patience` epochs after this many
    "patience": 4,
    "checkpoint_minutes": 4.0,
    "checkpoint_steps": 0,  # > 0: checkpoint every this many steps instead of every checkpoint_minutes
    "epoch_samples": 0,  # samples per epoch (0: every training window once); smaller for quick comparisons
    "seed": 0,
    # bfloat16 autocast (losses in float32): "auto" uses it where it is native (CUDA, CPUs with AVX-512 BF16 or
    # AMX) and fp32 elsewhere, where bf16 training is about 100x slower; true on such a CPU warns and runs fp32
    "bf16": "auto",
    "channels_last": True,
    "fast_dropout": True,  # FastDropout: same dropout, mask from random bytes (bernoulli_ is slow on CPU)
    "corpus": "corpus",
    "hdf5_train": "",  # train on the authors' HDF5 files instead (dataset/{data,label,id})
    "hdf5_val": "",
    "vocabulary": "",  # with HDF5: the tag order, e.g. json/id2token_top_1000.json
    "threads": 0,  # 0: all cores
    "device": "auto",  # auto (CUDA when available) | cpu | cuda
    # CUDA only: deterministic cuDNN/cuBLAS kernels, so that a resumed run repeats an uninterrupted one bit for bit
    # (as on the CPU, where it always does); may be slower, off by default
    "deterministic": False,
}


# ------------------------------------------------------------------------------------------------ data
class PatchData:
    """The corpus's log-mels in memory and vectorised patch gathering: no Python work per sample."""

    def __init__(self, corpus: Path, cfg: dict) -> None:
        if cfg.get("hdf5_train"):
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
        if cfg["patch_mode"] == "max_energy":
            starts, first, last, sound = best[train_ids], best[train_ids], best[train_ids], train_ids
        else:
            starts, first, last, sound = [], [], [], []
            for i in train_ids:
                w = window_starts(int(frames[i]), int(signal[i]))
                hi = max(0, min(int(frames[i]), max(int(signal[i]), PATCH)) - PATCH)
                starts.append(offset[i] + w)
                first.append(np.full(len(w), offset[i]))
                last.append(np.full(len(w), offset[i] + hi))
                sound.append(np.full(len(w), i))
            starts, first, last, sound = map(np.concatenate, (starts, first, last, sound))
        self.train_start = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        # each window's sound's first and last patch start: the range another crop of that sound is drawn from
        self.train_first = torch.from_numpy(np.asarray(first, dtype=np.int64))
        self._partners(corpus, train_ids, offset, frames, signal, best if cfg["patch_mode"] == "max_energy" else None)
        self.train_last = torch.from_numpy(np.asarray(last, dtype=np.int64))
        self.train_sound = torch.from_numpy(np.asarray(sound, dtype=np.int64))
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

    def _from_hdf5(self, cfg: dict) -> None:
        """The authors' HDF5 files (already scaled max-energy patches, multi-hot labels), laid end to end
        as one spectrogram so that the same gathering code serves them; the scaler is then the identity."""
        from ..corpus.patches import read_hdf5

        _, tr, ytr = read_hdf5(cfg["hdf5_train"])
        _, va, yva = read_hdf5(cfg["hdf5_val"])
        patches = np.concatenate([tr, va])
        self.logmel = torch.from_numpy(patches.transpose(1, 0, 2).reshape(patches.shape[1], -1).astype(np.float16))
        self.labels = torch.from_numpy(np.concatenate([ytr, yva]).astype(np.float32))
        self.scaler_min, self.scaler_scale = torch.zeros(PATCH), torch.ones(PATCH)
        vocab_file = cfg.get("vocabulary")
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


# ------------------------------------------------------------------------------------------------ models
def build_models(cfg: dict, n_tags: int) -> dict[str, nn.Module]:
    models = _build_models(cfg, n_tags)
    if cfg.get("fast_dropout", True):
        for m in models.values():
            use_fast_dropout(m)
    return models


def _build_models(cfg: dict, n_tags: int) -> dict[str, nn.Module]:
    mc = model_config(cfg, n_tags)
    if cfg["variant"] == "cnn":
        return {"cnn": CNN(n_tags, mc)}
    models: dict[str, nn.Module] = {"audio_encoder": AudioEncoder(mc), "tag_encoder": TagEncoder(n_tags, mc)}
    if cfg["loss_weights"]["audio"] > 0:
        models["audio_decoder"] = AudioDecoder(mc.channels, mc.dropout)
    if cfg["loss_weights"]["tag"] > 0:
        models["tag_decoder"] = TagDecoder(n_tags, mc.embedding_dim, mc.dropout)
    if cfg["loss_weights"]["view"] > 0:
        models["view_head"] = ViewHead(mc.embedding_dim)
    return models


def build_optimizers(cfg: dict, models: dict[str, nn.Module]) -> list[torch.optim.Optimizer]:
    """Two optimisers as the paper (audio side, tag side); one for the CNN."""
    groups = (
        [["cnn"]]
        if "cnn" in models
        else [["audio_encoder", "audio_decoder", "view_head"], ["tag_encoder", "tag_decoder"]]
    )
    opts = []
    for g in groups:
        params = [p for name in g if name in models for p in models[name].parameters()]
        if cfg["optimizer"] == "sgd":
            opts.append(torch.optim.SGD(params, lr=cfg["lr"]))
        elif cfg.get("weight_decay"):
            opts.append(torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"]))
        else:
            opts.append(torch.optim.Adam(params, lr=cfg["lr"]))
    return opts


def learning_rate(cfg: dict, samples: int) -> float:
    """The learning rate after ``samples`` samples: ``lr`` times the factor of the last milestone passed."""
    lr = cfg["lr"]
    for at, factor in sorted(cfg["lr_milestones"]):
        if samples >= at:
            lr = cfg["lr"] * factor
    return lr


def spec_mask(x: torch.Tensor, freq: int, time: int, gen: torch.Generator) -> torch.Tensor:
    """``x`` ``[B, 1, mels, frames]`` with one random band of 0..``freq`` mel bins and one of 0..``time`` frames
    per patch set to 0 (vectorised; the draws come from ``gen``, so a resumed run masks the same way)."""
    b, _, n_mels, n_frames = x.shape

    def band(width: int, size: int) -> torch.Tensor:  # [b, size] True inside each patch's band
        w = torch.randint(0, width + 1, (b,), generator=gen)
        start = (torch.rand(b, generator=gen) * (size - w + 1)).long()
        ar = torch.arange(size)
        return (ar[None] >= start[:, None]) & (ar[None] < (start + w)[:, None])

    drop = band(freq, n_mels)[:, :, None] | band(time, n_frames)[:, None, :]
    return x * (~drop)[:, None].to(x.device, x.dtype)


def step_losses(
    cfg: dict,
    models: dict[str, nn.Module],
    x: torch.Tensor,
    tags: torch.Tensor,
    x_in: torch.Tensor | None = None,
    x_view: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The losses of one batch (unweighted); ``x_in`` (default ``x``) is what the audio encoder sees, ``x``
    what the audio decoder reconstructs; ``x_view`` (with a ``view_head``) is a second view of each patch, which
    the encoder sees in the same batch as ``x_in`` and the invariance loss pairs with it."""
    x_in = x if x_in is None else x_in
    if "cnn" in models:
        _, y = models["cnn"](x_in)
        return {"tag": tag_bce(y, tags)}
    n = len(x_in)
    view = x_view is not None and "view_head" in models
    if view:
        x_in = torch.cat([x_in, x_view])
    z_a, zd_a = models["audio_encoder"](x_in)
    z_t, zd_t = models["tag_encoder"](tags)
    out = {"contrastive": nt_xent(zd_a[:n], zd_t, cfg["tau"])}
    if view:
        h = models["view_head"](z_a)
        out["view"] = nt_xent(h[:n], h[n:], cfg["view"]["tau"])
        z_a = z_a[:n]
    if "audio_decoder" in models:
        out["audio"] = generalised_kl(models["audio_decoder"](z_a), x)
    if "tag_decoder" in models:
        out["tag"] = tag_bce(models["tag_decoder"](z_t), tags)
    return out


def weighted(cfg: dict, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    if cfg["variant"] == "cnn":
        return losses["tag"]
    return sum(cfg["loss_weights"][k] * v for k, v in losses.items())


def train_step(
    cfg: dict,
    models: dict[str, nn.Module],
    opts: list,
    x: torch.Tensor,
    tags: torch.Tensor,
    autocast,
    x_in: torch.Tensor | None = None,
    x_view: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One optimisation step: the weighted sum of the losses back-propagated once (equal to the original's
    separate backward passes of each weighted term), then every optimiser steps."""
    for o in opts:
        o.zero_grad(set_to_none=True)
    with autocast():
        losses = step_losses(cfg, models, x, tags, x_in, x_view)
    weighted(cfg, losses).backward()
    for o in opts:
        o.step()
    return losses


# ------------------------------------------------------------------------------------------------ loop
def train_precision(bf16: bool | str, device: torch.device) -> str:
    """``cfg["bf16"]`` (true, false or "auto") -> the precision that runs on ``device`` ("bf16" or "fp32")."""
    if isinstance(bf16, str) and bf16 != "auto":
        raise ValueError(f'bf16 must be true, false or "auto", got {bf16!r}')
    return resolve_precision("auto" if bf16 == "auto" else ("bf16" if bf16 else "fp32"), device)


def aug_seed(seed: int, epoch: int, step: int, stream: int = 1) -> int:
    """The seed of a step's augmentation draws (apart from the masking draws of ``spec_mask``); ``stream`` 2
    draws the second views."""
    return int(np.random.SeedSequence([seed, epoch, step, stream]).generate_state(1)[0])


def second_view(
    cfg: dict, data: PatchData, idx: torch.Tensor, starts: torch.Tensor, aug: Augment, seed: int, centres
) -> torch.Tensor:
    """The second view of the batch's windows ``idx`` (first views at ``starts``): scaled ``[B, 1, 96, 96]``, a
    crop of the same sound drawn uniformly over its patch starts (``cfg["view"]["crop"]``; else the same crop), or
    with probability ``cfg["view"]["partner"]`` a crop of another training sound with the same raw tags, augmented
    with ``aug`` on the CPU from draws seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    first, last = data.train_first[idx].cpu(), data.train_last[idx].cpu()
    crop = torch.full((len(idx),), bool(cfg["view"]["crop"]))
    if cfg["view"].get("partner", 0.0):
        sound = data.train_sound[idx].cpu()
        start, count = data.group_start[sound].cpu(), data.group_count[sound].cpu()
        pick = data.group_members.cpu()[start + (torch.rand(len(idx), generator=gen) * count).long()]
        use = torch.rand(len(idx), generator=gen) < cfg["view"]["partner"]
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


def save_atomic(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@torch.no_grad()
def validate(cfg, models, data: PatchData, device, autocast) -> dict[str, float]:
    for m in models.values():
        m.eval()
    sums: dict[str, float] = {}
    n = 0
    bs = cfg["batch_size"]
    # Every validation patch, the last partial batch included (BN uses running statistics in eval mode, so
    # batch boundaries do not matter); the original dropped it, which leaves tiny validation sets empty.
    for i in range(0, len(data.val_start), bs):
        x = data.patches(data.val_start[i : i + bs]).to(device)
        t = data.labels[data.val_sound[i : i + bs]].to(device)
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            losses = step_losses(cfg, models, x, t)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(x)
        n += len(x)
    for m in models.values():
        m.train()
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["weighted"] = float(weighted(cfg, {k: torch.tensor(v) for k, v in out.items()})) if out else math.nan
    return out


def plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k[6:] for h in history for k in h if k.startswith("train_")})
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        s = [h["samples"] for h in history]
        ax.plot(s, [h.get("train_" + k) for h in history], label="train")
        if any("val_" + k in h for h in history):  # the invariance loss has no validation value
            ax.plot(s, [h.get("val_" + k, math.nan) for h in history], label="validation")
        ax.set_title(k)
        ax.set_xlabel("samples")
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def train(cfg: dict, data_root: Path, out: Path) -> Path:
    """Run (or resume) one training; return the folder with ``best.pt``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {cfg['device']!r}")
    use_cuda = cfg["device"] == "cuda" or (cfg["device"] == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    bf16 = train_precision(cfg["bf16"], device) == "bf16"
    log.info("training in %s on %s", "bf16" if bf16 else "fp32", cpu_name() if device.type == "cpu" else device)
    if use_cuda and cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    out.mkdir(parents=True, exist_ok=True)
    data = PatchData(data_root / cfg["corpus"], cfg)
    if device.type == "cuda":
        data.to(device)
    torch.manual_seed(cfg["seed"])
    models = build_models(cfg, data.labels.shape[1])
    for m in models.values():
        m.to(device)
        if cfg["channels_last"]:
            m.to(memory_format=torch.channels_last)
    opts = build_optimizers(cfg, models)
    corpus_id = data.fingerprint()
    state = {"epoch": 0, "step": 0, "samples": 0, "history": [], "best": math.inf, "seconds": 0.0, "corpus": corpus_id}
    ckpt = out / "ckpt.pt"
    if ckpt.exists():  # our own file; weights_only keeps it to tensors and plain containers
        saved = torch.load(ckpt, map_location=device, weights_only=True)
        stale = f"{ckpt} was trained on another version of corpus '{cfg['corpus']}' or with other model settings"
        if saved["state"].get("corpus", corpus_id) != corpus_id:  # checkpoints before the fingerprint lack it
            raise SystemExit(f"{stale}: the corpus was rebuilt since. Start a new run (--set name=...) or remove {out}")
        try:
            for k, m in models.items():
                m.load_state_dict(saved["models"][k])
        except RuntimeError as e:  # shapes differ: another vocabulary size or architecture
            raise SystemExit(f"{stale}; start a new run (--set name=...) or remove {out}.\n{e}") from None
        for o, s in zip(opts, saved["optims"]):
            o.load_state_dict(s)
        # map_location moved the RNG states to the device with the weights; they are set from CPU bytes
        torch.set_rng_state(saved["torch_rng"].cpu())
        if device.type == "cuda" and "cuda_rng" in saved:  # dropout masks are drawn on the GPU there
            torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
        state = {**saved["state"], "corpus": corpus_id}
        log.info(
            "resumed from %s: epoch %d, step %d, %d samples", ckpt, state["epoch"], state["step"], state["samples"]
        )
    if rank == 0:  # the settings (after the checkpoint was found to fit), with the precision that actually runs
        write_text(out / "config.json", json.dumps({**cfg, "precision": "bf16" if bf16 else "fp32"}, indent=2) + "\n")
    wrapped = {k: nn.parallel.DistributedDataParallel(m) if world > 1 else m for k, m in models.items()}
    if device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    else:
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731

    def checkpoint() -> None:
        if rank == 0:
            save_atomic(
                {
                    "models": {k: m.state_dict() for k, m in models.items()},
                    "optims": [o.state_dict() for o in opts],
                    "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                    "state": state,
                    "config": json.dumps(cfg),
                },
                ckpt,
            )

    aug, view_aug = Augment(**cfg["augment"]), Augment(**cfg["view"]["augment"])
    use_view = "view_head" in models
    centres = mel_centres() if aug.pitch or (use_view and view_aug.pitch) else None
    bs, n = cfg["batch_size"], len(data.train_start)
    steps_per_epoch = (cfg["epoch_samples"] or n) // (bs * world)
    last_ckpt, t_start = time.time(), time.time() - state["seconds"]
    steps_file = open(out / "steps.csv", "a", newline="") if rank == 0 else None
    done = False
    while not done:
        epoch = state["epoch"]
        g = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch)
        perm = torch.randperm(n, generator=g)[rank::world]
        shift = torch.randint(0, cfg["jitter"] + 1, (n,), generator=g)[rank::world]
        sums: dict[str, float] = {}
        first_step = state["step"]  # after a resume, this process sees only part of the epoch
        for step in range(first_step, steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs].to(data.train_start.device)
            shifted = data.train_start[idx] + shift[step * bs : (step + 1) * bs].to(idx.device)
            starts = torch.minimum(shifted, data.train_last[idx])
            tags = data.labels[data.train_sound[idx]]
            if aug.active or cfg["tag_dropout"]:  # on the CPU, with draws seeded by (seed, epoch, step)
                gen = torch.Generator().manual_seed(aug_seed(cfg["seed"], epoch, step))
                last = data.train_last[idx] + PATCH - 1
                raw = data.raw(starts, PATCH + aug.extra_frames, last).cpu()
                raw, tags = augment(raw, tags.cpu(), aug, gen, PATCH, centres)
                tags = drop_tags(tags, cfg["tag_dropout"], gen)
                x = data.scale(raw).to(device, non_blocking=True)
            else:
                x = data.patches(starts).to(device, non_blocking=True)
            tags = tags.to(device, non_blocking=True)
            lr = learning_rate(cfg, state["samples"])
            for o in opts:
                for group in o.param_groups:
                    group["lr"] = lr
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            x_in = None  # the masked copy the audio encoder sees (the product keeps x's memory format)
            if cfg["mask"]["freq"] or cfg["mask"]["time"]:
                gen = torch.Generator().manual_seed((cfg["seed"] * 100_003 + epoch) * 1_000_003 + step)
                x_in = spec_mask(x, cfg["mask"]["freq"], cfg["mask"]["time"], gen)
            x_view = None
            if use_view:
                x_view = second_view(cfg, data, idx, starts, view_aug, aug_seed(cfg["seed"], epoch, step, 2), centres)
                x_view = x_view.to(device, non_blocking=True)
                if cfg["channels_last"]:
                    x_view = x_view.contiguous(memory_format=torch.channels_last)
            losses = train_step(cfg, wrapped, opts, x, tags, autocast, x_in, x_view)
            state["step"] = step + 1
            state["samples"] += bs * world
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if steps_file and step % 20 == 0:
                csv.writer(steps_file).writerow(
                    [epoch, step, state["samples"], round(time.time() - t_start, 1)]
                    + [f"{float(v.detach()):.5f}" for v in losses.values()]
                )
                steps_file.flush()
            if (
                (step + 1) % cfg["checkpoint_steps"] == 0
                if cfg["checkpoint_steps"]
                else time.time() - last_ckpt > 60 * cfg["checkpoint_minutes"]
            ):
                state["seconds"] = time.time() - t_start
                checkpoint()
                last_ckpt = time.time()
        val = validate(cfg, models, data, device, autocast)
        row = {"epoch": epoch, "samples": state["samples"], "seconds": round(time.time() - t_start)}
        row["lr"] = learning_rate(cfg, state["samples"] - 1)
        row.update({f"train_{k}": v / max(1, steps_per_epoch - first_step) for k, v in sums.items()})
        row.update({f"val_{k}": v for k, v in val.items()})
        state["history"].append(row)
        if rank == 0:
            log.info(
                "epoch %d: %s",
                epoch,
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            )
            # The encoders of every epoch, so that the exported one can be chosen by downstream validation accuracy.
            encoders = {k: m.state_dict() for k, m in models.items() if k in ("audio_encoder", "tag_encoder", "cnn")}
            save_atomic({"models": encoders, "row": row, "config": json.dumps(cfg)}, out / f"snapshot_epoch{epoch}.pt")
            if val["weighted"] < state["best"]:
                state["best"] = val["weighted"]
                save_atomic(
                    {"models": {k: m.state_dict() for k, m in models.items()}, "row": row, "config": json.dumps(cfg)},
                    out / "best.pt",
                )

            def write_losses(tmp: Path) -> None:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(state["history"][-1]))
                    w.writeheader()
                    w.writerows(state["history"])

            atomic_write(out / "losses.csv", write_losses)
            plot(state["history"], out / "losses.png")
        state["epoch"], state["step"] = epoch + 1, 0
        state["seconds"] = time.time() - t_start
        best_epoch = min(range(len(state["history"])), key=lambda i: state["history"][i].get("val_weighted", math.inf))
        stalled = len(state["history"]) - 1 - best_epoch >= cfg["patience"]
        done = state["samples"] >= cfg["max_samples"] or (state["samples"] >= cfg["min_samples"] and stalled)
        checkpoint()
        last_ckpt = time.time()
    if world > 1:  # every rank must hold the same weights: gather a checksum of each and compare
        local = torch.stack([sum(p.double().sum() for p in m.parameters()) for m in models.values()]).to(device)
        gathered = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(gathered, local)
        if rank == 0:
            agree = all(torch.equal(g, gathered[0]) for g in gathered)
            write_text(
                out / "ddp_check.json",
                json.dumps({"world": world, "agree": agree, "checksums": [g.tolist() for g in gathered]}) + "\n",
            )
        dist.destroy_process_group()
    if rank == 0:
        write_text(out / "DONE", json.dumps(state["history"][-1]) + "\n")
    return out


def _merge(base: dict, update: dict) -> None:
    """``base.update(update)``, recursing into dicts both hold, so a file that sets some loss weights keeps the
    defaults of the others."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _read_config(path: Path) -> dict:
    """A config file's settings; ``"extends": "FILE"`` (relative to it) starts from that file's."""
    own = json.loads(path.read_text())
    parent = own.pop("extends", None)
    if parent is None:
        return own
    base = _read_config(path.parent / parent)
    _merge(base, own)
    return base


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """Defaults, then the config file (and the files it ``extends``), then ``key=value`` overrides (values parsed
    as JSON when they can be). ``training/configs/experiments/`` holds one file per recipe of the results log."""
    cfg = json.loads(json.dumps(DEFAULTS))
    _merge(cfg, _read_config(Path(path)))
    for item in overrides:
        key, _, value = item.partition("=")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        if leaf not in target:
            raise SystemExit(f"unknown setting {key!r}; known: {sorted(cfg)}")
        target[leaf] = parsed
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("config", help="a JSON file in training/configs/")
    p.add_argument("--out", help="run folder (default: DATA/runs/<variant>)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings, e.g. lr=5e-3")
    a, root = start(p, argv)
    cfg = load_config(a.config, a.set)
    out = Path(a.out) if a.out else root / "runs" / cfg.get("name", cfg["variant"])
    try:
        train(cfg, root, out)
    except KeyboardInterrupt:
        log.warning("interrupted: the last checkpoint is in %s; rerun the same command to resume", out)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
