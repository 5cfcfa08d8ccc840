"""Export a trained run to a Hugging Face model folder with ``coala_embed.save_pretrained``.

python -m training.export [--run DATA/runs/ae_c] [--out weights] [--card]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coala_embed import CoalaConfig, save_pretrained
from coala_embed.files import write_text

from .cli import parser, start
from .fit.checkpoints import build_model, machine, run_corpus, seeds_file, selected_checkpoint


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def seed_runs(run: Path) -> dict[str, float]:
    """Where ``run`` is the link ``training.eval.select --as`` made: each seed's run and its selected checkpoint's mean
    validation accuracy (``RUNS/NAME_seeds.json``); else empty."""
    f = seeds_file(run)
    if not run.is_symlink() or not f.exists():
        return {}
    return {name: r["mean_val_accuracy"] for name, r in json.loads(f.read_text())["runs"].items()}


def objective(run_cfg: dict) -> str:
    """The training objective in words, from a run's settings: each loss term that was on, with its weight."""
    if run_cfg["variant"] == "cnn":
        return "the tags' binary cross-entropy (the paper's CNN tagger)"
    w, terms = run_cfg["loss_weights"], []
    if w.get("audio"):
        terms.append(f"audio reconstruction x{w['audio']:g}")
    if w.get("tag"):
        terms.append(f"tag reconstruction x{w['tag']:g}")
    terms.append(f"audio-tag contrastive x{w['contrastive']:g} (tau {run_cfg['tau']:g})")
    if w.get("view"):
        v = run_cfg["view"]
        terms.append(
            f"audio-audio invariance x{w['view']:g} (NT-Xent, tau {v['tau']:g}, on {v['readout']}: two crops of one "
            "sound, the second through gain, EQ, pitch, room, noise and a background sound)"
        )
    decoder = "" if w.get("audio") or run_cfg["variant"] != "ae_c" else " without the audio decoder"
    return f"{run_cfg['variant'].upper().replace('_', '-')}{decoder}: " + ", ".join(terms)


