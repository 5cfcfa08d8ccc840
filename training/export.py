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


def export(run: Path, corpus: Path, out: Path, checkpoint: str = "best.pt", recipe: str | None = None) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` for the run's checkpoint; ``recipe`` (a name in
    ``training.eval.evaluate.RECIPES``) sets the default clip recipe chosen on the validation splits."""

    model, meta = build_model(run, corpus, checkpoint)
    if recipe:
        from .eval.evaluate import with_recipe

        model.config = with_recipe(model.config, recipe)
    stats = json.loads((corpus / "stats.json").read_text()) if (corpus / "stats.json").exists() else {}
    info = {
        "variant": meta["run"]["variant"],
        "samples_seen": meta["row"].get("samples"),
        "epoch": meta["row"].get("epoch"),
        "training_seconds": meta["row"].get("seconds"),
        "validation_losses": {k: v for k, v in meta["row"].items() if k.startswith("val_")},
        "optimizer": meta["run"]["optimizer"],
        "lr": meta["run"]["lr"],
        "lr_milestones": meta["run"].get("lr_milestones", []),
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
    hours = info.get("training_seconds") or 0
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
    text = f"""---
library_name: coala-embed
license: mit
tags:
- audio
- audio-embedding
- representation-learning
- coala
pipeline_tag: feature-extraction
---

# COALA audio encoder (AE-C), trained by coala-embed

A {cfg["model"]["embedding_dim"]}-d audio embedding from COALA (Favory, Drossos, Virtanen, Serra: "COALA: Co-Aligned
Autoencoders for Learning Semantically Enriched Audio Representations", ICML 2020 workshop on Self-supervision in
Audio and Speech): a convolutional autoencoder on log-mel patches and an autoencoder on the sounds' tags, whose
latent codes are aligned by a contrastive loss. This checkpoint holds the audio encoder with its projection
head, the tag encoder with its projection head ({cfg["model"]["n_tags"]} tags, for tagging and text search), and
the min-max scaler of the training patches.

```python
from coala_embed import get_embedding, load_model
model = load_model()                 # this checkpoint is the package's default
emb = get_embedding(audio, sr, model=model)   # [{clip_dim}] float32
```

## Training

- Variant: {info.get("variant")} (loss weights 5 / 5 / 10, tau 0.1), optimiser {info.get("optimizer")} lr {info.get("lr")}{decay}
  (chosen over the paper's SGD, lr 5e-3, on a 40k-sample comparison: see training/README.md),
  batch 128, patch mode `{info.get("patch_mode")}`; bf16 autocast + channels-last on the CPU.
- Samples seen: {info.get("samples_seen")} patch-samples ({(info.get("epoch") or 0) + 1} epochs) in {hours / 3600:.1f} h on
  {info.get("machine")}; {chosen}; commit {info.get("commit")}.
- Validation losses: {json.dumps({k: round(v, 4) for k, v in info.get("validation_losses", {}).items()})}
- Front-end: {fe["sample_rate"]} Hz, STFT {fe["n_fft"]}/{fe["hop_length"]}, {fe["n_mels"]} Slaney mel bands, natural log,
  96-frame patches (2.23 s); clip recipe `{fe["pooling"]}` with a patch hop of {fe["chunk_hop"]} frames.
- Clip vector ({clip_dim}-d): {clip_text}.

## Training data

{stats.get("sounds")} sounds ({stats.get("hours")} h, {stats.get("multi_patch_windows")} training windows) from Debian packages of game
and desktop sounds, voice prompts, samples and General MIDI notes rendered with fluidsynth; {stats.get("vocabulary")} tags
from their paths, texts and transcripts ({stats.get("tags_per_sound")} per sound). Built by `training/corpus/build.py`.

| source package | version | files | hours | licence |
|---|---|---|---|---|
{sources}

## Evaluation

Held-out tasks never seen in training (`training/eval/tasks.py`, each with a card): spoken digits (FSDD, held-out
speakers), sound events (0ad-data), instrument families (GM notes from musescore-general-soundfont, unseen
programs), drums (29 GM percussion names: trained on MuseScore's drum kits, tested on the two acoustic kits of
avldrums.lv2-soundfont, a source apart from the corpus) and spoken languages (KLettres voices). Protocol of the
paper: StandardScaler + MLP(256), accuracy (%). MFCC is the paper's 120-d baseline; `random` is this encoder with
random weights; E-C and the CNN tagger are the paper's ablations (their corpus and length are in
training/results/log.md). `signal_zmax` is this checkpoint's clip vector, `signal` the paper's (the mean
of z over the patches that hold signal); `ae_c` is this checkpoint, `ae_c_sN` the runs it was chosen from.

### Test split
{tables.get("test", "(not run)")}
`digits_loso`: leave one speaker out, one seed per held-out speaker; ± is the spread over the six speakers.

### Validation split (used for every choice)
{tables.get("val", "(not run)")}
### Tags and CCA (`training/eval/analysis.py`)
{analysis}

## Limits

- Trained on about {stats.get("hours")} h of game, desktop and synthesised sounds, not on Freesound: far less data than the
  paper's 190k sounds, and tags from file paths are noisy. Expect weaker results than the paper's.
- Clips shorter than one patch (2.23 s) are zero-padded; very short sounds get a single patch.
- Tags come from a {cfg["model"]["n_tags"]}-word vocabulary of game and desktop sounds, voted by the
  {len(cfg.get("tag_sets", []))} distinct tag sets of the training sounds (`predict_tags`' default); the validation
  sounds above share packages and naming habits with the training sounds, so expect lower precision on other
  audio. Ranking single tags by cosine (`method="one-hot"`) is weaker: the tag encoder only saw multi-hot sets.
- Runs that differ only in the seed differ by several points on some tasks (the table "Across training seeds"
  above); read a margin over MFCC with that spread in mind.
"""
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
