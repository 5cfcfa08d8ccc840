"""Fitting: the paper's models and losses, FastDropout, masking, augmentation, the invariance loss, the typed config,
resume after kill -9, HDF5 input, DDP, run.sh --smoke."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.fit.losses import generalised_kl, nt_xent, tag_bce
from training.fit.networks import CNN, AudioDecoder, FastDropout, TagDecoder, use_fast_dropout

ROOT = Path(__file__).resolve().parents[2]


def test_decoder_and_cnn_keys_match_the_original():
    from test_model import _original_keys

    for module, section in ((AudioDecoder(), "AudioDecoder"), (TagDecoder(1000), "TagDecoder"), (CNN(1000), "CNN")):
        assert {k: list(v.shape) for k, v in module.state_dict().items()} == _original_keys(section), section
    assert sum(p.numel() for p in AudioDecoder().parameters()) == 1_052_163
    assert sum(p.numel() for p in TagDecoder(1000).parameters()) == 1_370_040
    assert sum(p.numel() for p in CNN(1000).parameters()) == 3_533_800


def test_generalised_kl_formula():
    x, xh = torch.rand(2, 1, 96, 96), torch.rand(2, 1, 96, 96)
    ref = (x * (torch.log(x + 1e-5) - torch.log(xh + 1e-5)) + (xh - x)).sum(-1).mean()
    torch.testing.assert_close(generalised_kl(xh, x), ref)
    assert generalised_kl(x, x).abs() < 1e-6


def test_nt_xent_against_a_plain_loop():
    torch.manual_seed(0)
    a, t = torch.randn(4, 8), torch.randn(4, 8)
    z = torch.cat([a, t])
    n, loss = 4, 0.0
    for i in range(2 * n):
        sims = [torch.exp(torch.cosine_similarity(z[i], z[j], dim=0) / 0.1) for j in range(2 * n) if j != i]
        pos = torch.exp(torch.cosine_similarity(z[i], z[(i + n) % (2 * n)], dim=0) / 0.1)
        loss += -torch.log(pos / sum(sims) + 1e-5)
    torch.testing.assert_close(nt_xent(a, t, 0.1), loss / (2 * n), rtol=1e-5, atol=1e-5)
    assert nt_xent(a, a * 3, 0.1) < nt_xent(a, t, 0.1)  # aligned pairs cost less


def test_tag_bce():
    p = torch.tensor([[0.9, 0.1]])
    y = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(tag_bce(p, y), -torch.log(torch.tensor(0.9)))


def test_fast_dropout_is_dropout():
    torch.manual_seed(0)
    d = FastDropout(0.25).train()
    x = torch.ones(64, 128, 24, 24).contiguous(memory_format=torch.channels_last)
    y = d(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.75))
    assert abs(y.mean().item() - 1.0) < 0.01  # expectation preserved
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(d.eval()(x), x)
    m = use_fast_dropout(AudioDecoder())
    assert sum(isinstance(k, FastDropout) for k in m.modules()) == 4
    assert not any(type(k) is torch.nn.Dropout for k in m.modules())


def test_spec_mask_drops_one_band_of_bins_and_one_of_frames():
    from training.fit.loop import spec_mask

    x = torch.rand(64, 1, 96, 96) + 0.5  # no zeros of its own
    y = spec_mask(x, 12, 20, torch.Generator().manual_seed(0))
    assert torch.equal(y, spec_mask(x, 12, 20, torch.Generator().manual_seed(0)))  # reproducible from the generator
    zero = y[:, 0] == 0
    rows, cols = zero.all(dim=2), zero.all(dim=1)  # mel bins / frames zeroed over the whole patch
    assert rows.sum(1).max() <= 12 and cols.sum(1).max() <= 20 and rows.any() and cols.any()
    assert torch.equal(zero, rows[:, :, None] | cols[:, None, :])  # nothing else is touched...
    assert torch.equal(y[~zero[:, None]], x[~zero[:, None]])  # ...and the rest is unchanged
    for r in list(rows) + list(cols):  # each band is contiguous
        idx = torch.nonzero(r).flatten()
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
    assert torch.equal(spec_mask(x, 0, 0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_product_is_bit_identical_to_the_plain_products(dtype):
    # FastDropout applies mask and scale in one addcmul each way; it must equal x * mask * scale exactly,
    # forward and backward, so that training runs stay the same as with the two products.
    torch.manual_seed(0)
    d = FastDropout(0.25).train()
    x = torch.randn(8, 16, 12, 12, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(1)
    y = d(x)
    g = torch.randn_like(y)
    y.backward(g)
    torch.manual_seed(1)  # the same random bytes again: the plain formula with the same mask
    bits = torch.empty((x.numel() + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
    mask = (bits.view(torch.uint8)[: x.numel()].view(8, 12, 12, 16).permute(0, 3, 1, 2) >= 64).to(dtype)
    x2 = x.detach().clone().requires_grad_()
    y2 = x2 * mask * (256.0 / 192)
    y2.backward(g)
    assert torch.equal(y, y2) and torch.equal(x.grad, x2.grad)


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    r = subprocess.run([sys.executable, "-m", "training.corpus", "--data", str(data), "--smoke", "--hdf5", "--workers", "1"],
                       cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return data


def _train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    # device=cpu unless a test says otherwise: these tests are about the CPU path, also on a machine with a GPU
    sets = ["max_samples=768", "min_samples=768", "batch_size=16", "threads=1", "checkpoint_steps=8", "device=cpu",
            *extra]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "training.fit",
        "training/configs/ae_c.json",
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        *sets,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt.pt", weights_only=True)["models"]["audio_encoder"]


def _kill_and_resume(smoke_data: Path, tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """An uninterrupted run, and a run killed with SIGKILL after its first checkpoints and then resumed."""
    ref = tmp_path / "ref"
    assert _train(smoke_data, ref, *extra).wait() == 0
    out = tmp_path / "run"
    p = _train(smoke_data, out, *extra)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (
            (out / "ckpt.pt").exists()
            and (out / "steps.csv").exists()
            and (out / "steps.csv").read_text().count("\n") >= 2
        ):
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "DONE").exists()
    p = _train(smoke_data, out, *extra)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "resumed from" in log, log[-3000:]
    return out, ref


@pytest.mark.slow
def test_resume_after_kill_9_continues_exactly(smoke_data, tmp_path):
    # with on-the-fly augmentation and tag dropout, whose draws are seeded by step, so a resume repeats them
    # and the invariance loss, whose second views (crops and augmentation) are drawn from their own seeded stream
    out, ref = _kill_and_resume(smoke_data, tmp_path, "augment.mix=0.5", "augment.pitch=2", "augment.noise=0.5",
                                "tag_dropout=0.2", "loss_weights.view=10", "view.partner=0.5")  # fmt: skip
    a, b = _weights(out), _weights(ref)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)  # same steps, same data, same RNG: identical
    assert (out / "losses.csv").exists() and (out / "losses.png").exists() and (out / "best.pt").exists()
    assert json.loads((out / "config.json").read_text())["batch_size"] == 16


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_continues_exactly(smoke_data, tmp_path):
    # bf16 autocast and dropout masks drawn on the GPU (its RNG state is checkpointed); deterministic kernels
    out, ref = _kill_and_resume(smoke_data, tmp_path, "device=cuda", "deterministic=true")
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert "cuda_rng" in saved and next(iter(saved["models"]["audio_encoder"].values())).is_cuda
    a, b = _weights(out), _weights(ref)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_run_never_continues_on_a_rebuilt_corpus(smoke_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(smoke_data / "corpus", data / "corpus")
    out = tmp_path / "run"
    p = _train(data, out, "max_samples=32", "min_samples=32")
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log[-2000:]
    before = (out / "ckpt.pt").read_bytes()
    index = dict(np.load(data / "corpus" / "index.npz"))  # the corpus rebuilt: one sound's tags differ
    index["labels"][0] = 1 - index["labels"][0]
    np.savez(data / "corpus" / "index.npz", **index)
    p = _train(data, out, "max_samples=64", "min_samples=64")  # a longer run would continue this one
    log, _ = p.communicate(timeout=300)
    assert p.returncode != 0 and "was trained on another version of corpus 'corpus'" in log, log[-2000:]
    assert "Start a new run" in log and "Traceback" not in log
    assert (out / "ckpt.pt").read_bytes() == before


@pytest.mark.slow
def test_trains_from_the_original_hdf5_layout(smoke_data, tmp_path):
    corpus = smoke_data / "corpus"
    p = _train(smoke_data, tmp_path / "h5", f"hdf5_train={corpus / 'train.h5'}", f"hdf5_val={corpus / 'val.h5'}",
               f"vocabulary={corpus / 'vocabulary.json'}", "max_samples=64", "min_samples=64",
               "lr_milestones=[[32,0.1]]")  # fmt: skip
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log[-2000:]
    row = json.loads((tmp_path / "h5" / "DONE").read_text())
    assert row["val_contrastive"] > 0
    # the step decay reached the optimisers (lr 1e-3 until 32 samples, then 1e-4)
    optims = torch.load(tmp_path / "h5" / "ckpt.pt", weights_only=True)["optims"]
    assert [g["lr"] for o in optims for g in o["param_groups"]] == pytest.approx([1e-4, 1e-4])


def test_learning_rate_step_decay():
    from training.fit.config import TrainConfig
    from training.fit.loop import learning_rate

    cfg = TrainConfig(lr=1e-3, lr_milestones=((800, 0.01), (500, 0.1)))
    assert [learning_rate(cfg, n) for n in (0, 499, 500, 799, 800, 10**6)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5]
    )
    assert learning_rate(TrainConfig(lr=5e-3), 10**9) == 5e-3


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(smoke_data, tmp_path):
    import socket

    out = tmp_path / "ddp"
    # One retry: under a loaded test run, gloo's rendezvous has aborted a rank once in a while (SIGABRT before
    # training starts; not reproduced in isolation). Agreement itself is asserted on every successful run.
    for _attempt in range(2):
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", port, "-m", "training.fit", "training/configs/ae_c.json", "--data", str(smoke_data),
               "--out", str(out), "--set", "max_samples=256", "min_samples=256", "batch_size=16", "threads=1", "device=cpu"]  # fmt: skip
        r = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["world"] == 2 and check["agree"]


@pytest.mark.slow
def test_run_sh_smoke(tmp_path, ship):
    env = {**os.environ, "COALA_EMBED_DATA": str(tmp_path)}
    r = subprocess.run(
        ["bash", "training/run.sh", "--smoke", "--set", "fast_dropout=false"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s0, s1 = f"{ship}_s0", f"{ship}_s1"
    weights = tmp_path / "smoke" / "weights"
    from coala_embed import load_model

    model = load_model(weights, device="cpu")
    assert model.config.trained and len(model.config.tags) > 5
    assert "## Evaluation" in (weights / "README.md").read_text()
    results = json.loads((tmp_path / "smoke" / "eval" / "results_test.json").read_text())
    assert {r["embedding"] for r in results["rows"]} >= {"mfcc", ship, "e_c", "cnn", "random"}
    # the shipped checkpoint is the one the selection stage chose on the validation splits, between the seeds too
    runs = tmp_path / "smoke" / "runs"
    seeds = json.loads((runs / f"{ship}_seeds.json").read_text())
    assert sorted(seeds["runs"]) == [s0, s1] and os.readlink(runs / ship) == seeds["selected"]
    best = max(seeds["runs"].values(), key=lambda r: r["mean_val_accuracy"])
    assert seeds["runs"][seeds["selected"]] == best
    selected = json.loads((runs / ship / "selected.json").read_text())
    assert model.config.info["checkpoint"] == selected["checkpoint"] == best["checkpoint"]
    assert selected["checkpoint"] in selected["means"]
    # the link and the run it points to are one checkpoint: the same scores (scored once)
    by = {(r["embedding"], r["task"], r["recipe"]): r["mlp_runs"] for r in results["rows"]}
    linked = [(t, rc) for e, t, rc in by if e == ship]
    assert linked and all(by[ship, t, rc] == by[seeds["selected"], t, rc] for t, rc in linked)
    # the test table reports the spread between the seeds: each task's mean and std over the two runs
    groups = [g for g in results["groups"] if g["group"] == ship]
    assert {g["task"] for g in groups} == {r["task"] for r in results["rows"]} - {"digits_loso"}
    for g in groups:
        accs = [r["mlp_mean"] for r in results["rows"] if r["task"] == g["task"] and r["recipe"] == g["recipe"]
                and r["embedding"] in (s0, s1)]  # fmt: skip
        assert g["accuracies"] == accs and abs(g["mean"] - sum(accs) / 2) < 1e-12
    assert model.config.tag_sets and len(model.config.tag_sets) == len(model.config.tag_set_counts)
    # run.sh --set reaches every training run
    for run in (s0, s1, "e_c", "cnn"):
        assert json.loads((runs / run / "config.json").read_text())["fast_dropout"] is False


def test_augmentation_off_is_the_identity_and_on_is_reproducible():
    from training.fit.augment import Augment, augment

    x = torch.randn(16, 96, 96) - 6
    tags = (torch.rand(16, 40) < 0.1).float()
    y, t = augment(x, tags, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(y, x) and torch.equal(t, tags)
    aug = Augment(mix=0.5, gain_db=6, eq_db=6, pitch=2, reverb=0.5, noise=0.5)
    wide = torch.randn(16, 96, 96 + aug.extra_frames) - 6
    a, ta = augment(wide, tags, aug, torch.Generator().manual_seed(1))
    b, tb = augment(wide, tags, aug, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(ta, tb) and a.shape == (16, 96, 96) and torch.isfinite(a).all()
    assert not torch.equal(a, wide[..., :96])


def test_mixing_adds_magnitudes_and_unites_the_tags():
    from training.fit.augment import Augment, augment

    x = torch.full((4, 96, 96), -20.0)
    x[0, :10] = 0.0  # sound 0: energy in the low bands only
    x[1, 50:] = 0.0  # sound 1: in the high bands only
    tags = torch.eye(4)
    gen = torch.Generator().manual_seed(0)
    y, t = augment(x, tags, Augment(mix=1.0, mix_db=0.0), gen)
    # every patch is mixed with a partner at 0 dB: each output holds both its own and its partner's energy,
    # and its target both tag sets
    for i in range(4):
        partners = [j for j in range(4) if t[i, j] == 1 and j != i]
        assert t[i, i] == 1 and len(partners) <= 1
        if partners:
            expected = torch.logaddexp(x[i], x[partners[0]])
            torch.testing.assert_close(y[i], expected)


def test_a_background_mix_sits_under_the_patch():
    from training.fit.augment import DB, Augment, augment

    x = torch.full((2, 96, 96), -20.0)
    x[0, :10] = 0.0
    x[1, 50:] = 0.0
    for seed in range(4):
        y, t = augment(
            x, torch.eye(2), Augment(mix=1.0, mix_db=0.0, mix_below_db=10.0), torch.Generator().manual_seed(seed)
        )
        for i in range(2):  # each patch's partner (itself or the other, as its tags say) is added exactly 10 dB under
            j = 1 - i if t[i, 1 - i] else i
            torch.testing.assert_close(y[i], torch.logaddexp(x[i], x[j] - 10 * DB))


def test_the_invariance_loss_pairs_two_views_of_each_sound(smoke_data):
    """``loss_weights.view`` adds a projection head trained with the audio side, second views drawn from the
    same sound's patch range, and a ``view`` loss that is low for identical views and high for unrelated ones."""
    from dataclasses import replace

    from training.fit.config import load_config
    from training.fit.data import PatchData, second_view
    from training.fit.loop import build_models, build_optimizers, step_losses

    cfg = load_config("training/configs/ae_c.json", ["loss_weights.view=10"])
    assert cfg.loss_weights.audio == 5.0  # the file's weights are kept beside the new key
    data = PatchData(smoke_data / "corpus", cfg)
    models = build_models(cfg, data.labels.shape[1])
    head = {id(p) for p in models["view_head"].parameters()}
    audio_side = {id(p) for p in build_optimizers(cfg, models)[0].param_groups[0]["params"]}
    assert head <= audio_side
    assert "view_head" not in build_models(load_config("training/configs/ae_c.json"), data.labels.shape[1])

    idx = torch.arange(16)
    starts = data.train_start[idx]
    plain = replace(cfg, view=replace(cfg.view, crop=True))
    from training.fit.augment import Augment

    gen_views = [second_view(plain, data, idx, starts, Augment(), s, None) for s in (1, 2)]
    assert not torch.equal(gen_views[0], gen_views[1])  # other crops of the sounds
    same = second_view(replace(plain, view=replace(plain.view, crop=False)), data, idx, starts, Augment(), 1, None)
    torch.testing.assert_close(same, data.patches(starts))  # no crop, no augmentation: the first view itself
    # partners: the training sounds that share a sound's raw tags (manifest.csv), itself included
    import csv

    with open(smoke_data / "corpus" / "manifest.csv", newline="") as f:
        raw = [r["raw_tags"] for r in csv.DictReader(f)]
    sounds = data.train_sound.unique()
    shared = 0
    for sound in sounds.tolist():
        a, n = int(data.group_start[sound]), int(data.group_count[sound])
        group = data.group_members[a : a + n].tolist()
        assert sound in group and {raw[g] for g in group} == {raw[sound]}
        shared += n > 1
    assert shared > 0
    partner = replace(cfg, view=replace(cfg.view, partner=1.0))
    views = second_view(partner, data, idx, starts, Augment(), 3, None)
    assert views.shape == (16, 1, 96, 96) and torch.isfinite(views).all()
    for m in models.values():
        m.eval()
    x = data.patches(starts)
    with torch.no_grad():
        identical = step_losses(cfg, models, x, data.labels[data.train_sound[idx]], x_view=x)["view"]
        shuffled = step_losses(cfg, models, x, data.labels[data.train_sound[idx]], x_view=x.flip(0))["view"]
    assert float(identical) < float(shuffled)


