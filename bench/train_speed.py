"""Training throughput: samples/s of one AE-C step (both autoencoders, three losses, batch 128), plain fp32
with contiguous memory versus ours (bf16 autocast where the CPU has it natively, else fp32; channels-last;
FastDropout), measured in one run; with ``--augment``, the cost of on-the-fly augmentation (training/fit/augment.py)
against that step; with ``--view``, the cost of the audio-audio invariance loss (a second view of every patch
through the encoder, ``loss_weights.view``) against that step, and of the same loss on z and the block maxima
(``view.readout=z+max``) against it on z.

    python bench/train_speed.py [--variant ae_c|e_c|cnn] [--steps 12] [--batch-size 128] [--device cpu|cuda]
    python bench/train_speed.py --augment '{"mix": 0.5, "gain_db": 6, "eq_db": 6, "pitch": 2, "reverb": 0.3, "noise": 0.3}'
    python bench/train_speed.py --view --variant e_c
    python bench/train_speed.py --parts      # the AE-C step's time split: audio encoder, decoders, tag branch

Every line names the CPU and whether bfloat16 is native on it: on a CPU without AVX-512 BF16 or AMX the bf16
lines run oneDNN's reference code and are many times slower. On CUDA the same step runs under CUDA autocast
(bf16); "plain" keeps PyTorch's defaults there.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from coala_embed.device import bf16_native, cpu_name  # noqa: E402
from training.fit.config import LossWeights, TrainConfig, ViewConfig  # noqa: E402
from training.fit.loop import build_models, build_optimizers, train_step  # noqa: E402

N_TAGS = 1000


def measure(
    variant: str,
    bf16: bool,
    channels_last: bool,
    steps: int,
    bs: int,
    fast_dropout: bool = True,
    device: torch.device = torch.device("cpu"),
    view: bool = False,
    view_readout: str = "z",
) -> float:
    weights = LossWeights(view=10.0 if view else 0.0)
    if variant == "e_c":
        weights = dataclasses.replace(weights, audio=0.0, tag=0.0)
    cfg = TrainConfig(variant=variant, bf16=bf16, channels_last=channels_last, fast_dropout=fast_dropout,
                      loss_weights=weights, view=ViewConfig(readout=view_readout))  # fmt: skip
    torch.manual_seed(0)
    models = build_models(cfg, N_TAGS)
    for m in models.values():
        m.train().to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    opts = build_optimizers(cfg, models)
    x = torch.rand(bs, 1, 96, 96, device=device)
    tags = (torch.rand(bs, N_TAGS, device=device) < 0.005).float()
    tags[:, 0] = 1
    x_view = torch.rand_like(x) if view else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        x_view = x_view.contiguous(memory_format=torch.channels_last) if x_view is not None else None
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 2):
        sync()
        t = time.perf_counter()
        train_step(cfg, models, opts, x, tags, ctx, x_view=x_view)
        sync()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    times.sort()
    return bs / times[len(times) // 2]


def parts(bf16: bool, steps: int, bs: int, device: torch.device, tag: str) -> None:
    """The default AE-C step against the same step without the decoders (E-C) and the audio encoder's forward and
    backward alone, measured in one run: the decoders' share is AE-C minus E-C, the tag branch's E-C minus the
    encoder."""
    full = measure("ae_c", bf16, True, steps, bs, True, device)
    no_decoders = measure("e_c", bf16, True, steps, bs, True, device)
    torch.manual_seed(0)
    cfg = TrainConfig(bf16=bf16)
    enc = build_models(cfg, N_TAGS)["audio_encoder"].train().to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(enc.parameters(), 1e-3)
    x = torch.rand(bs, 1, 96, 96, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z, zd = enc(x)
        zd.float().square().mean().backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    encoder = bs / sorted(times)[len(times) // 2]
    step_ms, ec_ms, enc_ms = (1000 * bs / v for v in (full, no_decoders, encoder))
    print(f"AE-C step {step_ms:.0f} ms per batch of {bs}: audio encoder (forward + backward + Adam) {enc_ms:.0f} ms "
          f"({100 * enc_ms / step_ms:.0f} %), tag branch and contrastive loss {ec_ms - enc_ms:.0f} ms "
          f"({100 * (ec_ms - enc_ms) / step_ms:.0f} %), the two decoders {step_ms - ec_ms:.0f} ms "
          f"({100 * (step_ms - ec_ms) / step_ms:.0f} %)  {tag}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="ae_c", choices=["ae_c", "e_c", "cnn"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--all", action="store_true", help="also time bf16 where it is not native (very slow)")
    p.add_argument("--augment", default="", help="JSON of training/fit/augment.py settings: also time augmentation")
    p.add_argument("--view", action="store_true", help="also time the default step with the invariance loss")
    p.add_argument("--parts", action="store_true", help="split the default AE-C step into its parts")
    a = p.parse_args()
    dev = torch.device(a.device)
    native = bf16_native(dev)
    where = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads, bf16 {'native' if native else 'NOT native'}"
    )
    tag = f"[{where}]"
    print(f"torch {torch.__version__}, {where}, variant {a.variant}, batch {a.batch_size}")
    plain = measure(a.variant, False, False, a.steps, a.batch_size, fast_dropout=False, device=dev)
    print(f"plain fp32, contiguous, nn.Dropout       : {plain:7.1f} samples/s  {tag}")
    ours = None
    for bf16, cl, fd, name in [
        (False, True, False, "fp32, channels-last"),
        (False, True, True, "fp32 + channels-last + FastDropout"),
        (True, False, False, "bf16, contiguous"),
        (True, True, False, "bf16 + channels-last"),
        (True, True, True, "bf16 + channels-last + FastDropout"),
    ]:
        if bf16 and not native and not a.all:
            print(f"{name:41s}: skipped (bf16 is not native here: a step takes minutes; --all runs it)  {tag}")
            continue
        s = measure(a.variant, bf16, cl, a.steps, a.batch_size, fd, dev)
        default = fd and cl and bf16 == native  # what training's bf16="auto" runs here
        ours = s if default else ours
        mark = "  <- the training default here" if default else ""
        print(f"{name:41s}: {s:7.1f} samples/s  ({s / plain:.2f}x plain)  {tag}{mark}")
    if a.parts and ours:
        parts(native, a.steps, a.batch_size, dev, tag)
    if a.view and ours:
        s = measure(a.variant, native, True, a.steps, a.batch_size, True, dev, view=True)
        print(
            f"{'the default + invariance loss (2 views)':41s}: {s:7.1f} samples/s  ({s / ours:.2f}x the default, "
            f"{100 * (ours / s - 1):.0f} % more time per sample)  {tag}"
        )
        s2 = measure(a.variant, native, True, a.steps, a.batch_size, True, dev, view=True, view_readout="z+max")
        print(
            f"{'the same on z+max (view.readout)':41s}: {s2:7.1f} samples/s  ({s2 / s:.2f}x the loss on z, "
            f"{100 * (s / s2 - 1):.0f} % more time per sample)  {tag}"
        )
    if a.augment and ours:
        import json

        from training.fit.augment import Augment, augment, mel_centres

        aug = Augment(**json.loads(a.augment))
        x = torch.randn(a.batch_size, 96, 96 + aug.extra_frames) - 6
        tags = (torch.rand(a.batch_size, N_TAGS) < 0.005).float()
        centres, gen = mel_centres(), torch.Generator().manual_seed(0)
        times = []
        for _ in range(a.steps + 2):
            t = time.perf_counter()
            augment(x, tags, aug, gen, 96, centres)
            times.append(time.perf_counter() - t)
        aug_s = sorted(times[2:])[len(times[2:]) // 2]
        step_s = a.batch_size / ours
        print(f"augmentation {a.augment}: {1000 * aug_s:.1f} ms per batch, {100 * aug_s / step_s:.1f} % of the "
              f"default step ({1000 * step_s:.0f} ms)  {tag}")  # fmt: skip


if __name__ == "__main__":
    main()
