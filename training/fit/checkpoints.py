"""Training runs as models: the checkpoint of a run (the one the selection chose, or a named one), its corpus and
front-end, the CoalaModel it makes, and the key that names its file in the evaluation cache."""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import torch

from coala_embed import CoalaConfig, CoalaModel, FrontendConfig, ModelConfig, load_model

SELECTED = "selected.json"


def seeds_file(link: Path) -> Path:
    """Where ``training.eval.select --as NAME`` records the runs it chose ``DATA/runs/NAME`` from: ``NAME_seeds.json``."""
    return link.with_name(f"{link.name}_seeds.json")


def selected_checkpoint(run: Path) -> str:
    """The checkpoint chosen by this stage for ``run``, or ``best.pt`` when the stage has not run."""
    f = run / SELECTED
    return json.loads(f.read_text())["checkpoint"] if f.exists() else "best.pt"


def run_corpus(run: Path) -> Path:
    """The corpus folder a run was trained on (its resolved ``config.json``'s ``corpus``, a folder of the data
    folder that holds ``runs/``); ``DATA/corpus`` for runs without one."""
    cfg = run / "config.json"
    name = json.loads(cfg.read_text()).get("corpus", "corpus") if cfg.exists() else "corpus"
    return run.parent.parent / name


def corpus_frontend(corpus: Path) -> FrontendConfig:
    """The front-end the corpus's log-mels were made with (``frontend.json``), with the package's default patch
    cutting for inference (``pooling="signal"``); the package defaults for a corpus that does not record it."""
    f = corpus / "frontend.json"
    if not f.exists():
        return FrontendConfig()
    return dataclasses.replace(FrontendConfig(**json.loads(f.read_text())), pooling="signal")


def model_config(cfg: dict, n_tags: int = 0) -> ModelConfig:
    """A run's encoder dimensions (its config's ``model`` setting) as the package's ModelConfig."""
    return ModelConfig(**{**cfg.get("model", {}), "n_tags": n_tags})


def build_model(run: Path, corpus: Path | None = None, checkpoint: str = "best.pt") -> tuple[CoalaModel, dict]:
    """A :class:`CoalaModel` holding the run's audio encoder (+ projection), tag encoder (+ projection),
    the scaler and vocabulary of ``corpus`` (default: the corpus the run was trained on)."""
    corpus = corpus or run_corpus(run)
    saved = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    cfg = json.loads(saved["config"])
    vocab = json.loads((corpus / "vocabulary.json").read_text())
    index = np.load(corpus / "index.npz")
    models = saved["models"]
    is_cnn = "cnn" in models
    model_cfg = model_config(cfg, 0 if is_cnn else len(vocab))
    config = CoalaConfig(corpus_frontend(corpus), model_cfg, tags=() if is_cnn else tuple(vocab))
    if not is_cnn:  # the training split's distinct tag sets and their counts, for predict_tags' neighbour votes
        sets, counts = np.unique(index["labels"][~index["val"]] > 0, axis=0, return_counts=True)
        config = dataclasses.replace(
            config,
            tag_sets=tuple(tuple(int(i) for i in np.flatnonzero(row)) for row in sets),
            tag_set_counts=tuple(int(c) for c in counts),
        )
    model = CoalaModel(config)
    if is_cnn:
        enc = {f"audio_encoder.{k[len('encoder.') :]}": v for k, v in models["cnn"].items() if k.startswith("encoder.")}
        missing = model.audio.load_state_dict(enc, strict=False)
        assert missing.missing_keys == ["fc_audio.0.weight"], missing  # the CNN has no projection head
    else:
        assert model.tag is not None  # built with the vocabulary's tags
        model.audio.load_state_dict(models["audio_encoder"])
        model.tag.load_state_dict(models["tag_encoder"])
    model.scaler_min.copy_(torch.from_numpy(index["scaler_min"]))
    model.scaler_scale.copy_(torch.from_numpy(index["scaler_scale"]))
    return model.eval(), {"run": cfg, "row": saved.get("row", {})}


def encoder_digest(path: Path) -> str:
    """A hash of the encoders a checkpoint holds (what an evaluation of it depends on): ``best.pt`` carries the
    decoders as well, so its bytes differ from the snapshot of the same epoch while its embeddings do not."""
    import hashlib

    models = torch.load(path, map_location="cpu", weights_only=True)["models"]
    h = hashlib.sha1()
    for part in ("audio_encoder", "tag_encoder", "cnn"):
        for k, v in sorted(models.get(part, {}).items()):
            h.update(f"{part}.{k}|{v.dtype}|{tuple(v.shape)}".encode())
            h.update(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def spec_run(spec: str, data: Path) -> Path | None:
    """The run folder a model spec names (``NAME`` or ``NAME:FILE``); None for ``random`` and ``NAME=PATH``."""
    if "=" in spec or spec == "random":
        return None
    return data / "runs" / spec.partition(":")[0]


def resolve_model(spec: str, data: Path) -> tuple[str, CoalaModel]:
    """``NAME`` (a run in DATA/runs: the checkpoint ``training.eval.select`` chose, else its best.pt), ``NAME:FILE`` (another checkpoint of that run, e.g.
    ``ae_c:snapshot_epoch4.pt``), ``random`` (untrained encoder with the corpus scaler), or ``NAME=PATH`` (an
    exported folder, e.g. ``shipped=weights``)."""
    run = spec_run(spec, data)
    if run is not None:
        checkpoint = spec.partition(":")[2]
        model, _ = build_model(run, checkpoint=checkpoint or selected_checkpoint(run))
        return spec, model.optimize()
    if spec == "random":
        torch.manual_seed(0)
        model = CoalaModel(CoalaConfig())
        index = np.load(data / "corpus" / "index.npz")
        model.scaler_min.copy_(torch.from_numpy(index["scaler_min"]))
        model.scaler_scale.copy_(torch.from_numpy(index["scaler_scale"]))
        return "random", model.eval().optimize()
    name, path = spec.split("=", 1)
    return name, load_model(path, device="cpu")


def checkpoint_key(spec: str, data: Path) -> str | None:
    """A key naming the exact checkpoint file a run spec resolves to (path, size, time); None for ``random``
    and exported folders, which are not cached."""
    import hashlib

    run = spec_run(spec, data)
    if run is None:
        return None
    path = run / (spec.partition(":")[2] or selected_checkpoint(run))
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def machine() -> str:
    """CPU model and core count, e.g. 'Intel(R) Xeon(R) ... (2 cores)'."""
    import os

    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"
