"""The settings of a training run: a frozen :class:`TrainConfig`, read from a JSON file in ``training/configs/``
(which may ``"extends"`` another), then ``--set key=value`` overrides, and checked before anything runs: an unknown
key, a value of the wrong type or out of range is refused with its name.

    cfg = load_config("training/configs/experiments/view.json", ["seed=1", "loss_weights.view=5"])
    cfg.loss_weights.view, cfg.to_dict()

A run writes ``cfg.to_dict()`` (plus the precision that actually ran) to its ``config.json`` and into every
checkpoint; the export carries its encoder dimensions (``model``) into the shipped ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coala_embed.config import ModelConfig

from .augment import Augment

VARIANTS = ("ae_c", "e_c", "cnn")


class ConfigError(ValueError):
    """A training config that cannot run: the message names the setting and what it accepts."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the losses summed in a step; 0 switches a term off (and, for ``audio`` and ``tag``, the decoder
    that only it needs). ``view`` is the audio-audio invariance loss (NT-Xent between two views of one sound)."""

    audio: float = 5.0
    tag: float = 5.0
    contrastive: float = 10.0
    view: float = 0.0


@dataclass(frozen=True)
class ViewConfig:
    """The second view of each training patch, seen by the audio encoder alone when ``loss_weights.view > 0``:
    another crop of the same sound (``crop``; false: the same crop) through its own augmentation, or with
    probability ``partner`` a crop of another training sound with the same raw tags (the same GM program and
    register from another soundfont or pitch, variants of one game sound), when it has one. The default
    augmentation is the signal augmentations plus, for half the views, another sound of the batch 6-20 dB under.
    ``readout`` is what the loss's projection head sees: ``z``, or ``z+max`` (z and the channel maxima of blocks
    1-4, the shipped clip vector's columns), so that the maxima are trained to be invariant too."""

    tau: float = 0.2
    readout: str = "z"
    crop: bool = True
    partner: float = 0.0
    augment: Augment = Augment(mix=0.5, mix_db=7.0, mix_below_db=13.0, gain_db=6.0, eq_db=6.0, pitch=2.0, reverb=0.3,
                               noise=0.3)  # fmt: skip


