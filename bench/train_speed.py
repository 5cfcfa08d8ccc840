"""Training throughput: samples/s of one AE-C step (both autoencoders, three losses, batch 128), plain fp32
with contiguous memory versus ours (bf16 autocast + channels-last), measured in one run.

    python bench/train_speed.py [--variant ae_c|e_c|cnn] [--steps 12] [--batch-size 128] [--device cpu|cuda]

On CUDA the same step runs under CUDA autocast (bf16); "plain" keeps PyTorch's defaults there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from training.train import DEFAULTS, build_models, build_optimizers, train_step  # noqa: E402

N_TAGS = 1000


def measure(
    variant: str,
    bf16: bool,
    channels_last: bool,
    steps: int,
    bs: int,
    fast_dropout: bool = True,
    device: torch.device = torch.device("cpu"),
) -> float:
    cfg = dict(DEFAULTS, variant=variant, bf16=bf16, channels_last=channels_last, fast_dropout=fast_dropout)
    if variant == "e_c":
        cfg["loss_weights"] = {"audio": 0.0, "tag": 0.0, "contrastive": 10.0}
    torch.manual_seed(0)
    models = build_models(cfg, N_TAGS)
    for m in models.values():
        m.train().to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    opts = build_optimizers(cfg, models)
    x = torch.rand(bs, 1, 96, 96, device=device)
    tags = (torch.rand(bs, N_TAGS, device=device) < 0.005).float()
    tags[:, 0] = 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 2):
        sync()
        t = time.perf_counter()
        train_step(cfg, models, opts, x, tags, ctx)
        sync()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    times.sort()
    return bs / times[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="ae_c", choices=["ae_c", "e_c", "cnn"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    dev = torch.device(a.device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, variant {a.variant}, batch {a.batch_size}")
    plain = measure(a.variant, False, False, a.steps, a.batch_size, fast_dropout=False, device=dev)
    print(f"plain fp32, contiguous, nn.Dropout       : {plain:7.1f} samples/s")
    for bf16, cl, fd, name in [
        (False, True, False, "fp32, channels-last"),
        (True, False, False, "bf16, contiguous"),
        (True, True, False, "bf16 + channels-last"),
        (True, True, True, "bf16 + channels-last + FastDropout (ours)"),
    ]:
        s = measure(a.variant, bf16, cl, a.steps, a.batch_size, fd, dev)
        print(f"{name:41s}: {s:7.1f} samples/s  ({s / plain:.2f}x plain)")


if __name__ == "__main__":
    main()
