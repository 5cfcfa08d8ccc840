"""Train AE-C, E-C or the CNN tagger on the corpus (docs/method.md sections 4-5), resumably.

    python -m training.fit training/configs/ae_c.json [--data DIR] [--out DIR] [--set key=value ...]
    torchrun --nproc-per-node 2 -m training.fit training/configs/ae_c.json   # DistributedDataParallel

Rerunning the same command continues from the last checkpoint (written atomically every few minutes).
Everything lands in ``OUT`` (default ``DATA/runs/<name>``): ``config.json`` (resolved), ``ckpt.pt``
(latest), ``best.pt`` (lowest validation loss), ``snapshot_epochN.pt`` (the encoders after each epoch),
``losses.csv`` (per epoch), ``steps.csv``, ``losses.png``.

The loop reads top-down in :func:`train`: :func:`setup` (devices, data, models, optimisers, resume), then per
epoch :func:`run_epoch` (the steps, with periodic :func:`checkpoint`) and :func:`end_epoch` (:func:`validate`,
snapshots, the loss log, the stopping rule), and :func:`finish`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch import nn

from coala_embed.device import cpu_name, resolve_precision
from coala_embed.files import atomic_write, write_text
from coala_embed.model import AudioEncoder, TagEncoder

from ..cli import parser, start
from ..corpus.patches import PATCH
from .augment import Augment, augment, drop_tags, mel_centres
from .checkpoints import model_config
from .config import ConfigError, TrainConfig, load_config
from .data import PatchData, aug_seed, second_view
from .losses import generalised_kl, nt_xent, tag_bce
from .networks import CNN, AudioDecoder, TagDecoder, ViewHead, use_fast_dropout

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ models
def build_models(cfg: TrainConfig, n_tags: int) -> dict[str, nn.Module]:
    models = _build_models(cfg, n_tags)
    if cfg.fast_dropout:
        for m in models.values():
            use_fast_dropout(m)
    return models


def _build_models(cfg: TrainConfig, n_tags: int) -> dict[str, nn.Module]:
    mc = model_config(cfg.to_dict(), n_tags)
    if cfg.variant == "cnn":
        return {"cnn": CNN(n_tags, mc)}
    models: dict[str, nn.Module] = {"audio_encoder": AudioEncoder(mc), "tag_encoder": TagEncoder(n_tags, mc)}
    if cfg.loss_weights.audio > 0:
        models["audio_decoder"] = AudioDecoder(mc.channels, mc.dropout)
    if cfg.loss_weights.tag > 0:
        models["tag_decoder"] = TagDecoder(n_tags, mc.embedding_dim, mc.dropout)
    if cfg.loss_weights.view > 0:
        models["view_head"] = ViewHead(mc.readout_dim(cfg.view.readout))
    return models


def build_optimizers(cfg: TrainConfig, models: dict[str, nn.Module]) -> list[torch.optim.Optimizer]:
    """Two optimisers as the paper (audio side, tag side); one for the CNN."""
    groups = (
        [["cnn"]]
        if "cnn" in models
        else [["audio_encoder", "audio_decoder", "view_head"], ["tag_encoder", "tag_decoder"]]
    )
    opts: list[torch.optim.Optimizer] = []
    for g in groups:
        params = [p for name in g if name in models for p in models[name].parameters()]
        if cfg.optimizer == "sgd":
            opts.append(torch.optim.SGD(params, lr=cfg.lr))
        elif cfg.weight_decay:
            opts.append(torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        else:
            opts.append(torch.optim.Adam(params, lr=cfg.lr))
    return opts


def learning_rate(cfg: TrainConfig, samples: int) -> float:
    """The learning rate after ``samples`` samples: ``lr`` times the factor of the last milestone passed."""
    lr = cfg.lr
    for at, factor in sorted(cfg.lr_milestones):
        if samples >= at:
            lr = cfg.lr * factor
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
    cfg: TrainConfig,
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
    view = False
    if x_view is not None and "view_head" in models:
        x_in, view = torch.cat([x_in, x_view]), True
    maxima = view and cfg.view.readout == "z+max"
    z_a, zd_a, *m_a = models["audio_encoder"](x_in, maxima=True) if maxima else models["audio_encoder"](x_in)
    z_t, zd_t = models["tag_encoder"](tags)
    out = {"contrastive": nt_xent(zd_a[:n], zd_t, cfg.tau)}
    if view:
        h = models["view_head"](torch.cat([z_a, *m_a], dim=1) if m_a else z_a)
        out["view"] = nt_xent(h[:n], h[n:], cfg.view.tau)
        z_a = z_a[:n]
    if "audio_decoder" in models:
        out["audio"] = generalised_kl(models["audio_decoder"](z_a), x)
    if "tag_decoder" in models:
        out["tag"] = tag_bce(models["tag_decoder"](z_t), tags)
    return out


def weighted(cfg: TrainConfig, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    if cfg.variant == "cnn":
        return losses["tag"]
    return sum(getattr(cfg.loss_weights, k) * v for k, v in losses.items())


def train_step(
    cfg: TrainConfig,
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
    """``TrainConfig.bf16`` (true, false or "auto") -> the precision that runs on ``device`` ("bf16" or "fp32")."""
    if isinstance(bf16, str) and bf16 != "auto":
        raise ValueError(f'bf16 must be true, false or "auto", got {bf16!r}')
    return resolve_precision("auto" if bf16 == "auto" else ("bf16" if bf16 else "fp32"), device)


def save_atomic(obj: dict, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@torch.no_grad()
def validate(cfg, models, data: PatchData, device, autocast) -> dict[str, float]:
    for m in models.values():
        m.eval()
    sums: dict[str, float] = {}
    n = 0
    bs = cfg.batch_size
    # Every validation patch, the last partial batch included (BN uses running statistics in eval mode, so
    # batch boundaries do not matter); the original dropped it, which leaves tiny validation sets empty.
    for i in range(0, len(data.val_start), bs):
        x = data.patches(data.val_start[i : i + bs]).to(device)
        t = data.labels[data.val_sound[i : i + bs]].to(device)
        if cfg.channels_last:
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


@dataclass
class Run:
    """One training run in progress: what :func:`setup` builds and the epoch functions share."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    data: PatchData
    models: dict[str, nn.Module]
    wrapped: dict[str, nn.Module]  # the models as the steps call them (DDP wrappers when world > 1)
    opts: list[torch.optim.Optimizer]
    autocast: Callable[[], Any]
    state: dict  # epoch, step, samples, history, best, seconds, corpus: what a checkpoint resumes from
    aug: Augment = field(default_factory=Augment)
    view_aug: Augment = field(default_factory=Augment)
    centres: Any = None  # mel band centres, when some augmentation shifts pitch
    steps_file: IO[str] | None = None
    t_start: float = 0.0
    last_ckpt: float = 0.0


