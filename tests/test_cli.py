"""The coala-embed command: outputs, manifest, failures, exit codes, overwrite, shards, merge, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import noise

from coala_embed.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def manifest(out):
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())


def test_embed_folder(audio_dir, weights_dir, tmp_path):
    out = tmp_path / "feats.npy"
    r = run(audio_dir, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 0, r.output
    x = np.load(out)
    m = manifest(out)
    assert x.shape == (6, 1152) and x.dtype == np.float32
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) and len(paths) == 6
    assert {"sub/clip0.wav", "clip0.wav"} <= {os.path.relpath(p, audio_dir) for p in paths}  # same names kept apart
    assert [f["row"] for f in m["files"]] == list(range(6))
    assert m["model"]["sha256"] and m["frontend"]["sample_rate"] == 22_000 and m["coala_embed_version"]
    assert all(f["duration"] > 1 for f in m["files"])


def test_rows_equal_the_api(audio_dir, weights_dir, tmp_path, model):
    from coala_embed import embed_file

    out = tmp_path / "feats.npy"
    run(audio_dir, "-o", out, "--weights", weights_dir, "-q", "--batch-size", "5")
    for f in manifest(out)["files"]:
        np.testing.assert_allclose(np.load(out)[f["row"]], embed_file(f["path"], model=model).clip, atol=1e-5)


def test_a_long_file_streamed_through_the_cli_equals_the_api(weights_dir, tmp_path, model):
    from coala_embed import embed_file
    from coala_embed.streaming import STREAM_SECONDS

    sf.write(tmp_path / "long.flac", noise(STREAM_SECONDS + 75, sr=16_000), 16_000)  # three 60-s blocks
    sf.write(tmp_path / "short.wav", noise(3.0), 22_000)
    out = tmp_path / "f.npz"
    r = run(tmp_path / "long.flac", tmp_path / "short.wav", "-o", out, "--weights", weights_dir, "-q", "--frames",
            "--batch-size", "7")  # fmt: skip
    assert r.exit_code == 0, r.output
    z = np.load(out)
    ref = embed_file(tmp_path / "long.flac", model=model)
    a, b = z["frame_offsets"][0], z["frame_offsets"][1]
    np.testing.assert_allclose(z["frames"][a:b], ref.frames, atol=1e-5)
    np.testing.assert_array_equal(z["frame_times"][a:b], np.stack([ref.starts, ref.ends], axis=1))
    np.testing.assert_allclose(z["embeddings"][0], ref.clip, atol=1e-5)
    assert manifest(out)["files"][0]["n_frames"] == len(ref.frames) > 80 and np.abs(ref.frames).sum() > 0


def test_cli_frames_with_a_finer_hop(weights_dir, tmp_path):
    sf.write(tmp_path / "a.wav", noise(5.0), 22_000)
    out = tmp_path / "f.npz"
    r = run(tmp_path / "a.wav", "-o", out, "--weights", weights_dir, "-q", "--frames", "--hop", "2")
    assert r.exit_code == 0, r.output
    z = np.load(out)
    steps = np.diff(z["frame_times"][:, 0])
    np.testing.assert_allclose(steps[:-1], 2 * 512 / 22_000)  # the last patch ends on the last frame: a shorter step
    assert 0 < steps[-1] <= 2 * 512 / 22_000 + 1e-9
    assert manifest(out)["frontend"]["chunk_hop"] == 2
    assert run(tmp_path / "a.wav", "-o", tmp_path / "g.npz", "--hop", "0", "-q").exit_code == 2


def test_bad_files_do_not_stop_the_run(audio_dir, weights_dir, tmp_path):
    (audio_dir / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (audio_dir / "text.flac").write_text("not audio")
    sf.write(audio_dir / "empty.wav", np.zeros(0, np.float32), 22_000)
    good = noise(3.0)
    sf.write(audio_dir / "truncated.wav", good, 22_000)
    data = (audio_dir / "truncated.wav").read_bytes()
    (audio_dir / "truncated.wav").write_bytes(data[: len(data) // 2])
    nan = noise(3.0)
    nan[100] = np.nan
    sf.write(audio_dir / "nan.wav", nan, 22_000, subtype="FLOAT")
    out = tmp_path / "feats.npy"
    r = run(audio_dir, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 1
    m = manifest(out)
    status = {os.path.basename(f["path"]): f["status"] for f in m["files"]}
    assert status["corrupt.wav"] == status["text.flac"] == status["empty.wav"] == status["nan.wav"] == "error"
    assert status["truncated.wav"] == "ok"  # libsndfile reads what is there
    assert np.load(out).shape == (m["summary"]["ok"], 1152) and m["summary"]["ok"] == 7
    assert "corrupt.wav" in r.output and "failed" in r.output
    errors = {os.path.basename(f["path"]): f["error"] for f in m["files"] if f["status"] == "error"}
    assert "NaN" in errors["nan.wav"] and "corrupt.wav" in errors["corrupt.wav"]


def test_refuses_to_overwrite(audio_dir, weights_dir, tmp_path):
    out = tmp_path / "feats.npy"
    assert run(audio_dir, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    r = run(audio_dir, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and "add -f" in r.output
    assert run(audio_dir, "-o", out, "--weights", weights_dir, "-q", "-f").exit_code == 0


def test_usage_errors_exit_2(audio_dir, weights_dir, tmp_path):
    assert run(audio_dir, "-o", tmp_path / "a.npy", "--weights", weights_dir, "--shard", "3/2").exit_code == 2
    assert run(audio_dir, "-o", tmp_path / "a.npy", "--weights", weights_dir, "--frames").exit_code == 2
    assert run(tmp_path / "nope", "-o", tmp_path / "a.npy").exit_code == 2
    r = run(audio_dir, "-o", tmp_path / "a.npy", "--weights", weights_dir, "--device", "cuda:7")
    assert r.exit_code == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu_run(audio_dir, weights_dir, tmp_path):
    common = [audio_dir, "--weights", weights_dir, "-q", "--batch-size", "4"]
    assert run(*common, "-o", tmp_path / "cpu.npy", "--device", "cpu").exit_code == 0
    assert run(*common, "-o", tmp_path / "gpu.npy", "--device", "cuda").exit_code == 0
    assert run(*common, "-o", tmp_path / "bf16.npy", "--device", "cuda", "--precision", "bf16").exit_code == 0
    cpu, gpu, bf16 = (np.load(tmp_path / f"{n}.npy") for n in ("cpu", "gpu", "bf16"))
    assert cpu.shape == gpu.shape == (6, 1152)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4, rtol=1e-3)  # float32 on both (TF32 is switched off)
    rel = np.linalg.norm(bf16 - cpu, axis=1) / np.linalg.norm(cpu, axis=1)
    assert rel.max() < 0.05  # the README's bf16 tolerance
    assert manifest(tmp_path / "gpu.npy")["files"][0]["status"] == "ok"


def test_help_documents_exit_codes():
    r = run("embed", "--help")
    assert "Exit status" in r.output and "some files failed" in r.output
    assert run("--help").exit_code == 0 and run("--version").output.startswith("coala-embed")


def test_ext_filter_and_symlink_loop(audio_dir, weights_dir, tmp_path):
    (audio_dir / "sub" / "loop").symlink_to(audio_dir, target_is_directory=True)
    out = tmp_path / "f.npy"
    assert run(audio_dir, "-o", out, "--weights", weights_dir, "-q", "--ext", "flac").exit_code == 0
    names = [os.path.basename(f["path"]) for f in manifest(out)["files"]]
    assert names == ["clip1.flac", "tone.flac"]  # the loop back into audio_dir is followed once only


def test_npz_with_frames(audio_dir, weights_dir, tmp_path):
    out = tmp_path / "feats.npz"
    assert run(audio_dir, "-o", out, "--weights", weights_dir, "-q", "--frames").exit_code == 0
    z = np.load(out)
    assert z["embeddings"].shape == (6, 1152) and len(z["paths"]) == 6
    off = z["frame_offsets"]
    assert off[0] == 0 and off[-1] == len(z["frames"]) == len(z["frame_times"])
    for i in range(6):
        np.testing.assert_allclose(z["frames"][off[i] : off[i + 1]].mean(0), z["embeddings"][i], atol=1e-5)


def test_shards_merge_to_the_unsharded_result(audio_dir, weights_dir, tmp_path):
    (audio_dir / "bad.ogg").write_text("x")
    full = tmp_path / "full.npy"
    run(audio_dir, "-o", full, "--weights", weights_dir, "-q")
    shards = []
    for k in (1, 2, 3):
        s = tmp_path / f"shard{k}.npy"
        run(audio_dir, "-o", s, "--weights", weights_dir, "-q", "--shard", f"{k}/3")
        shards.append(s)
    sizes = [len(manifest(s)["files"]) for s in shards]
    assert sum(sizes) == 7 and max(sizes) - min(sizes) <= 1
    merged = tmp_path / "merged.npy"
    r = run("merge", "-o", merged, *shards)
    assert r.exit_code == 1  # the bad file is still reported
    np.testing.assert_array_equal(np.load(merged), np.load(full))
    strip = lambda m: [{k: v for k, v in f.items()} for f in m["files"]]  # noqa: E731
    assert strip(manifest(merged)) == strip(manifest(full))


def test_merges_that_would_lie_are_refused(audio_dir, weights_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    sf.write(other / "x.wav", noise(2.0), 22_000)
    parts = {}
    for name, folder, k in (("a1", audio_dir, 1), ("a2", audio_dir, 2), ("b2", other, 2)):
        parts[name] = tmp_path / f"{name}.npz"
        r = run(folder, "-o", parts[name], "--weights", weights_dir, "-q", "--shard", f"{k}/2", "--frames")
        assert r.exit_code == 0, r.output
    cases = [
        ([parts["a1"]], "missing [2]"),
        ([parts["a1"], parts["a1"]], "given twice [1]"),
        ([parts["a1"], parts["b2"]], "not shards of one run"),
    ]
    for given, message in cases:
        r = run("merge", "-o", tmp_path / "m.npz", *given)
        assert r.exit_code == 2 and message in r.output, (given, r.output)
        assert not (tmp_path / "m.npz").exists()
    r = run("merge", "-o", tmp_path / "m.npy", parts["a1"], parts["a2"])
    assert r.exit_code == 2 and "name the merged output *.npz" in r.output
    full = tmp_path / "full.npz"
    run(audio_dir, "-o", full, "--weights", weights_dir, "-q", "--frames")
    r = run("merge", "-o", tmp_path / "m.npz", parts["a1"], parts["a2"])
    assert r.exit_code == 0, r.output
    a, b = np.load(tmp_path / "m.npz"), np.load(full)
    for key in ("embeddings", "frames", "frame_times", "frame_offsets", "paths"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # an unsharded output is not a part
    r = run("merge", "-o", tmp_path / "m2.npz", full)
    assert r.exit_code == 2 and "not the output of a --shard" in r.output
    # shards computed at another precision would mix their rows
    from coala_embed.device import resolve_precision

    if resolve_precision("bf16", torch.device("cpu")) == "bf16":
        bf16 = tmp_path / "a2_bf16.npz"
        args = ("-o", bf16, "--weights", weights_dir, "-q", "--shard", "2/2", "--frames", "--precision", "bf16")
        assert run(audio_dir, *args).exit_code == 0
        r = run("merge", "-o", tmp_path / "m3.npz", parts["a1"], bf16)
        assert r.exit_code == 2 and "in precision" in r.output, r.output


def test_an_empty_shard_writes_a_valid_empty_part(audio_dir, weights_dir, tmp_path):
    parts = []
    for k in range(1, 9):  # 8 shards of 6 files: two are empty
        parts.append(tmp_path / f"p{k}.npy")
        r = run(audio_dir, "-o", parts[-1], "--weights", weights_dir, "-q", "--shard", f"{k}/8")
        assert r.exit_code == 0, r.output
    assert np.load(parts[-1]).shape == (0, 1152) and manifest(parts[-1])["files"] == []
    full = tmp_path / "full.npy"
    run(audio_dir, "-o", full, "--weights", weights_dir, "-q")
    r = run("merge", "-o", tmp_path / "m.npy", *parts)
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), np.load(full))


def _cli(*args):
    return [sys.executable, "-m", "coala_embed", *map(str, args)]


@pytest.mark.slow
@pytest.mark.parametrize("decoders", ["threads", "processes"])
def test_resume_after_kill_9(tmp_path, weights_dir, decoders):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        sf.write(folder / f"f{i:02d}.wav", noise(2.0 + (i % 5), seed=i), 22_000)
    (folder / "f13.wav").write_bytes(b"broken")
    ref = tmp_path / "ref.npy"
    subprocess.run(_cli(folder, "-o", ref, "--weights", weights_dir, "-q"), check=False)
    out = tmp_path / "out.npy"
    log = tmp_path / "out.npy.partial" / "log.jsonl"
    rng = np.random.default_rng(0)
    kills, seen = 0, 0
    for attempt in range(8):  # kill -9 at different moments until a run gets to the end
        args = ["--resume"] if attempt else []
        opts = ["-q", "--batch-size", "1", "--workers", "1", "--decoders", decoders, *args]
        p = subprocess.Popen(_cli(folder, "-o", out, "--weights", weights_dir, *opts))
        deadline = time.time() + 60
        target = seen + 3 + int(rng.integers(0, 4))
        while time.time() < deadline and p.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.1)))
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if out.exists() and not log.exists():
            assert killed or p.returncode == 1  # finished (one broken file), maybe just before the kill
            break
        seen = log.read_bytes().count(b"\n") if log.exists() else 0
    else:
        r = subprocess.run(_cli(folder, "-o", out, "--weights", weights_dir, "-q", "--resume"), check=False)
        assert r.returncode == 1
    assert kills >= 2
    np.testing.assert_array_equal(np.load(out), np.load(ref))
    a, b = manifest(out), manifest(ref)
    assert [f["path"] for f in a["files"]] == [f["path"] for f in b["files"]]
    assert [f["status"] for f in a["files"]] == [f["status"] for f in b["files"]]
    assert not (tmp_path / "out.npy.partial").exists()


@pytest.mark.slow
def test_a_second_run_on_a_live_output_is_refused_and_the_first_is_unharmed(tmp_path, weights_dir):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        sf.write(folder / f"f{i:02d}.wav", noise(4.0, seed=i), 22_000)
    ref = tmp_path / "ref.npy"
    assert subprocess.run(_cli(folder, "-o", ref, "--weights", weights_dir, "-q"), check=False).returncode == 0
    out = tmp_path / "out.npy"
    log = tmp_path / "out.npy.partial" / "log.jsonl"
    first = subprocess.Popen(
        _cli(folder, "-o", out, "--weights", weights_dir, "-q", "--batch-size", "1", "--workers", "1")
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_bytes().count(b"\n") >= 2):
        time.sleep(0.005)
    # held still (SIGSTOP) while the second runs try, so that it is certainly live, then let go
    first.send_signal(signal.SIGSTOP)
    assert first.poll() is None, "the first run ended before the second could start; give it more work"
    # what the old message advised (--resume), and -f, while the first run is live: all refused at once
    for extra in (["--resume"], ["-f"], []):
        second = subprocess.run(_cli(folder, "-o", out, "--weights", weights_dir, "-q", *extra), capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"process {first.pid}" in second.stderr and "being written by another" in second.stderr
        assert "--resume" not in second.stderr
    first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    np.testing.assert_array_equal(np.load(out), np.load(ref))
    assert [f["path"] for f in manifest(out)["files"]] == [f["path"] for f in manifest(ref)["files"]]
    assert not (tmp_path / ".out.npy.lock").exists()


def test_a_stale_lock_of_a_killed_run_does_not_block(tmp_path, weights_dir, audio_dir):
    # a lock file without a live holder (what kill -9 leaves): flock is free, the run goes on
    (tmp_path / ".o.npy.lock").write_text("999999\n")
    r = run(audio_dir, "-o", tmp_path / "o.npy", "--weights", weights_dir, "-q")
    assert r.exit_code == 0, r.output


def test_the_output_path_is_checked_before_any_audio_is_decoded(tmp_path, weights_dir, audio_dir, monkeypatch):
    import coala_embed.batch as batch_mod

    def no_decoding(*a, **k):
        raise AssertionError("audio was decoded before the output path was checked")

    monkeypatch.setattr(batch_mod, "decode", no_decoding)
    cases = {
        "feats.txt": "must end in .npy or .npz",
        "feats.npy --format npz": "contradicts the extension",
    }
    for spec, message in cases.items():
        name, *extra = spec.split()
        r = run(audio_dir, "-o", tmp_path / name, "--weights", weights_dir, "-q", *extra)
        assert r.exit_code == 2 and message in r.output, (spec, r.output)
    (tmp_path / "adir.npy").mkdir()
    r = run(audio_dir, "-o", tmp_path / "adir.npy", "--weights", weights_dir, "-q", "-f")
    assert r.exit_code == 2 and "is a folder" in r.output
    r = run(audio_dir, "-o", "/proc/x.npy", "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and "cannot write to the output folder /proc" in r.output
    (tmp_path / "afile").write_text("")
    r = run(audio_dir, "-o", tmp_path / "afile" / "x.npy", "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and "cannot create the output folder" in r.output


def test_two_outputs_never_share_a_manifest(tmp_path, weights_dir, audio_dir):
    a = tmp_path / "s.npy"
    assert run(audio_dir, "-o", a, "--weights", weights_dir, "-q").exit_code == 0
    r = run(audio_dir, "-o", tmp_path / "s.npz", "--weights", weights_dir, "-q", "-f")
    assert r.exit_code == 2 and "belongs to" in r.output and "s.npy" in r.output
    assert manifest(a)["output"] == "s.npy"


def test_interrupted_run_needs_resume_or_force(tmp_path, weights_dir, audio_dir):
    out = tmp_path / "o.npy"
    (tmp_path / "o.npy.partial").mkdir()
    r = run(audio_dir, "-o", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and "--resume" in r.output


@pytest.mark.slow
def test_ray_data_matches_the_cli(audio_dir, weights_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from coala_embed.audio_io import find_audio
    from coala_embed.ray_data import embed_with_ray, read_parquet

    (audio_dir / "broken.wav").write_text("not audio")
    out = tmp_path / "feats.npy"
    run(audio_dir, "-o", out, "--weights", weights_dir, "-q")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        embed_with_ray(find_audio([audio_dir]), tmp_path / "parquet", weights=str(weights_dir), files_per_batch=3)
    finally:
        ray.shutdown()
    paths, emb, status = read_parquet(tmp_path / "parquet")
    m = manifest(out)
    assert paths == [f["path"] for f in m["files"]]
    assert status == [f["status"] for f in m["files"]]
    ok = [i for i, s in enumerate(status) if s == "ok"]
    np.testing.assert_allclose(emb[ok], np.load(out), atol=1e-5)


def test_huge_file_is_a_failure_not_a_crash(audio_dir, weights_dir, tmp_path):
    out = tmp_path / "f.npy"
    r = run(audio_dir, "-o", out, "--weights", weights_dir, "-q", "--max-hours", "0.001")  # 3.6 s
    assert r.exit_code == 1
    status = {os.path.basename(f["path"]): f for f in manifest(out)["files"]}
    assert status["tone.flac"]["status"] == "error" and "over the limit" in status["tone.flac"]["error"]
    assert status["clip0.wav"]["status"] == "ok"


def test_fast_frontend_flag(audio_dir, weights_dir, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    run(audio_dir, "-o", a, "--weights", weights_dir, "-q")
    assert run(audio_dir, "-o", b, "--weights", weights_dir, "-q", "--fast-frontend").exit_code == 0
    assert manifest(b)["frontend"]["stft_dtype"] == "float32" and manifest(a)["frontend"]["stft_dtype"] == "float64"
    x, y = np.load(a), np.load(b)
    assert (np.linalg.norm(x - y, axis=1) / np.linalg.norm(x, axis=1)).max() < 1e-5


def test_default_workers_follow_the_cores_and_the_device():
    from coala_embed.batch import default_workers

    assert [default_workers("cpu", n) for n in (1, 2, 4, 16)] == [2, 2, 2, 8]
    assert [default_workers("cuda", n) for n in (2, 4, 16)] == [2, 2, 14]
    assert default_workers("cpu") >= 2


def test_the_bundled_checkpoint_ships_z_max_and_readout_z_gives_the_paper_s_vector(tmp_path):
    """The shipped config's clip vector is z+max (1664 columns; docs/deviations.md); ``--readout z`` gives the
    paper's mean of z, which is the first 1152 columns of it."""
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert run("embed", examples, "-o", tmp_path / "a.npy").exit_code == 0
    assert run("embed", examples, "-o", tmp_path / "b.npy", "--readout", "z").exit_code == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (3, 1664) and b.shape == (3, 1152)
    np.testing.assert_allclose(a[:, :1152], b, atol=1e-6)
    assert manifest(tmp_path / "a.npy")["clip"] == {"readout": "z+max", "stat": "mean"}
    assert manifest(tmp_path / "b.npy")["clip"] == {"readout": "z", "stat": "mean"}