def test_the_invariance_loss_on_z_max_trains_the_block_maxima(smoke_data):
    """``view.readout=z+max`` (recipe ``litemax``) gives the projection head z and the maxima of blocks 1-4 (1664
    columns), so the view loss's gradient reaches the first block through its maxima, not only through z."""
    from training.fit.config import load_config
    from training.fit.data import PatchData
    from training.fit.loop import build_models, step_losses

    cfg = load_config("training/configs/experiments/litemax.json")
    assert cfg.view.readout == "z+max" and cfg.loss_weights.audio == 0
    data = PatchData(smoke_data / "corpus", cfg)
    models = build_models(cfg, data.labels.shape[1])
    assert models["view_head"].head[0].in_features == 1152 + 4 * 128
    idx = torch.arange(16)
    x = data.patches(data.train_start[idx])
    tags = data.labels[data.train_sound[idx]]
    losses = step_losses(cfg, models, x, tags, x_view=x + 0.1 * torch.randn_like(x))
    losses["view"].backward()
    grad = models["view_head"].head[0].weight.grad
    assert grad[:, 1152:].abs().sum() > 0  # the maxima's columns are trained
    assert models["audio_encoder"].audio_encoder[0].weight.grad.abs().sum() > 0


def test_pitch_shift_moves_a_tone_up_the_mel_axis():
    from training.fit.augment import mel_centres, resample_patches

    c = mel_centres()
    x = torch.full((2, 96, 120), -20.0)
    x[:, 40] = 0.0  # one band lit
    y = resample_patches(x, torch.tensor([1.0, 2 ** (2 / 12)]), c, 96)
    torch.testing.assert_close(y[0], x[0, :, :96], atol=1e-3, rtol=0)
    peak = int(y[1, :, 0].argmax())
    assert peak > 40  # two semitones up: higher bands
    assert abs(c[peak] / c[40] - 2 ** (2 / 12)) < 0.06


