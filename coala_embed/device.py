"""Where the model runs and in which precision: device resolution, and whether bfloat16 is native here.

bfloat16 is fast only where the hardware computes it: CUDA GPUs, and CPUs with AVX-512 BF16 or AMX. Elsewhere
(AVX2-only CPUs) oneDNN falls back to reference code, measured on a 2-core AMD EPYC with AVX2 only
(2026-12-02): the encoder 7.3x slower in bf16 than in fp32 (33.1 against 242.7 patches/s), an AE-C training step
about 100x slower. :func:`resolve_precision` therefore turns a request for bf16 into fp32 there, with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings

import torch

from .errors import DeviceError

PRECISIONS = ("fp32", "bf16", "auto")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which it has no bfloat16 instructions
_ISA_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")
BF16_SLOWDOWN = "the encoder ran 7.3x and a training step about 100x slower in bf16 than in fp32 on such a CPU"


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU; asking for a missing GPU raises DeviceError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for CUDA, but this machine has no usable GPU; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here")
    elif dev.type != "cpu":
        raise DeviceError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return dev


def float32_convolutions(device: torch.device) -> contextlib.AbstractContextManager:
    """Context in which convolutions on ``device`` run in float32: on CUDA, cuDNN would otherwise use TF32 (a
    10-bit mantissa) for float32 inputs; on the CPU they already do."""
    if device.type == "cuda":
        return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name and its widest vector ISA, e.g. ``AMD EPYC (AVX-512 BF16)`` or ``... (AVX2)``, and
    the cap ``ONEDNN_MAX_CPU_ISA`` puts on oneDNN when it is set (``AMD EPYC (AVX-512 BF16, oneDNN capped at
    AVX2)``: how the AVX2 path is tried on a newer CPU)."""
    return _cpu_model() + _isa_suffix()


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    return name


def _isa_suffix() -> str:
    flags = cpu_flags()
    if "amx_bf16" in flags:
        isa = "AMX + AVX-512 BF16"
    elif "avx512_bf16" in flags:
        isa = "AVX-512 BF16"
    elif "avx512f" in flags:
        isa = "AVX-512"
    elif "avx2" in flags:
        isa = "AVX2"
    else:
        isa = "no AVX2"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return f" ({isa}{f', oneDNN capped at {cap}' if cap else ''})"


def bf16_native(device: torch.device | str = "cpu") -> bool:
    """True where bfloat16 convolutions run in hardware: any CUDA device; a CPU whose oneDNN has bf16
    instructions (AVX-512 BF16 or AMX), unless ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below them."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return True
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISA_WITHOUT_BF16:
        return False
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The precision to run: ``"auto"`` is bf16 where it is native, else fp32; ``"bf16"`` where it is not
    native warns (once per process) and runs fp32, which is several times faster there."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32"
    if bf16_native(device):
        return "bf16"
    if precision == "bf16":
        _warn_once(
            f"bf16 was asked for, but this CPU ({cpu_name()}) has no native bfloat16 (AVX-512 BF16 or AMX): "
            f"{BF16_SLOWDOWN}, so fp32 is used instead"
        )
    return "fp32"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