def export(run: Path, corpus: Path, out: Path, checkpoint: str = "best.pt", recipe: str | None = None) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` for the run's checkpoint; ``recipe`` (a name in
    ``training.eval.evaluate.RECIPES``) sets the default clip recipe chosen on the validation splits."""

    model, meta = build_model(run, corpus, checkpoint)
    if recipe:
        from .eval.evaluate import with_recipe

        model.config = with_recipe(model.config, recipe)
    stats = json.loads((corpus / "stats.json").read_text()) if (corpus / "stats.json").exists() else {}
    settings = run / "config.json"  # written by each training session, with the precision it ran in
    precision = json.loads(settings.read_text()).get("precision") if settings.exists() else None
    info = {
        "run": run.name,
        "variant": meta["run"]["variant"],
        "objective": objective(meta["run"]),
        "precision": precision,
        "channels_last": meta["run"].get("channels_last"),
        "samples_seen": meta["row"].get("samples"),
        "epoch": meta["row"].get("epoch"),
        "training_seconds": meta["row"].get("seconds"),
        "validation_losses": {k: v for k, v in meta["row"].items() if k.startswith("val_")},
        "optimizer": meta["run"]["optimizer"],
        "lr": meta["run"]["lr"],
        "lr_milestones": meta["run"].get("lr_milestones", []),
        "batch_size": meta["run"].get("batch_size"),
        "checkpoint": checkpoint,
        "patch_mode": meta["run"]["patch_mode"],
        "seed": meta["run"].get("seed"),
        "seed_runs": seed_runs(run),
        "corpus": {k: stats.get(k) for k in ("sounds", "hours", "vocabulary", "tags_per_sound")},
        "machine": machine(),
        "commit": git_commit(),
    }
    return save_pretrained(model, out, trained=True, info=info)


def write_card(folder: Path, corpus: Path, eval_dir: Path) -> Path:
    """The Hugging Face model card (``README.md`` with a YAML header), from the exported config, the
    corpus statistics and the evaluation tables: every number in it was measured by the pipeline."""
    cfg = json.loads((folder / "config.json").read_text())
    info = cfg["info"]
    stats = json.loads((corpus / "stats.json").read_text()) if (corpus / "stats.json").exists() else {}
    tables = {
        s: (eval_dir / f"results_{s}.md").read_text()
        for s in ("val", "test")
        if (eval_dir / f"results_{s}.md").exists()
    }
    analysis = (eval_dir / "analysis.md").read_text() if (eval_dir / "analysis.md").exists() else "(not run)"
    sources = "\n".join(
        f"| {k} | {v.get('version', '')} | {v['files']} | {v['hours']} | {v.get('licence', '')} |"
        for k, v in sorted(stats.get("sources", {}).items(), key=lambda kv: -kv[1]["files"])
    )
    fe = cfg["frontend"]
    clip = cfg.get("clip", {"readout": "z", "stat": "mean"})
    clip_dim = CoalaConfig.from_dict(cfg).clip_dim
    clip_text = (
        "the mean of the patch embeddings z (the paper's)"
        if clip["readout"] == "z"
        else "z beside each channel's maximum over the feature maps of convolution blocks 1-4, per patch, "
        'averaged over the patches (`clip.readout = "z+max"`; `frames=True` still gives z)'
    ) + ("" if clip["stat"] == "mean" else ", with the standard deviation beside the mean")
    seen = info.get("samples_seen") or 0
    decay = "".join(f", x{f:g} from {int(at):,} samples" for at, f in info.get("lr_milestones") or [] if at <= seen)
    chosen = (
        "the checkpoint with the lowest validation loss"
        if info.get("checkpoint", "best.pt") == "best.pt"
        else f"checkpoint `{info.get('checkpoint')}`, chosen by mean downstream accuracy on the validation splits"
    )
    if info.get("seed_runs"):
        runs = ", ".join(f"{name} {acc:.2f}" for name, acc in info["seed_runs"].items())
        chosen += (
            f", of seed {info.get('seed')}: the best of {len(info['seed_runs'])} runs of this recipe that differ only "
            f"in the seed (mean validation accuracy of each run's chosen checkpoint: {runs})"
        )
    layout = ["bf16 autocast" if info.get("precision") == "bf16" else info.get("precision") or ""]
    layout.append("channels-last" if info.get("channels_last") else "")
    fields = {
        "objective": info.get("objective") or info.get("variant"), "run": info.get("run", "ae_c"),
        "precision": " + ".join(x for x in layout if x) or "precision not recorded",
        "embedding_dim": cfg["model"]["embedding_dim"], "n_tags": cfg["model"]["n_tags"], "clip_dim": clip_dim,
        "clip_text": clip_text, "tag_sets": len(cfg.get("tag_sets", [])), "decay": decay, "chosen": chosen,
        "epochs": (info.get("epoch") or 0) + 1, "training_hours": (info.get("training_seconds") or 0) / 3600,
        "validation_losses": json.dumps({k: round(v, 4) for k, v in info.get("validation_losses", {}).items()}),
        **{k: info.get(k) for k in ("optimizer", "lr", "batch_size", "patch_mode", "samples_seen", "machine", "commit")},
        **{k: fe[k] for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "pooling", "chunk_hop")},
        **{k: stats.get(k) for k in ("sounds", "hours", "vocabulary", "tags_per_sound")},
        "windows": stats.get("multi_patch_windows"), "sources": sources, "analysis": analysis,
        "test_table": tables.get("test", "(not run)"), "val_table": tables.get("val", "(not run)"),
    }  # fmt: skip
    text = (Path(__file__).parent / "model_card.md").read_text().format(**fields)
    write_text(folder / "README.md", text)
    return folder / "README.md"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--run", help="run folder (default: DATA/runs/ae_c)")
    p.add_argument("--corpus", default=None, help="corpus folder name (default: the one the run was trained on)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="file in the run folder (default: the one training.eval.select chose, else best.pt)",
    )
    p.add_argument("--out", default="weights")
    p.add_argument(
        "--recipe", default=None, help="default clip recipe (see training/eval/evaluate.py), chosen on validation"
    )
    p.add_argument("--card", type=Path, default=None, help="evaluation folder: also write the model card README.md")
    a, root = start(p, argv)
    run = Path(a.run) if a.run else root / "runs" / "ae_c"
    checkpoint = a.checkpoint or selected_checkpoint(run)
    corpus = root / a.corpus if a.corpus else run_corpus(run)
    folder = export(run, corpus, Path(a.out), checkpoint, a.recipe)
    if a.card:
        write_card(folder, corpus, a.card)
    print(f"exported {run / checkpoint} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