def test_tag_dropout_keeps_at_least_one_tag():
    from training.fit.augment import drop_tags

    tags = (torch.rand(256, 30) < 0.1).float()
    tags[:, 0] = 1
    out = drop_tags(tags, 0.9, torch.Generator().manual_seed(0))
    assert (out <= tags).all() and (out.sum(1) >= 1).all() and out.sum() < tags.sum() * 0.5
    assert torch.equal(drop_tags(tags, 0.0, torch.Generator()), tags)


def test_weight_decay_selects_adamw():
    from training.fit.config import TrainConfig
    from training.fit.loop import build_models, build_optimizers

    cfg = TrainConfig(weight_decay=0.01)
    opts = build_optimizers(cfg, build_models(cfg, 10))
    assert all(isinstance(o, torch.optim.AdamW) and o.defaults["weight_decay"] == 0.01 for o in opts)
    plain = TrainConfig()
    assert all(type(o) is torch.optim.Adam for o in build_optimizers(plain, build_models(plain, 10)))


def test_the_run_config_carries_the_model_and_the_corpus_its_front_end(tmp_path):
    """Encoder dimensions come from the run's ``model`` setting (as ModelConfig), and the checkpoint's front-end
    from the corpus's ``frontend.json``: nothing is rebuilt from code defaults behind the config's back."""
    import json

    from coala_embed.config import FrontendConfig
    from training.fit.checkpoints import corpus_frontend, model_config
    from training.fit.config import load_config
    from training.fit.loop import build_models

    cfg = load_config(
        "training/configs/ae_c.json", ["model.channels=32", "model.embedding_dim=288", "model.dropout=0.1"]
    )
    models = build_models(cfg, n_tags=7)
    assert models["audio_encoder"].audio_encoder[0].out_channels == 32
    assert models["audio_encoder"].fc_audio[0].in_features == 288
    assert models["tag_decoder"].tag_decoder[0].in_features == 288
    saved = cfg.to_dict()  # what a checkpoint holds, as export and evaluation read it
    assert model_config(saved, 7).dropout == 0.1 and model_config(saved, 7).n_tags == 7
    (tmp_path / "frontend.json").write_text(
        json.dumps({**FrontendConfig().__dict__, "n_mels": 64, "pooling": "original"})
    )
    fe = corpus_frontend(tmp_path)
    assert fe.n_mels == 64 and fe.pooling == "signal"
    assert corpus_frontend(tmp_path / "none") == FrontendConfig()


