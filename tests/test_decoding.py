"""Decoding in threads or processes, log-mels in the decoders or beside the model: the same rows, the same
failures, and a decoder that dies costs only the file it was reading."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from conftest import noise, sine

from coala_embed import batch, load_model
from coala_embed.cli import main
from coala_embed.decoding import _Processes, resolve_decoders, resolve_log_mel_on
from coala_embed.errors import AudioError
from coala_embed.frontend import FrontendConfig, Patches, log_mel
from coala_embed.streaming import STREAM_SECONDS

WAYS = [("threads", "cpu"), ("threads", "device"), ("processes", "cpu"), ("processes", "device")]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def mixed(tmp_path) -> Path:
    """Good files at four rates in three formats, a long one (streamed in blocks) and three bad ones."""
    d = tmp_path / "mixed"
    d.mkdir()
    for i in range(9):
        sr = (16_000, 22_050, 44_100, 48_000)[i % 4]
        sf.write(d / f"f{i}.{('wav', 'flac', 'ogg')[i % 3]}", noise(1.0 + 2 * i, sr=sr, seed=i), sr)
    sf.write(d / "long.flac", noise(STREAM_SECONDS + 70, sr=16_000, seed=99), 16_000)
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    (d / "text.flac").write_text("not audio")
    nan = noise(3.0)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 22_000, subtype="FLOAT")
    return d


def test_every_way_of_decoding_gives_the_same_rows_bit_for_bit_and_the_same_failures(mixed, weights_dir, tmp_path):
    outs = {}
    for decoders, log_mel_on in WAYS:
        out = tmp_path / f"{decoders}-{log_mel_on}.npz"
        r = run(mixed, "-o", out, "--weights", weights_dir, "-q", "--frames", "--batch-size", "5", "--workers", "3",
                "--decoders", decoders, "--log-mel-on", log_mel_on, "--device", "cpu")  # fmt: skip
        assert r.exit_code == 1, r.output  # three bad files
        outs[decoders, log_mel_on] = np.load(out), json.loads(out.with_name(out.stem + ".manifest.json").read_text())
    ref, ref_m = outs["threads", "cpu"]
    assert ref["embeddings"].shape == (10, 1152) and ref_m["summary"]["failed"] == 3
    for way, (z, m) in outs.items():
        for key in ref.files:
            np.testing.assert_array_equal(z[key], ref[key], err_msg=f"{way}: {key}")
        assert [(f["path"], f["status"], f.get("error")) for f in m["files"]] == [
            (f["path"], f["status"], f.get("error")) for f in ref_m["files"]
        ], way


def test_auto_decodes_in_processes_from_four_cores():
    assert resolve_decoders("auto", 2) == "threads" and resolve_decoders("auto", 16) == "processes"
    assert resolve_decoders("threads", 16) == "threads" and resolve_decoders("processes", 2) == "processes"
    assert resolve_log_mel_on("auto", torch.device("cpu")) == "cpu"
    assert resolve_log_mel_on("auto", torch.device("cuda", 0)) == "device"
    with pytest.raises(ValueError):
        resolve_decoders("fibers")


def _holders(path: Path) -> list[int]:
    """Processes that have ``path`` open."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


def test_a_decoder_that_dies_fails_only_its_file_and_a_new_one_takes_over(tmp_path, weights_dir):
    # The test kills every decoder that has one long file open, as the kernel's OOM killer or a segfault would.
    good = []
    for i in range(7):
        good.append(tmp_path / f"g{i}.wav")
        sf.write(good[-1], noise(1.5 + i, seed=i), 22_000)
    dies = tmp_path / "dies.wav"
    sf.write(dies, noise(600, sr=8_000, seed=9), 8_000, subtype="PCM_16")  # decoded block by block, for seconds
    paths = good[:3] + [dies] + good[3:]
    model = load_model(weights_dir, device="cpu")
    result: dict = {}

    def embed() -> None:
        opts = batch.Options(workers=2, decoders="processes", batch_size=4)
        result["manifest"] = batch.run(paths, tmp_path / "out.npy", model, opts, progress=False)

    t = threading.Thread(target=embed, daemon=True)  # a daemon: a run that hangs fails the test, not the suite
    t.start()
    kills, deadline = 0, time.time() + 60
    while t.is_alive():
        assert time.time() < deadline, "the run did not finish"
        for pid in _holders(dies):
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)
                kills += 1
        time.sleep(0.01)
    assert kills >= 1
    files = result["manifest"]["files"]
    assert [f["status"] for f in files] == ["ok"] * 3 + ["error"] + ["ok"] * 4
    assert "dies.wav" in files[3]["error"] and "decoding process died" in files[3]["error"]
    assert "SIGKILL" in files[3]["error"]
    ref = tmp_path / "ref.npy"
    batch.run(good, ref, model, batch.Options(workers=2, decoders="threads", batch_size=4), progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(ref))


