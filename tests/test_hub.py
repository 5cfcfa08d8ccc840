"""Weight resolution, strict safetensors loading, save_pretrained, and the Hub path against a fake Hub."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch
from conftest import random_model
from fake_hub import FakeHub
from safetensors.torch import load_file, save_file

from coala_embed import CheckpointError, HubError, NoPretrainedWeightsError, load_model, save_pretrained
from coala_embed import hub as hub_module
from coala_embed.config import CoalaConfig


def test_save_pretrained_round_trips(tmp_path):
    model = random_model(seed=3)
    save_pretrained(model, tmp_path, trained=True, info={"note": "x"})
    loaded = load_model(tmp_path, device="cpu", optimize=False)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["trained"] is True and cfg["info"]["note"] == "x" and len(cfg["info"]["sha256"]) == 64
    assert loaded.config.tags == model.config.tags
    assert not list(tmp_path.glob("*.tmp"))  # temporary files renamed away


def test_missing_weights_file(weights_dir, tmp_path):
    shutil.copy(weights_dir / "config.json", tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_model(tmp_path)


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def _without_sha(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["info"].pop("sha256")
    (folder / "config.json").write_text(json.dumps(cfg))


def test_wrong_keys_are_refused(weights_dir, tmp_path):
    shutil.copytree(weights_dir, tmp_path / "w")
    state = load_file(tmp_path / "w" / "model.safetensors")
    state["extra.weight"] = torch.zeros(3)
    del state["audio.fc_audio.0.weight"]
    save_file(state, tmp_path / "w" / "model.safetensors")
    _without_sha(tmp_path / "w")
    with pytest.raises(
        CheckpointError, match=r"missing keys \['audio.fc_audio.0.weight'\].*unexpected keys \['extra.weight'\]"
    ):
        load_model(tmp_path / "w")


def test_wrong_shapes_are_refused(weights_dir, tmp_path):
    shutil.copytree(weights_dir, tmp_path / "w")
    state = load_file(tmp_path / "w" / "model.safetensors")
    state["audio.fc_audio.0.weight"] = torch.zeros(10, 10)
    save_file(state, tmp_path / "w" / "model.safetensors")
    _without_sha(tmp_path / "w")
    with pytest.raises(CheckpointError, match="wrong tensor shapes"):
        load_model(tmp_path / "w")


def test_corrupt_file_is_refused(weights_dir, tmp_path):
    shutil.copytree(weights_dir, tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        load_model(tmp_path / "w")
    _without_sha(tmp_path / "w")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "w")


def test_resolution_order(weights_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    save_pretrained(random_model(seed=9), other, trained=False)
    monkeypatch.setenv("COALA_EMBED_WEIGHTS", str(other))
    from_env = load_model(device="cpu", optimize=False)
    assert torch.equal(from_env.audio.fc_audio[0].weight, random_model(seed=9).audio.fc_audio[0].weight)
    from_arg = load_model(weights_dir, device="cpu", optimize=False)  # the argument wins over the variable
    assert torch.equal(from_arg.audio.fc_audio[0].weight, random_model(seed=0).audio.fc_audio[0].weight)


def test_default_refuses_untrained_weights(weights_dir, monkeypatch):
    monkeypatch.setattr(hub_module, "default_weights_dir", lambda: weights_dir)
    with pytest.raises(NoPretrainedWeightsError, match="untrained"):
        load_model()


def test_default_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(hub_module, "default_weights_dir", lambda: tmp_path)
    with pytest.raises(NoPretrainedWeightsError, match="no trained checkpoint"):
        load_model()


def test_bundled_default_checkpoint_loads_if_trained():
    folder = hub_module.default_weights_dir()
    if not (folder / "config.json").exists() or not CoalaConfig.load(folder / "config.json").trained:
        pytest.skip("weights/ holds no trained checkpoint yet")
    model = load_model(device="cpu")
    assert model.config.trained


def test_not_a_folder_nor_a_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder"):
        load_model(str(tmp_path / "missing-folder"))


# --------------------------------------------------------------------------------------- the Hub path
@pytest.fixture()
def hub(weights_dir, tmp_path, monkeypatch):
    v2 = tmp_path / "v2"
    save_pretrained(random_model(seed=5), v2, trained=True)
    repos = {"acme/coala-test": {"main": weights_dir, "v2": v2}, "acme/empty": {"main": tmp_path / "nothing"}}
    (tmp_path / "nothing").mkdir()
    with FakeHub(repos) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants as c

        importlib.reload(c)  # the endpoint and cache folders are read at import
        yield server
    importlib.reload(c)


def test_hub_download_with_revision(hub):
    main = load_model("acme/coala-test", device="cpu", optimize=False)
    v2 = load_model("acme/coala-test@v2", device="cpu", optimize=False)
    assert torch.equal(main.audio.fc_audio[0].weight, random_model(seed=0).audio.fc_audio[0].weight)
    assert torch.equal(v2.audio.fc_audio[0].weight, random_model(seed=5).audio.fc_audio[0].weight)
    assert any("/acme/coala-test/resolve/v2/model.safetensors" in r for r in hub.requests)


def test_hub_cached_then_offline(hub, monkeypatch):
    load_model("acme/coala-test", device="cpu")
    n = len(hub.requests)
    offline = load_model("acme/coala-test", device="cpu", local_files_only=True)
    assert offline is not None and len(hub.requests) == n  # served from the cache, no request


def test_hub_offline_not_cached(hub):
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        load_model("acme/coala-test@v2", local_files_only=True)


def test_hub_unknown_revision(hub):
    with pytest.raises(HubError, match="revision 'nope' does not exist"):
        load_model("acme/coala-test@nope")


def test_hub_unknown_repo(hub):
    with pytest.raises(HubError, match="no such model repo"):
        load_model("acme/missing")


def test_hub_repo_without_checkpoint(hub):
    with pytest.raises(HubError, match="no config.json or model.safetensors"):
        load_model("acme/empty")


def test_hub_offline_env(hub, monkeypatch):
    load_model("acme/coala-test", device="cpu")  # cached now
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    importlib.reload(c)
    assert load_model("acme/coala-test", device="cpu") is not None  # from the cache
    with pytest.raises(HubError, match="offline"):
        load_model("acme/coala-test@v2")
