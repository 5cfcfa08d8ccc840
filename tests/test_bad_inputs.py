"""Bad input and faults, as a table: each case gives a clear, typed error (API) or a manifest entry with exit
status 1 (CLI) while every other file is still embedded, or a usage error (exit 2) before any work."""

from __future__ import annotations

import json
import os
import wave

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import noise, sine

from coala_embed import AudioError, get_embedding
from coala_embed.cli import main

SR = 22_000


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------ the API
API_ERRORS = {
    "int64 samples (no PCM scale)": (np.arange(30_000, dtype=np.int64), SR, "int64 samples have no PCM scale"),
    "uint64 samples": (np.arange(30_000, dtype=np.uint64), SR, "uint64 samples have no PCM scale"),
    "a list of Python ints": ([0, 1, -1] * 10_000, SR, "a list of Python ints becomes int64"),
    "a torch int64 tensor": (torch.arange(30_000), SR, "int64 samples have no PCM scale"),
    "empty array": (np.zeros(0, np.float32), SR, "empty"),
    "zero channels": (np.zeros((0, 100), np.float32), SR, "empty"),
    "NaN": (np.array([0.0, np.nan] * 100, np.float32), SR, "NaN or Inf"),
    "Inf": (np.array([0.0, np.inf] * 100, np.float32), SR, "NaN or Inf"),
    "3-D array": (np.zeros((2, 2, 100), np.float32), SR, "1-D or 2-D"),
    "strings": (np.array(["a", "b"]), SR, "numeric"),
    "sample rate 0": (noise(1.0), 0, "outside 1,000-1,000,000 Hz"),
    "negative sample rate": (noise(1.0), -22_000, "outside"),
    "non-integer sample rate": (noise(1.0), 22_050.5, "integer number of Hz"),
    "sample rate True": (noise(1.0), True, "integer number of Hz"),
    "sample rate 1 (would be hours at 22 kHz)": (noise(1.0), 1, "outside 1,000"),
    "1 sample at 44.1 kHz": (np.ones(1, np.float32), 44_100, "too short to resample"),
}


@pytest.mark.parametrize("case", list(API_ERRORS))
def test_api_refuses_with_a_typed_error_naming_the_problem(model, case):
    audio, sr, match = API_ERRORS[case]
    with pytest.raises(AudioError, match=match):
        get_embedding(audio, sr, model=model)


@pytest.mark.parametrize(
    "dtype, scale, offset", [(np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.uint8, 2**7, 2**7), (np.int8, 2**7, 0)]
)
def test_integer_arrays_are_scaled_by_their_type_range(model, dtype, scale, offset):
    x = sine(440, 3.0, SR, amp=0.5)
    pcm = (np.round(x * (scale - 1)) + offset).astype(dtype)
    ref = get_embedding(x, SR, model=model)
    for a in (pcm, torch.from_numpy(pcm.astype(np.int64) if dtype == np.uint8 else pcm)):
        if isinstance(a, torch.Tensor) and dtype == np.uint8:
            continue  # torch has uint8 but int64 would lose the type's range: numpy covers it
        assert _cos(get_embedding(a, SR, model=model), ref) > 0.999


def test_a_pcm16_file_and_its_int16_array_give_the_same_vector(model, tmp_path):
    from coala_embed import embed_file

    x = (np.round(sine(330, 3.0, SR) * 32767)).astype(np.int16)
    sf.write(tmp_path / "p.wav", x, SR, subtype="PCM_16")
    np.testing.assert_allclose(get_embedding(x, SR, model=model), embed_file(tmp_path / "p.wav", model=model).clip,
                               atol=1e-5)  # fmt: skip


def test_float64_and_both_2d_orientations_agree(model):
    x = noise(3.0)
    ref = get_embedding(x, SR, model=model)
    np.testing.assert_allclose(get_embedding(x.astype(np.float64), SR, model=model), ref, atol=1e-5)
    stereo = np.stack([x, x])
    np.testing.assert_allclose(get_embedding(stereo, SR, model=model), ref, atol=1e-5)
    np.testing.assert_allclose(get_embedding(stereo.T, SR, model=model), ref, atol=1e-5)


def test_one_sample_at_the_model_rate_is_a_finite_vector(model):
    assert np.isfinite(get_embedding(np.ones(1, np.float32), SR, model=model)).all()


