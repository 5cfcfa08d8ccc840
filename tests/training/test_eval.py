"""Evaluation and selection: checkpoint and seed choice, the experiment files, margin tables, seed groups, the
corpus a run is read with, CCA and average precision."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch


def test_selection_candidates(tmp_path):
    from training.eval.select import candidates
    from training.fit.checkpoints import selected_checkpoint

    for e in range(30):
        (tmp_path / f"snapshot_epoch{e}.pt").touch()
    (tmp_path / "best.pt").touch()
    assert candidates(tmp_path, every=8) == [
        "snapshot_epoch4.pt", "snapshot_epoch12.pt", "snapshot_epoch20.pt", "snapshot_epoch28.pt", "snapshot_epoch29.pt",
        "best.pt",
    ]  # fmt: skip
    assert selected_checkpoint(tmp_path) == "best.pt"  # before the stage ran
    (tmp_path / "selected.json").write_text(json.dumps({"checkpoint": "snapshot_epoch25.pt"}))
    assert selected_checkpoint(tmp_path) == "snapshot_epoch25.pt"


def test_selection_scores_best_pt_only_when_its_encoders_are_new(tmp_path, monkeypatch):
    import training.eval.select as sel

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    enc = {"audio_encoder": {"w": torch.ones(3)}, "tag_encoder": {"w": torch.zeros(2)}}
    torch.save({"models": {"audio_encoder": {"w": torch.full((3,), 2.0)}, "tag_encoder": enc["tag_encoder"]}},
               run / "snapshot_epoch0.pt")  # fmt: skip
    torch.save({"models": enc}, run / "snapshot_epoch1.pt")
    torch.save({"models": {**enc, "audio_decoder": {"w": torch.ones(4)}}}, run / "best.pt")  # epoch 1, + decoders
    scored = []
    monkeypatch.setattr(sel, "score", lambda data, r, name, *a: scored.append(name) or {"t": float(len(scored))})
    out = sel.scores_for(tmp_path, "r", ["snapshot_epoch0.pt", "snapshot_epoch1.pt", "best.pt"], 2)
    assert scored == ["snapshot_epoch0.pt", "snapshot_epoch1.pt"] and out["best.pt"] == out["snapshot_epoch1.pt"]
    torch.save({"models": {**enc, "audio_encoder": {"w": torch.full((3,), 5.0)}}}, run / "best.pt")
    sel.scores_for(tmp_path, "r", ["snapshot_epoch0.pt", "snapshot_epoch1.pt", "best.pt"], 2)
    assert scored[-1] == "best.pt"  # other encoders: scored


def test_selection_across_seeds_links_the_best_run(tmp_path, monkeypatch):
    import training.eval.select as sel

    means = {"ae_c_s0": 81.0, "ae_c_s1": 83.5, "ae_c_s2": 82.0}
    monkeypatch.setattr(
        sel, "select", lambda data, run, every, seeds: {"checkpoint": f"{run}.pt", "mean_val_accuracy": means[run], "scores": {}}
    )  # fmt: skip
    runs = tmp_path / "runs"
    for r in means:
        (runs / r).mkdir(parents=True)
    out = sel.select_across(tmp_path, list(means), 8, 2, "ae_c")
    assert out["selected"] == "ae_c_s1" and out["checkpoint"] == "ae_c_s1.pt"
    assert os.readlink(runs / "ae_c") == "ae_c_s1" and (runs / "ae_c").resolve() == (runs / "ae_c_s1").resolve()
    assert json.loads((runs / "ae_c_seeds.json").read_text())["runs"]["ae_c_s2"]["mean_val_accuracy"] == 82.0
    means["ae_c_s2"] = 90.0  # a rerun moves the link
    sel.select_across(tmp_path, list(means), 8, 2, "ae_c")
    assert os.readlink(runs / "ae_c") == "ae_c_s2"
    (runs / "ae_c").unlink()
    (runs / "ae_c").mkdir()  # a run folder of that name is never replaced
    with pytest.raises(SystemExit, match="run folder"):
        sel.select_across(tmp_path, list(means), 8, 2, "ae_c")


def test_each_experiment_file_is_its_recipe_over_the_base_config():

    from training.fit.config import load_config

    folder = Path("training/configs/experiments")
    recipes = {
        "base": ("ae_c", []),
        "ec": ("e_c", []),
        "sig": ("ae_c", ["augment.gain_db=6", "augment.eq_db=6", "augment.pitch=2", "augment.reverb=0.3",
                         "augment.noise=0.3"]),
        "mask": ("ae_c", ["mask.freq=16", "mask.time=16"]),
        "view": ("ae_c", ["loss_weights.view=10"]),
        "lite": ("ae_c", ["loss_weights.view=10", "loss_weights.audio=0"]),
        "litemax": ("ae_c", ["name=litemax", "loss_weights.view=10", "loss_weights.audio=0", "view.readout=z+max"]),
        "litemax10x": ("ae_c", ["name=litemax", "loss_weights.view=10", "loss_weights.audio=0",
                                "view.readout=z+max", "lr_milestones=[[1800000, 0.1], [2300000, 0.01]]",
                                "max_samples=2600000", "min_samples=2600000"]),
    }  # fmt: skip
    for name, (base, sets) in recipes.items():
        assert load_config(folder / f"{name}.json") == load_config(f"training/configs/{base}.json", sets), name
    assert load_config(folder / "view.json").loss_weights.audio == 5.0  # extends keeps the base's weights
    assert {p.stem for p in folder.glob("*.json")} >= set(recipes)


def test_the_shipped_recipe_is_the_experiment_that_won_it(ship):
    """run.sh trains training/configs/$SHIP.json; the shipped config is the screened recipe of the same name."""

    from training.fit.config import load_config

    shipped = load_config(f"training/configs/{ship}.json")
    assert shipped.name == ship
    assert shipped == load_config(f"training/configs/experiments/{ship}.json", [f"name={ship}"])
    assert (shipped.loss_weights.audio, shipped.loss_weights.view, shipped.view.readout) == (0.0, 10.0, "z+max")


def test_the_model_card_states_the_objective_the_run_was_trained_with():
    from training.export import objective
    from training.fit.config import load_config

    configs = Path(__file__).resolve().parents[2] / "training" / "configs"
    assert objective(load_config(configs / "ae_c.json").to_dict()) == (
        "AE-C: audio reconstruction x5, tag reconstruction x5, audio-tag contrastive x10 (tau 0.1)"
    )
    assert objective(load_config(configs / "experiments" / "litemax.json").to_dict()).startswith(
        "AE-C without the audio decoder: tag reconstruction x5, audio-tag contrastive x10 (tau 0.1), audio-audio "
        "invariance x10 (NT-Xent, tau 0.2, on z+max: two crops of one sound"
    )
    assert objective(load_config(configs / "e_c.json").to_dict()) == "E-C: audio-tag contrastive x10 (tau 0.1)"


def test_every_table_states_the_margin_over_random_weights_per_recipe():
    from training.eval.evaluate import markdown

    rows = []
    for emb, accs in (("ae_c", (0.9, 0.8)), ("random", (0.85, 0.82)), ("mfcc", (0.7, 0.6))):
        for recipe in ("signal", "signal_zmax") if emb != "mfcc" else ("-",):
            shift = 0.05 if recipe == "signal_zmax" else 0.0
            for task, acc in zip(("digits", "events"), accs):
                rows.append({"embedding": emb, "recipe": recipe, "task": task, "mlp_mean": acc + shift,
                             "mlp_std": 0.0, "logreg": acc})  # fmt: skip
    text = markdown({"rows": rows, "split": "val", "seeds": 3, "date": "today", "machine": "here"})
    assert "| ae_c - random | signal | +5.0 | -2.0 | +1.50 |" in text
    assert "| ae_c - random | signal_zmax | +5.0 | -2.0 | +1.50 |" in text
    assert "mfcc - random" not in text


def test_seed_groups_are_the_mean_and_spread_over_the_runs():
    from training.eval.evaluate import markdown, seed_groups

    rows = [{"task": t, "embedding": e, "recipe": "signal", "mlp_mean": acc, "mlp_std": 0.0, "logreg": 0.5}
            for t, accs in (("digits", (0.90, 0.94)), ("events", (0.70, 0.60)))
            for e, acc in zip(("a_s0", "a_s1"), accs)]  # fmt: skip
    groups = seed_groups(rows, {"a": ["a_s0", "a_s1"]})
    assert [(g["task"], round(g["mean"], 4), round(g["std"], 4)) for g in groups] == [
        ("digits", 0.92, 0.02), ("events", 0.65, 0.05)
    ]  # fmt: skip
    table = markdown({"split": "test", "seeds": 3, "date": "d", "machine": "m", "rows": rows, "groups": groups})
    assert "| a (a_s0, a_s1) | signal | 92.0 ± 2.0 | 65.0 ± 5.0 | 78.50 ± 1.50 |" in table
    with pytest.raises(SystemExit, match="a_s2"):
        seed_groups(rows, {"a": ["a_s0", "a_s2"]})


def test_a_run_is_read_with_the_corpus_it_was_trained_on(tmp_path):
    from training.fit.checkpoints import run_corpus

    run = tmp_path / "runs" / "ae_c2"
    run.mkdir(parents=True)
    assert run_corpus(run) == tmp_path / "corpus"  # no resolved config: the default corpus
    (run / "config.json").write_text(json.dumps({"variant": "ae_c", "corpus": "corpus2"}))
    assert run_corpus(run) == tmp_path / "corpus2"


def test_cca_and_average_precision():

    from training.eval.analysis import average_precision, mean_cca

    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 40))
    y_related = x[:, :3] @ rng.standard_normal((3, 3))
    y_noise = rng.standard_normal((500, 3))
    assert mean_cca(x, y_related, pcs=40) > 0.99
    assert mean_cca(x, y_noise, pcs=5) < 0.2
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)


def test_readouts_are_column_groups_and_byol_a_s_time_pooling_of_the_last_map():
    from training.eval.readouts import readouts

    ways = readouts(z_dim=2 * 3 * 3, channels=2, blocks=2)  # z: a [2 channels, 3 mel, 3 time] map; 2 maxima blocks
    p = np.arange(2 * 22, dtype=np.float32).reshape(2, 22)  # two patches
    np.testing.assert_array_equal(ways["z+max"](p), p.mean(0))
    np.testing.assert_array_equal(ways["z"](p), p[:, :18].mean(0))
    np.testing.assert_array_equal(ways["max1-2"](p), p[:, 18:].mean(0))
    np.testing.assert_array_equal(ways["z+max2"](p), np.concatenate([p[:, :18], p[:, 20:]], 1).mean(0))
    np.testing.assert_array_equal(ways["z mean+max"](p), np.concatenate([p[:, :18].mean(0), p[:, :18].max(0)]))
    # channel 0, mel row 0 over time: patch 0 gives 0, 1, 2 and patch 1 gives 22, 23, 24: mean 12 + max 24
    assert ways["last t-mean+max"](p).shape == (2 * 3,) and ways["last t-mean+max"](p)[0] == 12 + 24


def test_the_digits_task_looks_for_fsdd_beside_the_checkout():
    """``python -m training.eval.tasks`` finds FSDD where the README says (``../shared/data/fsdd`` from the project
    root), where the tests find it too."""
    from conftest import SHARED

    from training.eval.tasks import DEFAULT_FSDD

    assert DEFAULT_FSDD == SHARED / "data" / "fsdd" / "recordings"
