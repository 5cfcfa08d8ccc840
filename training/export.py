"""Export a trained run to a Hugging Face model folder with ``coala_embed.save_pretrained``.

python -m training.export [--run DATA/runs/ae_c] [--out weights] [--card]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from coala_embed import CoalaConfig, CoalaModel, FrontendConfig, ModelConfig, save_pretrained

from .corpus import data_dir


def build_model(run: Path, corpus: Path, checkpoint: str = "best.pt") -> tuple[CoalaModel, dict]:
    """A :class:`CoalaModel` holding the run's audio encoder (+ projection), tag encoder (+ projection),
    the corpus's scaler and vocabulary."""
    saved = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    cfg = json.loads(saved["config"])
    vocab = json.loads((corpus / "vocabulary.json").read_text())
    index = np.load(corpus / "index.npz")
    models = saved["models"]
    is_cnn = "cnn" in models
    config = CoalaConfig(
        FrontendConfig(), ModelConfig(n_tags=0 if is_cnn else len(vocab)), () if is_cnn else tuple(vocab)
    )
    model = CoalaModel(config)
    if is_cnn:
        enc = {f"audio_encoder.{k[len('encoder.') :]}": v for k, v in models["cnn"].items() if k.startswith("encoder.")}
        missing = model.audio.load_state_dict(enc, strict=False)
        assert missing.missing_keys == ["fc_audio.0.weight"], missing  # the CNN has no projection head
    else:
        model.audio.load_state_dict(models["audio_encoder"])
        model.tag.load_state_dict(models["tag_encoder"])
    model.scaler_min.copy_(torch.from_numpy(index["scaler_min"]))
    model.scaler_scale.copy_(torch.from_numpy(index["scaler_scale"]))
    return model.eval(), {"run": cfg, "row": saved.get("row", {})}


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def export(run: Path, corpus: Path, out: Path, checkpoint: str = "best.pt") -> Path:
    model, meta = build_model(run, corpus, checkpoint)
    stats = json.loads((corpus / "stats.json").read_text()) if (corpus / "stats.json").exists() else {}
    info = {
        "variant": meta["run"].get("name", meta["run"]["variant"]),
        "samples_seen": meta["row"].get("samples"),
        "epoch": meta["row"].get("epoch"),
        "training_seconds": meta["row"].get("seconds"),
        "validation_losses": {k: v for k, v in meta["row"].items() if k.startswith("val_")},
        "optimizer": meta["run"]["optimizer"],
        "lr": meta["run"]["lr"],
        "patch_mode": meta["run"]["patch_mode"],
        "corpus": {k: stats.get(k) for k in ("sounds", "hours", "vocabulary", "tags_per_sound")},
        "machine": f"{platform.machine()} {platform.processor() or ''} (2 CPU cores)".strip(),
        "commit": git_commit(),
    }
    return save_pretrained(model, out, trained=True, info=info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data folder (default: $COALA_EMBED_DATA or ~/.cache/coala-embed)")
    p.add_argument("--run", help="run folder (default: DATA/runs/ae_c)")
    p.add_argument("--corpus", default="corpus")
    p.add_argument("--checkpoint", default="best.pt")
    p.add_argument("--out", default="weights")
    a = p.parse_args(argv)
    root = data_dir(a.data)
    run = Path(a.run) if a.run else root / "runs" / "ae_c"
    folder = export(run, root / a.corpus, Path(a.out), a.checkpoint)
    print(f"exported {run / a.checkpoint} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