def test_a_long_array_is_embedded_block_by_block_with_the_same_result(model):
    from coala_embed.api import embed_patches
    from coala_embed.frontend import prepare

    x = noise(200.0, sr=16_000)  # longer than streaming.STREAM_SECONDS: the streamed path
    frames, times = get_embedding(x, 16_000, model=model, frames=True)
    p = prepare(x, 16_000, model.config.frontend)
    np.testing.assert_array_equal(frames, embed_patches(model, p.patches))
    np.testing.assert_array_equal(times[:, 0], p.starts)


# ------------------------------------------------------------------------------------------------ the CLI
def _truncated_flac(path):
    sf.write(path, noise(3.0), SR, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _zero_frames_wav(path):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)


def _nan_wav(path):
    x = noise(2.0)
    x[100] = np.nan
    sf.write(path, x, SR, subtype="FLOAT")


def _broken_link(path):
    path.symlink_to(path.parent / "nowhere.wav")


def _link_loop(path):
    other = path.with_name("loop_b.wav")
    path.symlink_to(other)
    other.symlink_to(path)


def _truncated_mp3_header(path):
    sf.write(path, noise(1.0, sr=44_100), 44_100, format="MP3")
    path.write_bytes(path.read_bytes()[:100])


BAD_FILES = {
    "empty.wav": (lambda p: p.write_bytes(b""), "not readable as audio"),
    "header.mp3": (_truncated_mp3_header, "its header is damaged or truncated (100 bytes)"),
    "500hz.wav": (lambda p: sf.write(p, noise(3.0, sr=500), 500), "sample rate 500 Hz is outside 1,000-1,000,000"),
    "2mhz.wav": (lambda p: sf.write(p, noise(0.2, sr=2_000_000), 2_000_000), "outside 1,000-1,000,000 Hz"),
    "zero_frames.wav": (_zero_frames_wav, "no samples"),
    "truncated.flac": (_truncated_flac, ""),  # libsndfile may read part of it: then it must be embedded
    "random.wav": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000)), "not readable as audio"),
    "text.ogg": (lambda p: p.write_text("this is not a sound"), "not readable as audio"),
    "nan.wav": (_nan_wav, "NaN or Inf"),
    "dangling.wav": (_broken_link, "broken link"),
    "loop_a.wav": (_link_loop, "link loop"),
}