def test_a_decoder_killed_half_way_through_a_message_fails_its_file_and_nothing_hangs(tmp_path, weights_dir):
    # A 110 s file is one part of ~50 patches (1.8 MB), more than a decoder's pipe holds: its decoder blocks half-way
    # through sending it, and is killed there, as the OOM killer may kill a decoder in the middle of any write.
    long, short = tmp_path / "long.wav", tmp_path / "short.wav"
    sf.write(long, noise(110, seed=0), 22_000)
    sf.write(short, noise(3, seed=1), 22_000)
    cfg = load_model(weights_dir, device="cpu").config.frontend
    procs = _Processes([(0, long), (1, short)], cfg, None, False, 1)
    got: dict = {}

    def read() -> None:
        got["long"] = list(procs.items(0))
        got["short"] = list(procs.items(1))

    try:
        assert procs.conns[0].poll(60), "the decoder sent nothing"
        time.sleep(0.5)  # it fills the pipe and waits for the reader
        os.kill(procs.procs[0].pid, signal.SIGKILL)
        procs.procs[0].join(10)  # dead before anything is read: a writer woken by a read would finish its write
        assert not procs.procs[0].is_alive()
        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "reading the half-sent message hung"
    finally:
        procs.close()
    assert len(got["long"]) == 1 and isinstance(got["long"][0], AudioError)
    assert "long.wav" in str(got["long"][0]) and "SIGKILL" in str(got["long"][0])
    assert isinstance(got["short"][0], Patches) and got["short"][-1] == "end"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("stft_dtype, atol", [("float64", 1e-4), ("float32", 2e-3)])
def test_log_mel_on_the_gpu_matches_the_cpu(stft_dtype, atol):
    # float64 on both: only the FFT libraries' rounding differs. float32: cuFFT against pocketFFT, on bands
    # tens of dB under the tone (the noise keeps them above float32's FFT floor).
    cfg = FrontendConfig(stft_dtype=stft_dtype)
    x = sine(440, 20.0) + noise(20.0, seed=3) * 0.01
    cpu = log_mel(x, cfg)
    gpu = log_mel(x, cfg, "cuda").cpu()
    assert gpu.shape == cpu.shape
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=atol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.gpu
def test_one_process_per_gpu_on_shards_merges_to_the_rows_of_one_run(mixed, weights_dir, tmp_path):
    # README's recipe: `coala-embed ... --device cuda:K --shard K+1/N &` for each GPU, then `coala-embed merge`
    import subprocess
    import sys

    def cli(*args):
        return [sys.executable, "-m", "coala_embed", *map(str, args)]

    one = tmp_path / "one.npy"
    subprocess.run(cli(mixed, "-o", one, "--weights", weights_dir, "-q", "--device", "cuda:0"), check=False)
    parts = [tmp_path / f"part{k}.npy" for k in range(2)]
    procs = [subprocess.Popen(cli(mixed, "-o", parts[k], "--weights", weights_dir, "-q", "--device", f"cuda:{k}",
                                  "--shard", f"{k + 1}/2", "--workers", "2")) for k in range(2)]  # fmt: skip
    assert [p.wait() for p in procs] == [1, 1]  # each shard holds some of the bad files
    r = run("merge", "-o", tmp_path / "merged.npy", *parts)
    assert r.exit_code == 0, r.output
    # the same GPU model runs the same kernels: equal within float32 rounding of reordered batches
    np.testing.assert_allclose(np.load(tmp_path / "merged.npy"), np.load(one), rtol=1e-4, atol=1e-5)