@dataclass(frozen=True)
class MaskConfig:
    """SpecAugment-style masking of the audio encoder's input: per patch one band of up to ``freq`` mel bins and
    one of up to ``time`` frames set to 0; the audio decoder still reconstructs the unmasked patch. 0: off."""

    freq: int = 0
    time: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings (docs/method.md sections 4-5 for the paper's values)."""

    name: str = ""  # the run folder DATA/runs/NAME (default: the variant)
    variant: str = "ae_c"  # ae_c | e_c | cnn
    # The encoders' dimensions; ``n_tags`` stays 0 here (the corpus gives it) and the export writes them into the
    # checkpoint's config.json
    model: ModelConfig = ModelConfig()
    loss_weights: LossWeights = LossWeights()
    tau: float = 0.1  # temperature of the audio-tag contrastive loss
    view: ViewConfig = ViewConfig()
    optimizer: str = "adam"  # adam | sgd (the paper: two plain SGD, lr 5e-3)
    lr: float = 1e-3
    # ((samples, factor), ...): from that many samples on, lr * factor (a step decay; () keeps lr constant)
    lr_milestones: tuple[tuple[int, float], ...] = ()
    batch_size: int = 128  # per process
    patch_mode: str = "multi"  # multi (windows over each sound, jittered) | max_energy (the original: one per sound)
    jitter: int = 48  # frames of random shift of multi-patch windows
    mask: MaskConfig = MaskConfig()
    augment: Augment = Augment()  # on-the-fly augmentation of the training patches; all off: the paper's recipe
    tag_dropout: float = 0.0  # probability of removing each positive tag of a training target (one always stays)
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay instead of Adam
    max_samples: int = 1_500_000  # stop after this many samples...
    min_samples: int = 1_000_000  # ...or once validation stops improving for `patience` epochs after this many
    patience: int = 4
    checkpoint_minutes: float = 4.0
    checkpoint_steps: int = 0  # > 0: checkpoint every this many steps instead of every checkpoint_minutes
    epoch_samples: int = 0  # samples per epoch (0: every training window once); smaller for quick comparisons
    seed: int = 0
    # bfloat16 autocast (losses in float32): "auto" uses it where it is native (CUDA, CPUs with AVX-512 BF16 or
    # AMX) and fp32 elsewhere, where bf16 training is about 100x slower; true on such a CPU warns and runs fp32
    bf16: bool | str = "auto"
    channels_last: bool = True
    fast_dropout: bool = True  # FastDropout: same dropout, mask from random bytes (bernoulli_ is slow on CPU)
    corpus: str = "corpus"  # the corpus folder inside the data folder
    hdf5_train: str = ""  # train on the authors' HDF5 files instead (dataset/{data,label,id})
    hdf5_val: str = ""
    vocabulary: str = ""  # with HDF5: the tag order, e.g. json/id2token_top_1000.json
    threads: int = 0  # 0: all cores
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    # CUDA only: deterministic cuDNN/cuBLAS kernels, so that a resumed run repeats an uninterrupted one bit for bit
    # (as on the CPU, where it always does); may be slower, off by default
    deterministic: bool = False

    def __post_init__(self) -> None:
        _choice("variant", self.variant, VARIANTS)
        _choice("optimizer", self.optimizer, ("adam", "sgd"))
        _choice("patch_mode", self.patch_mode, ("multi", "max_energy"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("view.readout", self.view.readout, ("z", "z+max"))
        if self.bf16 not in (True, False, "auto"):
            raise ConfigError(f'bf16 must be true, false or "auto", got {self.bf16!r}')
        if self.model.n_tags:
            raise ConfigError("model.n_tags comes from the corpus's vocabulary; leave it out")
        for key in ("lr", "tau", "batch_size", "max_samples", "checkpoint_minutes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key, value in (("tag_dropout", self.tag_dropout), ("view.partner", self.view.partner)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {value}")
        if self.min_samples > self.max_samples:
            raise ConfigError(f"min_samples ({self.min_samples}) must not exceed max_samples ({self.max_samples})")
        if self.variant == "cnn" and self.loss_weights.view:
            raise ConfigError("the invariance loss (loss_weights.view) needs the audio encoder: not with variant cnn")

    @property
    def run_name(self) -> str:
        return self.name or self.variant

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready settings (``model`` without ``n_tags``); :func:`from_dict` reads them back."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        d["model"].pop("n_tags")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(cls, d, "")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _build(cls: type, d: Any, where: str) -> Any:
    """``cls(**d)``, recursing into nested settings, with every key and value checked against its field."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where.rstrip('.') or 'the config'} must be an object of settings, got {d!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise ConfigError(f"unknown setting '{where}{key}'; known: {', '.join(known)}")
        kwargs[key] = _value(hints[key], value, where + key)
    return cls(**kwargs)


def _value(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if hint == bool | str:
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # lr_milestones
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(m, (list, tuple)) and len(m) == 2 and all(isinstance(v, (int, float)) for v in m) for m in value
        )
        value = tuple((int(a), float(b)) for a, b in value) if ok else value
    if not ok:
        raise ConfigError(f"{key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def _merge(base: dict, update: dict) -> None:
    """``base.update(update)``, recursing into objects both hold, so a file that sets some loss weights keeps the
    defaults of the others."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def read_file(path: Path) -> dict:
    """A config file's settings; ``"extends": "FILE"`` (relative to it) starts from that file's."""
    own = json.loads(path.read_text())
    parent = own.pop("extends", None)
    if parent is None:
        return own
    base = read_file(path.parent / parent)
    _merge(base, own)
    return base


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The defaults, then the config file (and the files it ``extends``), then ``key=value`` overrides (values
    parsed as JSON when they can be, e.g. ``lr=5e-3``, ``view.crop=false``). ``training/configs/experiments/``
    holds one file per recipe of the results log."""
    cfg = TrainConfig().to_dict()
    _merge(cfg, read_file(Path(path)))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(target.get(p), dict):
                raise ConfigError(f"unknown setting {key!r}")
            target = target[p]
        if leaf not in target:
            raise ConfigError(f"unknown setting {key!r}; known here: {', '.join(target)}")
        target[leaf] = parsed
    return TrainConfig.from_dict(cfg)
