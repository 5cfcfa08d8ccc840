"""What no peer offers: zero-shot tags and search, the HEAR API, the converter for the authors' checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import SHARED, SR, noise, sine

from coala_embed import hear, load_model
from coala_embed.cli import main
from coala_embed.convert import convert_original
from coala_embed.errors import CheckpointError, CoalaEmbedError
from coala_embed.model import AudioEncoder, TagEncoder
from coala_embed.tags import UnknownTagError, predict_tags, query_vector, search, tag_projections, tag_scores

SETS = ((0, 1), (2,), (3, 4, 5))
COUNTS = (1, 2, 1)


def test_predict_tags_ranks_by_cosine(model):
    assert not model.config.tag_sets  # so "auto" means one-hot here
    tags = predict_tags(sine(440, 3.0), SR, model=model, top_k=3)
    assert len(tags) == 3 and all(t in model.config.tags for t, _ in tags)
    scores = [s for _, s in tags]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    # the top tag is the vocabulary word whose projection is closest to the sound's projection
    from coala_embed import get_embedding

    z = torch.from_numpy(get_embedding(sine(440, 3.0), SR, model=model))[None]
    with torch.no_grad():
        sims = F.cosine_similarity(model.project_audio(z), tag_projections(model))
    assert tags[0][0] == model.config.tags[int(sims.argmax())]


@pytest.fixture(scope="module")
def set_model(tmp_path_factory):
    """The random test model with three training tag sets, saved and loaded back."""
    import dataclasses

    from conftest import random_model

    from coala_embed import save_pretrained

    m = random_model()
    m.config = dataclasses.replace(m.config, tag_sets=SETS, tag_set_counts=COUNTS)
    folder = tmp_path_factory.mktemp("sets")
    save_pretrained(m, folder, trained=False)
    return load_model(folder, device="cpu")


def test_neighbour_tags_are_the_votes_of_the_nearest_sets(set_model):
    from coala_embed import get_embedding

    assert set_model.config.tag_sets == SETS and set_model.config.tag_set_counts == COUNTS  # survived the round trip
    z = torch.from_numpy(get_embedding(noise(3.0), SR, model=set_model))[None]
    multi_hot = torch.zeros(3, 8)
    for r, s in enumerate(SETS):
        multi_hot[r, list(s)] = 1
    with torch.no_grad():
        nearest = int(F.cosine_similarity(set_model.project_audio(z), set_model.tag_projection(multi_hot)).argmax())
    top1 = tag_scores(set_model, z, method="neighbours", k=1)[0]
    assert torch.equal(top1, multi_hot[nearest])  # one neighbour: its tags get the whole vote
    flat = tag_scores(set_model, z, method="neighbours", k=3, temperature=1e9)[0]  # equal similarity weights
    expected = (torch.tensor(COUNTS, dtype=torch.float32)[:, None] * multi_hot).sum(0) / sum(COUNTS)
    torch.testing.assert_close(flat, expected)
    tags = predict_tags(noise(3.0), SR, model=set_model, top_k=2)  # auto -> neighbours
    assert all(0 <= s <= 1 for _, s in tags) and tags[0][1] >= tags[1][1]
    with pytest.raises(CoalaEmbedError, match="method must be one of"):
        tag_scores(set_model, z, method="knn")


def test_tag_sets_are_checked_on_load(weights_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(weights_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(tag_sets=[[0, 99]], tag_set_counts=[1])  # index 99 is outside the 8-word vocabulary
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="tag_sets"):
        load_model(bad, device="cpu")


def test_search_and_unknown_words(model):
    emb = np.stack(
        [get_emb for get_emb in (np.random.default_rng(i).random(1152).astype(np.float32) for i in range(5))]
    )
    hits = search("tag1 tag3", emb, model=model, top_k=5)
    assert sorted(r for r, _ in hits) == [0, 1, 2, 3, 4]
    assert query_vector(model, "TAG1 tag3s").sum() == 2  # case and plural forgiven
    with pytest.raises(UnknownTagError, match="near words: tag"):
        search("tagg", emb, model=model)
    with pytest.raises(UnknownTagError, match="no vocabulary word is spelled like it .`coala-embed vocab`"):
        search("xylophone", emb, model=model)


def test_cli_tags_and_search(weights_dir, audio_dir, tmp_path):
    r = CliRunner().invoke(
        main, ["tags", str(audio_dir / "clip0.wav"), "--weights", str(weights_dir), "-k", "2", "--json"]
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out[str(audio_dir / "clip0.wav")]) == 2
    feats = tmp_path / "f.npy"
    assert (
        CliRunner().invoke(main, [str(audio_dir), "-o", str(feats), "--weights", str(weights_dir), "-q"]).exit_code == 0
    )
    r = CliRunner().invoke(main, ["search", str(feats), "tag2", "--weights", str(weights_dir), "-k", "3"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 3 and str(audio_dir) in r.output
    r = CliRunner().invoke(main, ["search", str(feats), "zebra", "--weights", str(weights_dir)])
    assert r.exit_code == 2 and "not in the tag vocabulary" in r.output


# ------------------------------------------------------------------------------------------------ HEAR
@pytest.fixture(scope="module")
def hear_model(weights_dir):
    return hear.load_model(str(weights_dir), device="cpu")


def test_hear_attributes(hear_model):
    assert hear_model.sample_rate == 22_050
    assert hear_model.scene_embedding_size == hear_model.timestamp_embedding_size == 1152


def test_hear_timestamp_embeddings(hear_model):
    audio = torch.from_numpy(np.stack([noise(4.0, 22_050, seed=1), sine(440, 4.0, 22_050)]))
    emb, ts = hear.get_timestamp_embeddings(audio, hear_model)
    assert emb.shape[0] == 2 and emb.shape[2] == 1152 and ts.shape == emb.shape[:2]
    step = 12 * 512 / 22_000 * 1000
    np.testing.assert_allclose(ts[0].numpy(), np.arange(ts.shape[1]) * step)
    assert ts[0, 0] == 0 and ts[0, -1] <= 4000
    # batch equivalence: each sound alone gives the same rows
    alone, _ = hear.get_timestamp_embeddings(audio[1:], hear_model)
    torch.testing.assert_close(alone[0], emb[1], atol=1e-5, rtol=0)


def test_hear_finer_hop_for_event_detection(weights_dir):
    m = hear.load_model(str(weights_dir), device="cpu", hop_frames=2)
    audio = torch.from_numpy(noise(4.0, 22_050, seed=2)[None])
    emb, ts = hear.get_timestamp_embeddings(audio, m)
    step = np.diff(ts[0].numpy())
    np.testing.assert_allclose(step, 2 * 512 / 22_000 * 1000)  # 46.5 ms, under HEAR's advised 50 ms
    coarse, ts12 = hear.get_timestamp_embeddings(audio, hear.load_model(str(weights_dir), device="cpu"))
    # every 6th fine timestamp is a coarse one, with the same embedding
    torch.testing.assert_close(emb[0, ::6][: coarse.shape[1]], coarse[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ts[0, ::6][: ts12.shape[1]].numpy(), ts12[0].numpy())


def test_get_embedding_frames_with_a_finer_hop(model):
    from coala_embed import get_embedding

    x = noise(6.0, 22_000, seed=3)
    fine, t_fine = get_embedding(x, 22_000, model=model, frames=True, hop_frames=2)
    coarse, t_coarse = get_embedding(x, 22_000, model=model, frames=True)
    np.testing.assert_allclose(np.diff(t_fine[:, 0])[:-1], 2 * 512 / 22_000)  # the last patch ends on the last frame
    assert len(fine) > 20 * len(coarse)
    np.testing.assert_allclose(fine[0], coarse[0], atol=1e-5)  # the first patch is the same patch


def test_hear_scene_embeddings(hear_model):
    audio = torch.from_numpy(np.stack([noise(3.0, 22_050), sine(300, 3.0, 22_050), sine(900, 3.0, 22_050)]))
    scene = hear.get_scene_embeddings(audio, hear_model)
    assert scene.shape == (3, 1152) and scene.dtype == torch.float32
    torch.testing.assert_close(hear.get_scene_embeddings(audio[2:], hear_model)[0], scene[2], atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hear_on_cuda(weights_dir):
    m = hear.load_model(str(weights_dir), device="cuda")
    emb, ts = hear.get_timestamp_embeddings(torch.rand(2, 22_050 * 3) - 0.5, m)
    assert emb.shape[-1] == 1152


# ------------------------------------------------------------------------------------------------ converter
def _original_files(tmp_path):
    """A synthetic checkpoint with exactly the original keys and shapes, saved as the authors did."""
    torch.manual_seed(7)
    audio, tag = AudioEncoder(), TagEncoder(1000)
    with torch.no_grad():
        for m in audio.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    a_sd = {k: v.clone() for k, v in audio.state_dict().items()}
    torch.save(a_sd, tmp_path / "audio_encoder_epoch_200.pt")
    torch.save(tag.state_dict(), tmp_path / "tag_encoder_epoch_200.pt")
    return a_sd


def _original_forward(sd: dict, x: torch.Tensor, scaler: dict) -> torch.Tensor:
    """The original encode.py, written out: scale per time column, 5 x (conv, BN eval, ReLU), flatten."""
    x = x * torch.tensor(scaler["scale_"], dtype=torch.float32) + torch.tensor(scaler["min_"], dtype=torch.float32)
    x = x.unsqueeze(1)
    for conv, bn in ((0, 1), (4, 5), (8, 9), (12, 13), (16, 17)):
        x = F.conv2d(x, sd[f"audio_encoder.{conv}.weight"], sd[f"audio_encoder.{conv}.bias"], stride=2, padding=1)
        x = F.batch_norm(x, sd[f"audio_encoder.{bn}.running_mean"], sd[f"audio_encoder.{bn}.running_var"],
                         sd[f"audio_encoder.{bn}.weight"], sd[f"audio_encoder.{bn}.bias"], training=False, eps=1e-5)  # fmt: skip
        x = F.relu(x)
    return x.reshape(len(x), -1)


def test_converter_matches_the_original_forward(tmp_path):
    scaler_file = SHARED / "coala" / "scaler_top_1000_params.json"
    if not scaler_file.exists():
        pytest.skip("../shared/coala is not beside the checkout")
    sd = _original_files(tmp_path)
    vocab = {str(i): f"word{i}" for i in range(1000)}
    (tmp_path / "id2token.json").write_text(json.dumps(vocab))
    out = convert_original(tmp_path / "audio_encoder_epoch_200.pt", scaler_file, tmp_path / "converted",
                           tag_encoder=tmp_path / "tag_encoder_epoch_200.pt", vocabulary=tmp_path / "id2token.json")  # fmt: skip
    model = load_model(out, device="cpu")
    assert model.config.tags[:2] == ("word0", "word1") and model.config.frontend.pooling == "original"
    x = torch.randn(6, 96, 96) * 3 - 6
    with torch.no_grad():
        ours = model(x)
    ref = _original_forward(sd, x, json.loads(scaler_file.read_text()))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_converter_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"audio_encoder.0.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_original(tmp_path / "evil.pt", SHARED / "coala" / "scaler_top_1000_params.json", tmp_path / "out")


def test_cli_vocab_lists_the_checkpoints_words(weights_dir):
    from click.testing import CliRunner

    from coala_embed.cli import main

    r = CliRunner().invoke(main, ["vocab", "--weights", str(weights_dir)])
    assert r.exit_code == 0 and r.output.split() == [f"tag{i}" for i in range(8)]