def test_train_config_refuses_unknown_keys_wrong_types_and_ranges(tmp_path):
    """Every setting is checked before a run starts, with its name in the message; a config written by a run
    reads back equal."""
    import json

    from training.fit.config import ConfigError, TrainConfig, load_config

    base = "training/configs/ae_c.json"
    for sets, words in ((["lr=fast"], "lr must be float"), (["bogus=1"], "unknown setting 'bogus'"),
                        (["view.bogus=1"], "view.bogus"), (["seed=1.5"], "seed must be int"),
                        (["variant=vae"], "variant must be one of"), (["bf16=maybe"], "bf16"),
                        (["view.partner=2"], "view.partner must be in [0, 1]"), (["max_samples=0"], "max_samples"),
                        (["min_samples=9000000"], "min_samples"), (["lr"], "KEY=VALUE"),
                        (["augment.pitch=\"2\""], "augment.pitch must be float")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_config(base, sets)
    (tmp_path / "bad.json").write_text(json.dumps({"extends": str(Path(base).resolve()), "loss_weights": {"x": 1}}))
    with pytest.raises(ConfigError, match="unknown setting 'loss_weights.x'"):
        load_config(tmp_path / "bad.json")
    cfg = load_config("training/configs/experiments/lite.json", ["seed=3"])
    assert cfg.loss_weights.audio == 0.0 and cfg.loss_weights.view == 10.0 and cfg.seed == 3
    assert cfg.lr_milestones == ((400_000, 0.1), (700_000, 0.01))
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert "n_tags" not in cfg.to_dict()["model"]