@pytest.fixture()
def messy(tmp_path):
    folder = tmp_path / "messy folder"
    folder.mkdir()
    sf.write(folder / "good one.wav", noise(2.0), SR)
    sf.write(folder / "é ü 音.flac", sine(500, 2.5, 44_100), 44_100)  # unicode and spaces in names
    for name, (make, _) in BAD_FILES.items():
        make(folder / name)
    return folder


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_bad_file_is_named_in_the_manifest_and_the_good_ones_are_embedded(messy, weights_dir, tmp_path):
    out = tmp_path / "new folder" / "feats.npy"  # an output folder that does not exist yet is created
    r = _run(messy, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 1, r.output
    files = {
        os.path.basename(f["path"]): f for f in json.loads(out.with_name("feats.manifest.json").read_text())["files"]
    }
    assert files["good one.wav"]["status"] == files["é ü 音.flac"]["status"] == "ok"
    for name, (_, reason) in BAD_FILES.items():
        f = files[name]
        if name == "truncated.flac" and f["status"] == "ok":
            continue  # decoded as far as it goes
        assert f["status"] == "error" and name in f["error"] and reason in f["error"], (name, f)
        assert f"failed: {f['error']}" in r.output
    x = np.load(out)
    assert x.shape[0] == sum(f["status"] == "ok" for f in files.values()) and np.isfinite(x).all()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_named(tmp_path, weights_dir):
    sf.write(tmp_path / "locked.wav", noise(2.0), SR)
    sf.write(tmp_path / "ok.wav", noise(2.0), SR)
    (tmp_path / "locked.wav").chmod(0)
    out = tmp_path / "o" / "f.npy"
    r = _run(tmp_path, "-o", out, "--weights", weights_dir, "-q", "--ext", "wav")
    assert r.exit_code == 1 and "permission denied" in r.output


@pytest.mark.parametrize("decoders", ["threads", "processes"])
def test_a_named_pipe_fails_alone_instead_of_stalling_the_run(tmp_path, weights_dir, decoders):
    import threading

    sf.write(tmp_path / "a.wav", noise(2.0), SR)
    sf.write(tmp_path / "b.wav", noise(3.0, seed=1), SR)
    os.mkfifo(tmp_path / "pipe.wav")  # nothing ever writes to it: opening it would wait forever
    out, got = tmp_path / "o" / "f.npy", {}
    t = threading.Thread(target=lambda: got.update(r=_run(tmp_path, "-o", out, "--weights", weights_dir, "-q",
                                                            "--decoders", decoders)), daemon=True)  # fmt: skip
    t.start()
    t.join(120)
    if t.is_alive():  # release the decoder waiting on the pipe (an end of file), so that nothing outlives the test
        os.close(os.open(tmp_path / "pipe.wav", os.O_WRONLY | os.O_NONBLOCK))
        t.join(60)
        pytest.fail("the run waited on the pipe")
    assert got["r"].exit_code == 1 and "pipe.wav: is a named pipe, not a regular file" in got["r"].output
    files = json.loads(out.with_name("f.manifest.json").read_text())["files"]
    assert [(f["path"].rsplit("/", 1)[-1], f["status"]) for f in files] == [("a.wav", "ok"), ("b.wav", "ok"),
                                                                            ("pipe.wav", "error")]  # fmt: skip


USAGE_ERRORS = {
    "a folder with no audio": (lambda t: [t / "empty_dir"], "no audio files found"),
    "a missing path": (lambda t: [t / "missing.wav"], "no such file or folder"),
    "a dangling link given by name": (lambda t: [t / "dangling.wav"], "broken link"),
    "an existing output without -f": (lambda t: [t / "in.wav", "--exists"], "exists; add -f"),
    "--device cuda without a GPU": (lambda t: [t / "in.wav", "--device", "cuda"], "no usable GPU"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_with_the_fix(case, tmp_path, weights_dir):
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "empty_dir").mkdir()
    sf.write(tmp_path / "in.wav", noise(1.0), SR)
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    args, match = USAGE_ERRORS[case]
    args = args(tmp_path)
    out = tmp_path / "f.npy"
    if "--exists" in args:
        args.remove("--exists")
        out.write_bytes(b"")
    r = _run(*args, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and match in r.output, r.output


def test_a_symlinked_folder_leading_outside_the_input_is_not_followed(tmp_path, weights_dir):
    inside, outside = tmp_path / "in", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    sf.write(inside / "a.wav", noise(1.0), SR)
    sf.write(outside / "b.wav", noise(1.0), SR)
    (inside / "link").symlink_to(outside, target_is_directory=True)
    out = tmp_path / "f.npy"
    assert _run(inside, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    names = [os.path.basename(f["path"]) for f in json.loads((tmp_path / "f.manifest.json").read_text())["files"]]
    assert names == ["a.wav"]
    assert _run(inside, "-o", out, "--weights", weights_dir, "-q", "-f", "--follow-links").exit_code == 0
    names = [os.path.basename(f["path"]) for f in json.loads((tmp_path / "f.manifest.json").read_text())["files"]]
    assert names == ["a.wav", "b.wav"]


def test_search_refuses_what_is_not_an_embedding_matrix(tmp_path, weights_dir):
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    for f in ("notes.txt", "obj.npy"):
        r = _run("search", tmp_path / f, "bell", "--weights", weights_dir)
        assert r.exit_code == 2 and "not a .npy/.npz output of coala-embed" in r.output, r.output


def test_a_corrupted_checkpoint_is_named_by_its_sha256(weights_dir, tmp_path):
    import shutil

    bad = tmp_path / "w"
    shutil.copytree(weights_dir, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    sf.write(tmp_path / "in.wav", noise(1.0), SR)
    r = _run(tmp_path / "in.wav", "-o", tmp_path / "f.npy", "--weights", bad, "-q")
    assert r.exit_code == 2 and "sha256" in r.output, r.output


def test_an_unknown_hub_id_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    sf.write(tmp_path / "in.wav", noise(1.0), SR)
    r = _run(tmp_path / "in.wav", "-o", tmp_path / "f.npy", "--weights", "nobody/no-such-model", "-q")
    assert r.exit_code == 2 and "nobody/no-such-model" in r.output and "offline" in r.output.lower(), r.output


def test_a_write_failure_mid_run_exits_3_without_hanging_the_decoders(tmp_path, weights_dir, monkeypatch):
    import threading

    import coala_embed.journal as journal_mod
    from coala_embed.streaming import STREAM_SECONDS

    for i in range(3):  # long files: their producers block on full part queues when the loop stops
        sf.write(tmp_path / f"long{i}.flac", noise(STREAM_SECONDS + 130, sr=8_000, seed=i), 8_000)

    def disk_full(self, results):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_mod.Journal, "append", disk_full)
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(
            r=_run(
                tmp_path,
                "-o",
                tmp_path / "o" / "f.npy",
                "--weights",
                weights_dir,
                "-q",
                "--workers",
                "2",
                "--batch-size",
                "4",
            )
        ),  # fmt: skip
        daemon=True,
    )
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the run hung after the write failure"
    r = out["r"]
    assert r.exit_code == 3 and "No space left on device" in r.output and "--resume" in r.output, r.output


def test_a_list_of_floats_is_audio(model):
    x = noise(3.0)
    np.testing.assert_allclose(get_embedding(x.tolist(), SR, model=model), get_embedding(x, SR, model=model), atol=1e-6)


# ------------------------------------------------------------------------------------------------ no silent wrong result
def test_embed_files_takes_a_folder_or_a_file_path(model, tmp_path):
    from coala_embed import embed_files

    (tmp_path / "d" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "d" / "a.wav", noise(2.0), SR)
    sf.write(tmp_path / "d" / "sub" / "b.flac", noise(2.0, seed=1), SR)
    got = list(embed_files(str(tmp_path / "d"), model=model))
    assert [os.path.relpath(p, tmp_path / "d") for p, _ in got] == ["a.wav", "sub/b.flac"]
    assert all(not isinstance(e, Exception) for _, e in got)
    one = list(embed_files(tmp_path / "d" / "a.wav", model=model))  # a PathLike: one file, not its characters
    assert len(one) == 1 and np.allclose(one[0][1].clip, got[0][1].clip)


def _collection_of(tmp_path, weights, name="feats.npy", n=2):
    folder = tmp_path / f"audio_{name}"
    folder.mkdir()
    for i in range(n):
        sf.write(folder / f"s{i}.wav", noise(2.0, seed=i), SR)
    out = tmp_path / name
    assert _run(folder, "-o", out, "--weights", weights, "-q").exit_code == 0
    return out, folder


def test_outputs_of_map_and_merge_never_overwrite_their_inputs_and_need_f(tmp_path, weights_dir):
    pytest.importorskip("sklearn")
    feats, _ = _collection_of(tmp_path, weights_dir, n=3)
    manifest = tmp_path / "feats.manifest.json"
    before = (feats.read_bytes(), manifest.read_bytes())
    for target in (feats, manifest):
        for force in ([], ["-f"]):
            r = _run("map", feats, "-o", target, "--weights", weights_dir, *force)
            assert r.exit_code == 2 and "is an input of this command" in r.output, r.output
    r = _run("map", feats, "-o", tmp_path / "m.html", "--png", feats, "--weights", weights_dir, "-f")
    assert r.exit_code == 2 and "is an input of this command" in r.output, r.output
    assert (feats.read_bytes(), manifest.read_bytes()) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    r = _run("map", feats, "-o", notes, "--weights", weights_dir)
    assert r.exit_code == 2 and "exists; add -f" in r.output and notes.read_text() == "mine"
    assert _run("map", feats, "-o", notes, "--weights", weights_dir, "-f", "--projection", "pca").exit_code == 0
    # merge: the output is never one of the shards, even with -f
    folder = tmp_path / "audio_feats.npy"
    parts = [tmp_path / f"p{k}.npy" for k in (1, 2)]
    for k, part in enumerate(parts, 1):
        assert _run(folder, "-o", part, "--shard", f"{k}/2", "--weights", weights_dir, "-q").exit_code == 0
    shard1 = parts[0].read_bytes()
    r = _run("merge", "-o", parts[0], *parts, "-f")
    assert r.exit_code == 2 and "is an input of this command" in r.output and parts[0].read_bytes() == shard1


def test_search_and_neighbours_refuse_rows_of_another_checkpoint(tmp_path, weights_dir):
    import shutil

    from conftest import random_model

    from coala_embed import save_pretrained

    other = tmp_path / "other"
    save_pretrained(random_model(seed=1), other, trained=False)
    feats, folder = _collection_of(tmp_path, weights_dir)
    probe = tmp_path / "probe.wav"
    sf.write(probe, noise(2.0, seed=9), SR)
    for args in (["search", feats, "tag1"], ["neighbours", feats, probe]):
        r = _run(*args, "--weights", other)
        assert r.exit_code == 2 and str(other) in r.output and str(weights_dir) in r.output, r.output
        assert "--any-model" in r.output
        assert _run(*args, "--weights", other, "--any-model").exit_code == 0
        assert _run(*args, "--weights", weights_dir).exit_code == 0
    # the same weights with an edited config.json (another front-end) are another checkpoint too
    edited = tmp_path / "edited"
    shutil.copytree(weights_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["frontend"]["pad_noise"] = 0.01
    (edited / "config.json").write_text(json.dumps(cfg))
    r = _run("search", feats, "tag1", "--weights", edited)
    assert r.exit_code == 2 and "config.json sha256" in r.output, r.output


def test_the_manifest_records_the_config_beside_the_weights(tmp_path, weights_dir):
    import hashlib

    feats, _ = _collection_of(tmp_path, weights_dir)
    model = json.loads((tmp_path / "feats.manifest.json").read_text())["model"]
    assert model["config_sha256"] == hashlib.sha256((weights_dir / "config.json").read_bytes()).hexdigest()


def _interrupted_run(tmp_path, monkeypatch, folder, out, *args):
    """A run that stops with a full disk after its first batch of files is journaled; returns the done files."""
    import coala_embed.journal as journal_mod

    real = journal_mod.Journal.append
    calls = {"n": 0}

    def append_then_fail(self, results):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(28, "No space left on device")
        real(self, results)

    with monkeypatch.context() as m:
        m.setattr(journal_mod.Journal, "append", append_then_fail)
        r = _run(folder, "-o", out, "-q", "--batch-size", "1", "--workers", "1", *args)
    assert r.exit_code == 3, r.output
    log = out.with_name(out.name + ".partial") / "log.jsonl"
    return [json.loads(line)["path"] for line in log.read_text().splitlines()]


def test_resume_re_embeds_a_file_that_changed_since(tmp_path, weights_dir, monkeypatch, model):
    from coala_embed import embed_file

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"s{i}.wav", noise(2.0, seed=i), SR)
    out = tmp_path / "f.npy"
    done = _interrupted_run(tmp_path, monkeypatch, folder, out, "--weights", weights_dir)
    assert done, "nothing was journaled before the failure"
    changed = done[0]
    sf.write(changed, sine(700, 3.0), SR)  # new content, new size
    r = _run(folder, "-o", out, "-q", "--weights", weights_dir, "--resume")
    assert r.exit_code == 0, r.output
    m = json.loads(out.with_name("f.manifest.json").read_text())
    assert [f["path"] for f in m["files"]] == sorted(str(p) for p in folder.iterdir())  # no duplicate, no gap
    row = next(f["row"] for f in m["files"] if f["path"] == changed)
    np.testing.assert_allclose(np.load(out)[row], embed_file(changed, model=model).clip, atol=1e-5)
    assert np.load(out).shape[0] == 3


def test_a_kill_while_the_progress_is_removed_leaves_a_resumable_output(tmp_path, weights_dir, monkeypatch):
    """The run has written its outputs and is deleting its progress folder when it dies: the folder must never be
    left holding a log whose rows are already gone (``--resume`` would refuse it)."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"s{i}.wav", noise(2.0, seed=i), SR)
    out = tmp_path / "f.npy"
    real_rmtree = shutil.rmtree

    def killed_midway(path, *args, **kwargs):  # deletes the rows first, then the process "dies"
        rows = os.path.join(path, "rows.f32")
        if os.path.exists(rows):
            os.unlink(rows)
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", killed_midway)
        _run(folder, "-o", out, "-q", "--weights", weights_dir)
    assert out.exists()
    r = _run(folder, "-o", out, "-q", "--weights", weights_dir, "--resume")
    assert "shorter than its log" not in r.output
    assert r.exit_code in (0, 2), r.output  # finished again, or "exists; add -f": never a broken journal
    assert np.load(out).shape == (3, 1152)
    r = _run(folder, "-o", out, "-q", "--weights", weights_dir)  # a new run is not blocked by a stale folder
    assert "interrupted run" not in r.output


def test_resume_with_other_settings_or_an_edited_config_is_refused(tmp_path, weights_dir, monkeypatch):
    import shutil

    from coala_embed.device import resolve_precision

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        sf.write(folder / f"s{i}.wav", noise(2.0, seed=i), SR)
    out = tmp_path / "f.npy"
    _interrupted_run(tmp_path, monkeypatch, folder, out, "--weights", weights_dir, "--precision", "fp32")
    r = _run(folder, "-o", out, "-q", "--weights", weights_dir, "--resume", "--precision", "bf16")
    if resolve_precision("bf16", torch.device("cpu")) == "bf16":  # bf16 would run: the rows would mix precisions
        assert r.exit_code == 2 and "other inputs, model or options" in r.output, r.output
    else:  # bf16 falls back to fp32 here, so the resumed run is the same run
        assert r.exit_code == 0 and json.loads((tmp_path / "f.manifest.json").read_text())["precision"] == "fp32"
        return
    edited = tmp_path / "edited"
    shutil.copytree(weights_dir, edited)
    cfg = json.loads((edited / "config.json").read_text())
    cfg["frontend"]["pad_noise"] = 0.01
    (edited / "config.json").write_text(json.dumps(cfg))
    r = _run(folder, "-o", out, "-q", "--weights", edited, "--resume", "--precision", "fp32")
    assert r.exit_code == 2 and "other inputs, model or options" in r.output, r.output


def test_a_full_disk_at_the_manifest_leaves_no_half_output(tmp_path, weights_dir, monkeypatch):
    import pathlib

    import coala_embed.files as files_mod

    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", noise(2.0), SR)
    out = tmp_path / "f.npy"
    real = pathlib.Path.write_text

    def short_write(self, *a, **k):
        if "manifest" in self.name:  # numpy-style: a short write with no errno, on a disk with no space left
            raise OSError("34944 requested and 12256 written")
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", short_write)
        m.setattr(files_mod.shutil, "disk_usage", lambda p: type("u", (), {"free": 0})())
        r = _run(folder, "-o", out, "-q", "--weights", weights_dir)
    assert r.exit_code == 3 and "the disk is full" in r.output and "f.manifest.json" in r.output, r.output
    assert not out.exists() and not (tmp_path / "f.manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".f.")] == []  # no temporary file left
    r = _run(folder, "-o", out, "-q", "--weights", weights_dir, "--resume")
    assert r.exit_code == 0 and np.load(out).shape == (1, 1152), r.output


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_resume_hint(tmp_path, weights_dir):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        sf.write(folder / f"s{i:02d}.wav", noise(20.0, seed=i), SR)
    out = tmp_path / "f.npy"
    cmd = [sys.executable, "-m", "coala_embed", str(folder), "-o", str(out), "--weights", str(weights_dir), "-q",
           "--batch-size", "2"]  # fmt: skip
    # SIGINT ignored in this process (a shell's background job, a library) would be inherited: the run gets the default
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    log = tmp_path / "f.npy.partial" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.stat().st_size):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "--resume" in err and "Aborted" not in err, err
    r = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape[0] == 40


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_max_hours_must_be_a_positive_number(tmp_path, weights_dir, value):
    sf.write(tmp_path / "a.wav", noise(1.0), SR)
    r = _run(tmp_path / "a.wav", "-o", tmp_path / "f.npy", "--weights", weights_dir, "--max-hours", value)
    assert r.exit_code == 2 and "--max-hours" in r.output and "above 0" in r.output, r.output


def test_frames_into_an_npy_name_says_which_name_to_use(tmp_path, weights_dir):
    sf.write(tmp_path / "a.wav", noise(1.0), SR)
    for extra in ([], ["--format", "npz"]):
        r = _run(tmp_path / "a.wav", "-o", tmp_path / "x.npy", "--frames", "--weights", weights_dir, *extra)
        assert r.exit_code == 2 and f"use -o {tmp_path / 'x.npz'}" in r.output, r.output


def test_neighbours_of_a_collection_with_nothing_else_says_so(tmp_path, weights_dir):
    feats, folder = _collection_of(tmp_path, weights_dir, n=1)
    only = json.loads((tmp_path / "feats.manifest.json").read_text())["files"][0]["path"]
    r = CliRunner().invoke(main, ["neighbours", str(feats), only, "--weights", str(weights_dir)])
    assert r.exit_code == 0 and "no other file to compare" in r.output, r.output


def test_a_folder_named_like_a_command_gets_a_hint(tmp_path, weights_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tags").mkdir()
    sf.write(tmp_path / "tags" / "a.wav", noise(1.0), SR)
    r = _run("tags", "-o", "t.npy")
    assert r.exit_code == 2 and "coala-embed embed tags" in r.output, r.output
    assert _run("embed", "tags", "-o", "t.npy", "--weights", weights_dir, "-q").exit_code == 0