def setup(cfg: TrainConfig, data_root: Path, out: Path) -> Run:
    """Devices, data, models and optimisers of a run; resumed from ``out/ckpt.pt`` when it exists."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    bf16 = train_precision(cfg.bf16, device) == "bf16"
    log.info("training in %s on %s", "bf16" if bf16 else "fp32", cpu_name() if device.type == "cpu" else device)
    if use_cuda and cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    data = PatchData(data_root / cfg.corpus, cfg)
    if device.type == "cuda":
        data.to(device)
    torch.manual_seed(cfg.seed)
    models = build_models(cfg, data.labels.shape[1])
    for m in models.values():
        m.to(device)
        if cfg.channels_last:
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    opts = build_optimizers(cfg, models)
    state = resume(out / "ckpt.pt", cfg, models, opts, device, data.fingerprint())
    if rank == 0:  # the settings (after the checkpoint was found to fit), with the precision that actually runs
        write_text(out / "config.json", json.dumps({**cfg.to_dict(), "precision": "bf16" if bf16 else "fp32"},
                                                   indent=2) + "\n")  # fmt: skip
    aug, view_aug = cfg.augment, cfg.view.augment
    use_view = "view_head" in models
    return Run(
        cfg=cfg,
        out=out,
        device=device,
        rank=rank,
        world=world,
        data=data,
        models=models,
        wrapped={k: nn.parallel.DistributedDataParallel(m) if world > 1 else m for k, m in models.items()},
        opts=opts,
        autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        state=state,
        aug=aug,
        view_aug=view_aug,
        centres=mel_centres() if aug.pitch or (use_view and view_aug.pitch) else None,
        steps_file=open(out / "steps.csv", "a", newline="") if rank == 0 else None,
        t_start=time.time() - state["seconds"],
        last_ckpt=time.time(),
    )


def resume(ckpt: Path, cfg: TrainConfig, models: dict, opts: list, device: torch.device, corpus_id: str) -> dict:
    """Load ``ckpt`` (models, optimisers, RNG) into the run and return its progress; a fresh progress without one.
    A checkpoint of another corpus version or architecture is refused."""
    state = {"epoch": 0, "step": 0, "samples": 0, "history": [], "best": math.inf, "seconds": 0.0, "corpus": corpus_id}
    if not ckpt.exists():
        return state
    saved = torch.load(ckpt, map_location=device, weights_only=True)  # our own file: tensors and plain containers
    stale = f"{ckpt} was trained on another version of corpus '{cfg.corpus}' or with other model settings"
    if saved["state"].get("corpus", corpus_id) != corpus_id:  # checkpoints before the fingerprint lack it
        raise SystemExit(
            f"{stale}: the corpus was rebuilt since. Start a new run (--set name=...) or remove {ckpt.parent}"
        )
    try:
        for k, m in models.items():
            m.load_state_dict(saved["models"][k])
    except RuntimeError as e:  # shapes differ: another vocabulary size or architecture
        raise SystemExit(f"{stale}; start a new run (--set name=...) or remove {ckpt.parent}.\n{e}") from None
    for o, s in zip(opts, saved["optims"]):
        o.load_state_dict(s)
    # map_location moved the RNG states to the device with the weights; they are set from CPU bytes
    torch.set_rng_state(saved["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in saved:  # dropout masks are drawn on the GPU there
        torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)
    state = {**saved["state"], "corpus": corpus_id}
    log.info("resumed from %s: epoch %d, step %d, %d samples", ckpt, state["epoch"], state["step"], state["samples"])
    return state


def checkpoint(run: Run) -> None:
    """Write ``ckpt.pt`` atomically: everything a resumed run needs to repeat this one exactly."""
    run.state["seconds"] = time.time() - run.t_start
    if run.rank == 0:
        cuda = {"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}
        save_atomic({"models": {k: m.state_dict() for k, m in run.models.items()},
                     "optims": [o.state_dict() for o in run.opts], "torch_rng": torch.get_rng_state(), **cuda,
                     "state": run.state, "config": json.dumps(run.cfg.to_dict())}, run.out / "ckpt.pt")  # fmt: skip
    run.last_ckpt = time.time()


def batch(run: Run, epoch: int, step: int, idx: torch.Tensor, starts: torch.Tensor) -> tuple:
    """The step's inputs: patches ``x`` (what the decoder reconstructs), their tags, the masked copy the encoder
    sees (or None) and the second views (or None), on the run's device. Augmentation and masking draw from
    generators seeded by (seed, epoch, step), so a resumed run draws the same."""
    cfg, data, device = run.cfg, run.data, run.device
    tags = data.labels[data.train_sound[idx]]
    if run.aug.active or cfg.tag_dropout:  # on the CPU
        gen = torch.Generator().manual_seed(aug_seed(cfg.seed, epoch, step))
        raw = data.raw(starts, PATCH + run.aug.extra_frames, data.train_last[idx] + PATCH - 1).cpu()
        raw, tags = augment(raw, tags.cpu(), run.aug, gen, PATCH, run.centres)
        tags = drop_tags(tags, cfg.tag_dropout, gen)
        x = data.scale(raw).to(device, non_blocking=True)
    else:
        x = data.patches(starts).to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x_in = None  # the masked copy (the product keeps x's memory format)
    if cfg.mask.freq or cfg.mask.time:
        gen = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) * 1_000_003 + step)
        x_in = spec_mask(x, cfg.mask.freq, cfg.mask.time, gen)
    x_view = None
    if "view_head" in run.models:
        x_view = second_view(cfg, data, idx, starts, run.view_aug, aug_seed(cfg.seed, epoch, step, 2), run.centres)
        x_view = x_view.to(device, non_blocking=True)
        if cfg.channels_last:
            x_view = x_view.contiguous(memory_format=torch.channels_last)
    return x, tags.to(device, non_blocking=True), x_in, x_view


def run_epoch(run: Run) -> tuple[dict[str, float], int]:
    """The steps of the current epoch from where it stands (a resumed run starts mid-epoch): the sums of each
    loss and the number of steps taken. Windows are shuffled and jittered from (seed, epoch); every
    ``checkpoint_minutes`` (or ``checkpoint_steps``) the run is checkpointed."""
    cfg, data, state = run.cfg, run.data, run.state
    epoch, bs, n = state["epoch"], cfg.batch_size, len(data.train_start)
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)[run.rank :: run.world]
    shift = torch.randint(0, cfg.jitter + 1, (n,), generator=g)[run.rank :: run.world]
    sums: dict[str, float] = {}
    first_step = state["step"]
    for step in range(first_step, steps_per_epoch(run)):
        idx = perm[step * bs : (step + 1) * bs].to(data.train_start.device)
        shifted = data.train_start[idx] + shift[step * bs : (step + 1) * bs].to(idx.device)
        starts = torch.minimum(shifted, data.train_last[idx])
        x, tags, x_in, x_view = batch(run, epoch, step, idx, starts)
        lr = learning_rate(cfg, state["samples"])
        for o in run.opts:
            for group in o.param_groups:
                group["lr"] = lr
        losses = train_step(cfg, run.wrapped, run.opts, x, tags, run.autocast, x_in, x_view)
        state["step"] = step + 1
        state["samples"] += bs * run.world
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if run.steps_file and step % 20 == 0:
            csv.writer(run.steps_file).writerow([epoch, step, state["samples"], round(time.time() - run.t_start, 1)]
                                                + [f"{float(v.detach()):.5f}" for v in losses.values()])  # fmt: skip
            run.steps_file.flush()
        if (
            (step + 1) % cfg.checkpoint_steps == 0
            if cfg.checkpoint_steps
            else (time.time() - run.last_ckpt > 60 * cfg.checkpoint_minutes)
        ):
            checkpoint(run)
    return sums, steps_per_epoch(run) - first_step


def steps_per_epoch(run: Run) -> int:
    return (run.cfg.epoch_samples or len(run.data.train_start)) // (run.cfg.batch_size * run.world)


def end_epoch(run: Run, sums: dict[str, float], steps: int) -> bool:
    """Validate, log the epoch, keep its encoders (``snapshot_epochN.pt``) and the best weights so far, move to
    the next epoch and checkpoint; true once the run is done (``max_samples``, or ``min_samples`` and validation
    stalled for ``patience`` epochs)."""
    cfg, state, out = run.cfg, run.state, run.out
    epoch = state["epoch"]
    val = validate(cfg, run.models, run.data, run.device, run.autocast)
    row = {"epoch": epoch, "samples": state["samples"], "seconds": round(time.time() - run.t_start)}
    row["lr"] = learning_rate(cfg, state["samples"] - 1)
    row.update({f"train_{k}": v / max(1, steps) for k, v in sums.items()})
    row.update({f"val_{k}": v for k, v in val.items()})
    state["history"].append(row)
    if run.rank == 0:
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in row.items()}))  # fmt: skip
        config = json.dumps(cfg.to_dict())
        # The encoders of every epoch, so that the exported one can be chosen by downstream validation accuracy
        encoders = {k: m.state_dict() for k, m in run.models.items() if k in ("audio_encoder", "tag_encoder", "cnn")}
        save_atomic({"models": encoders, "row": row, "config": config}, out / f"snapshot_epoch{epoch}.pt")
        if val["weighted"] < state["best"]:
            state["best"] = val["weighted"]
            models = {k: m.state_dict() for k, m in run.models.items()}
            save_atomic({"models": models, "row": row, "config": config}, out / "best.pt")
        write_losses(state["history"], out / "losses.csv")
        plot(state["history"], out / "losses.png")
    state["epoch"], state["step"] = epoch + 1, 0
    checkpoint(run)
    history = state["history"]
    best_epoch = min(range(len(history)), key=lambda i: history[i].get("val_weighted", math.inf))
    stalled = len(history) - 1 - best_epoch >= cfg.patience
    return state["samples"] >= cfg.max_samples or (state["samples"] >= cfg.min_samples and stalled)


def write_losses(history: list[dict], path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(history[-1]))
            w.writeheader()
            w.writerows(history)

    atomic_write(path, write)


def finish(run: Run) -> None:
    """Check that every DDP rank holds the same weights (``ddp_check.json``), then mark the run ``DONE``."""
    if run.world > 1:  # gather a checksum of each model and compare
        local = torch.stack(
            [torch.stack([p.double().sum() for p in m.parameters()]).sum() for m in run.models.values()]
        )
        local = local.to(run.device)
        gathered = [torch.zeros_like(local) for _ in range(run.world)]
        dist.all_gather(gathered, local)
        if run.rank == 0:
            agree = all(torch.equal(g, gathered[0]) for g in gathered)
            checks = {"world": run.world, "agree": agree, "checksums": [g.tolist() for g in gathered]}
            write_text(run.out / "ddp_check.json", json.dumps(checks) + "\n")
        dist.destroy_process_group()
    if run.steps_file:
        run.steps_file.close()
    if run.rank == 0:
        write_text(run.out / "DONE", json.dumps(run.state["history"][-1]) + "\n")


def train(cfg: TrainConfig, data_root: Path, out: Path) -> Path:
    """Run (or resume) one training; return its folder."""
    run = setup(cfg, data_root, out)
    done = False
    while not done:
        sums, steps = run_epoch(run)
        done = end_epoch(run, sums, steps)
    finish(run)
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("config", help="a JSON file in training/configs/")
    p.add_argument("--out", help="run folder (default: DATA/runs/<name>)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings, e.g. lr=5e-3")
    a, root = start(p, argv)
    try:
        cfg = load_config(a.config, a.set)
    except (ConfigError, OSError, json.JSONDecodeError) as e:
        p.error(f"{a.config}: {e}")
    out = Path(a.out) if a.out else root / "runs" / cfg.run_name
    try:
        train(cfg, root, out)
    except KeyboardInterrupt:
        log.warning("interrupted: the last checkpoint is in %s; rerun the same command to resume", out)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
