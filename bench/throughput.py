"""Inference throughput, measured in one run on this machine (not a test).

Prints: the conv throughput ceiling of this CPU for the encoder's layers (GMAC/s of the same convolutions at a
large batch), the encoder's patches/s and its share of that ceiling (fp32 and bf16), the front-end's speed, the
end-to-end CLI speed in x real time on a generated folder of 200 files (44.1 kHz stereo WAV/FLAC/OGG, 5-60 s)
with the fp32 defaults, bf16, and bf16 with the fast front-end, the CPU seconds each stage spends on that folder
with the best x real time they would allow on this machine, and the peak RSS of the CLI on a 1-hour file.

With ``--large`` it measures instead what embedding an archive takes: on a generated set of 2,000 files and 15.5 h
(WAV, FLAC, OGG and MP3 at 16 to 48 kHz, mono and stereo, 2 s to 5 min; built once, cached in ``--large-dir``),
the decode bound of the machine (all cores decoding and cutting log-mels, no model) and, for each way of
decoding (threads or processes; on a GPU, log-mels on the CPU or on the device), the CLI's steady-state x real
time with the start-up apart (the difference of a run on the whole set and one on its first 200 files) and its
share of the bound (on a CPU, the decoding and the encoder share the cores: the bound counts both).

    python bench/throughput.py [--weights DIR] [--files 200] [--device cpu|cuda] [--skip-rss]
    python bench/throughput.py --large [--device cuda] [--workers N] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import builtins
import functools
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from coala_embed import CoalaConfig, CoalaModel, load_model, save_pretrained
from coala_embed.api import embed_patches
from coala_embed.config import FrontendConfig
from coala_embed.device import bf16_native, cpu_name, float32_convolutions
from coala_embed.frontend import log_mel

# (in_channels, out_channels, input size) of the five Conv(k4, s2, p1) layers
LAYERS = [(1, 128, 96), (128, 128, 48), (128, 128, 24), (128, 128, 12), (128, 128, 6)]


def macs_per_patch() -> int:
    return sum(cin * cout * 16 * (size // 2) ** 2 for cin, cout, size in LAYERS)


def timeit(fn, repeat: int = 5) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.inference_mode()
def conv_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """GMAC/s of the encoder's convolutions run one by one, each at its fastest of several large batches
    (channels-last, no BN, no ReLU): the time for one patch is the sum of the layers' best times."""
    per_patch_s = 0.0
    for cin, cout, size in LAYERS:
        conv = torch.nn.Conv2d(cin, cout, 4, 2, 1).to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        best = float("inf")
        for batch in (32, 64, 128, 512) if device.type == "cpu" else (512, 2048, 8192):
            x = torch.randn(batch, cin, size, size, device=device).contiguous(memory_format=torch.channels_last)
            # fp32 is float32 on a GPU too (cuDNN's TF32 off), as in embed_patches
            with (
                float32_convolutions(device),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16),
            ):
                best = min(best, timeit(lambda conv=conv, x=x: conv(x)) / batch)
        per_patch_s += best
    return macs_per_patch() / per_patch_s / 1e9


def encoder_speed(model: CoalaModel, precision: str, batch: int = 64, n: int = 512) -> float:
    """Patches/s of ``embed_patches`` (the CLI's call) on ``n`` random patches held on the CPU, copies included."""
    patches = torch.randn(n, 96, 96) - 6
    t = timeit(lambda: embed_patches(model, patches, batch, precision), repeat=3)
    return n / t


def encoder_line(speed: float, ceiling: float) -> str:
    """``speed`` patches/s as GMAC/s, share of the conv ceiling (GMAC/s) and x real time."""
    gmacs = speed * macs_per_patch() / 1e9
    return (f"{speed:7.1f} patches/s = {gmacs:6.1f} GMAC/s = {100 * gmacs / ceiling:.0f}% of the ceiling | "
            f"{speed * FrontendConfig().patch_seconds:7.0f}x real time")  # fmt: skip


def make_folder(folder: Path, n: int) -> float:
    rng = np.random.default_rng(0)
    total = 0.0
    for i in range(n):
        seconds = float(rng.uniform(5, 60))
        total += seconds
        t = np.arange(int(seconds * 44_100)) / 44_100
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)[:, None]
        x = (tone + 0.05 * rng.standard_normal((len(t), 2))).astype(np.float32)
        ext = ("wav", "flac", "ogg")[i % 3]
        with sf.SoundFile(folder / f"f{i:03d}.{ext}", "w", 44_100, 2) as f:
            for k in range(0, len(x), 44_100):  # in blocks: libsndfile's Vorbis encoder crashes on long writes
                f.write(x[k : k + 44_100])
    return total


def stage_seconds(folder: Path, cfg: FrontendConfig) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds, in this process and one thread of work each, that decoding (with the stereo downmix),
    resampling and the log-mel front-end spend on the folder: what every file costs before the encoder; and
    the decoding seconds per file extension."""
    from coala_embed.audio_io import load_audio
    from coala_embed.frontend import resample

    out = {"decode": 0.0, "resample": 0.0, "frontend": 0.0}
    by_format: dict[str, float] = {}
    for path in sorted(folder.iterdir()):
        t0 = time.perf_counter()
        audio, sr = load_audio(path)
        t1 = time.perf_counter()
        by_format[path.suffix[1:]] = by_format.get(path.suffix[1:], 0.0) + t1 - t0
        audio = resample(audio, sr, cfg.sample_rate)
        t2 = time.perf_counter()
        log_mel(audio, cfg)
        t3 = time.perf_counter()
        out["decode"] += t1 - t0
        out["resample"] += t2 - t1
        out["frontend"] += t3 - t2
    return out, by_format


def startup_seconds(weights: str) -> float:
    """Wall time to start Python, import the package, load the model and exit (what every CLI run pays once;
    like the CLI, it freezes the start-up's objects so that exiting does not walk them)."""
    t = time.perf_counter()
    code = f"import gc; from coala_embed import load_model; load_model({weights!r}, device='cpu'); gc.freeze()"
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


# Runs the CLI and prints its wall time and peak RSS. A child's ru_maxrss starts from the memory of the process it
# was forked from (Linux keeps the high-water mark across fork and exec), so the CLI is started from this small
# launcher, not from the benchmark itself, which holds far more memory than the CLI.
_LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen([sys.executable, "-m", "coala_embed", *sys.argv[1:]])
_, status, usage = os.wait4(p.pid, 0)
print(time.perf_counter() - t, usage.ru_maxrss // 1024, os.waitstatus_to_exitcode(status))
"""


def cli(args: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (MB) of one CLI run in a child process."""
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, *args], check=True, stdout=subprocess.PIPE, text=True)
    wall, rss, code = r.stdout.split()
    if int(code):
        raise subprocess.CalledProcessError(int(code), args)
    return float(wall), int(rss)


# The large set: (format, subtype) and the share of files in each; rates and channels are drawn per file.
LARGE_FORMATS = [
    ("wav", "PCM_16", 0.35),
    ("flac", "PCM_16", 0.35),
    ("ogg", "VORBIS", 0.2),
    ("mp3", "MPEG_LAYER_III", 0.1),
]
LARGE_RATES = (16_000, 22_050, 32_000, 44_100, 48_000)
LARGE_FIRST = 200  # files in the first subfolder: the short run whose time is subtracted


def _large_plan(files: int, hours: float, seed: int = 0) -> list[tuple[str, float, int, int, str, str, int]]:
    """(relative path, seconds, rate, channels, extension, subtype, seed) of each file of the large set: nine in
    ten files 2-45 s, one in ten 1-5 min (streamed block by block), scaled to ``hours`` in all."""
    rng = np.random.default_rng(seed)
    long = rng.random(files) < 0.1
    seconds = np.where(long, rng.uniform(60, 300, files), rng.uniform(2, 45, files))
    seconds *= hours * 3600 / seconds.sum()
    shares = np.array([w for *_, w in LARGE_FORMATS])
    kinds = rng.choice(len(LARGE_FORMATS), files, p=shares / shares.sum())
    plan = []
    for i in range(files):
        ext, subtype, _ = LARGE_FORMATS[kinds[i]]
        sub = "a" if i < LARGE_FIRST else "b"
        plan.append((f"{sub}/f{i:04d}.{ext}", float(seconds[i]), int(rng.choice(LARGE_RATES)), int(rng.integers(1, 3)),
                     ext, subtype, i))  # fmt: skip
    return plan


def _write_large_file(folder: str, item: tuple) -> None:
    """One file of the large set: tones that change every few seconds over a noise floor, written in 1-s blocks
    (libsndfile's Vorbis encoder crashes on long writes)."""
    rel, seconds, sr, channels, ext, subtype, seed = item
    rng = np.random.default_rng(seed)
    path = Path(folder) / rel
    tmp = path.with_name(path.name + ".tmp")
    n = int(seconds * sr)
    with sf.SoundFile(tmp, "w", sr, channels, format=ext.upper(), subtype=subtype) as f:
        phase = 0.0
        for k in range(0, n, sr):
            m = min(sr, n - k)
            if k % (4 * sr) == 0:
                freq = rng.uniform(80, 4000)
            t = np.arange(m) / sr
            tone = 0.3 * np.sin(phase + 2 * np.pi * freq * t)
            phase += 2 * np.pi * freq * m / sr
            f.write((tone[:, None] + 0.03 * rng.standard_normal((m, channels))).astype(np.float32))
    tmp.rename(path)


def make_large(folder: Path, files: int = 2000, hours: float = 15.5) -> None:
    """Build the large set in ``folder`` (subfolders ``a`` with the first 200 files and ``b``) unless it is there
    already, in parallel on every core."""
    plan = _large_plan(files, hours)
    recipe = folder / "recipe.json"
    want = json.dumps({"files": files, "hours": hours, "formats": LARGE_FORMATS, "rates": LARGE_RATES})
    if recipe.exists() and recipe.read_text() == want and all((folder / p[0]).exists() for p in plan):
        return
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    todo = [p for p in plan if not (folder / p[0]).exists()]
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(os.cpu_count()) as pool:
        for k, _ in enumerate(pool.imap_unordered(functools.partial(_write_large_file, str(folder)), todo)):
            if k % 200 == 0:
                print(f"  generating the large set: {k}/{len(todo)} files", file=sys.stderr)
    recipe.write_text(want)
    print(f"  generated {len(todo)} files in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def _decode_one(job: tuple[str, FrontendConfig, bool]) -> float:
    """A pool worker's job: decode one file as the CLI's decoders do; returns its seconds of audio."""
    from coala_embed.decoding import file_items
    from coala_embed.frontend import Patches, Signal

    torch.set_num_threads(1)
    path, cfg, signal = job
    seconds = 0.0
    for item in file_items(Path(path), cfg, None, signal):
        if isinstance(item, Signal):
            seconds += len(item.audio) / cfg.sample_rate
        elif isinstance(item, Patches):
            seconds = item.duration
    return seconds


def decode_bound(paths: list[Path], cfg: FrontendConfig, signal: bool, cores: int) -> float:
    """x real time of decoding, resampling (and, unless ``signal``, cutting log-mel patches) on ``cores``
    processes with nothing else running: what no way of feeding the model can beat on this machine."""
    with mp.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode_one, [(str(paths[0]), cfg, signal)])  # start-up apart
        t = time.perf_counter()
        seconds = sum(pool.imap_unordered(_decode_one, [(str(p), cfg, signal) for p in paths], 4))
        return seconds / (time.perf_counter() - t)


def large(a: argparse.Namespace, weights: str, say) -> dict:
    """The large-set measures (module docstring)."""
    folder = Path(a.large_dir).expanduser()
    make_large(folder)
    cores = len(os.sched_getaffinity(0))
    cfg = FrontendConfig()
    paths = sorted(folder.glob("[ab]/*.*"))
    seconds = {p: sf.info(p).duration for p in paths}
    first_s = sum(v for p, v in seconds.items() if p.parent.name == "a")
    total_s = sum(seconds.values())
    fmts = {ext: sum(1 for p in paths if p.suffix == "." + ext) for ext, *_ in LARGE_FORMATS}
    say(f"large set: {len(paths)} files, {total_s / 3600:.2f} h ({fmts}), {folder}")
    res: dict = {"large_files": len(paths), "large_hours": total_s / 3600}
    ways = [("threads", "cpu"), ("processes", "cpu")]
    if a.device.startswith("cuda"):
        ways += [("threads", "device"), ("processes", "device")]
    bounds = {}
    for log_mel_on in sorted({w[1] for w in ways}):
        bounds[log_mel_on] = decode_bound(paths, cfg, log_mel_on == "device", cores)
        what = "decode + resample" + (" + log-mel patches" if log_mel_on == "cpu" else "")
        say(f"decode bound ({what}, {cores} processes, no model): {bounds[log_mel_on]:.0f}x real time")
        res[f"decode_bound_{log_mel_on}"] = bounds[log_mel_on]
    if a.device == "cpu":  # the encoder takes the same cores: the bound is the decoding and the encoder together
        enc = encoder_speed(load_model(weights, device="cpu"), "fp32", a.batch_size) * cfg.patch_seconds
        both = 1 / (1 / bounds["cpu"] + 1 / enc)
        say(f"encoder alone (fp32): {enc:.0f}x real time; decoding and encoder on the same cores: at best {both:.0f}x")
        res["encoder_x_rt"], res["cpu_bound"] = enc, both
        bounds["cpu"] = both
    out = Path(tempfile.mkdtemp(prefix="coala-large-")) / "feats.npy"
    for decoders, log_mel_on in ways:
        extra = ["--decoders", decoders, "--log-mel-on", log_mel_on, "--batch-size", str(a.batch_size)]
        if a.workers:
            extra += ["--workers", str(a.workers)]
        common = ["-o", str(out), "--weights", weights, "-q", "-f", "--device", a.device, *extra]
        wall_first, _ = cli([str(folder / "a"), *common])
        wall_all, rss = cli([str(folder / "a"), str(folder / "b"), *common])
        steady = (total_s - first_s) / (wall_all - wall_first)
        key = f"{decoders}, log-mel on {log_mel_on}"
        res[f"large_{decoders}_{log_mel_on}"] = {"wall": wall_all, "x_rt": total_s / wall_all, "steady_x_rt": steady,
                                                  "share_of_bound": steady / bounds[log_mel_on], "rss_mb": rss}  # fmt: skip
        say(f"large set, {key}: {wall_all:.1f} s = {total_s / wall_all:.0f}x real time; steady state {steady:.0f}x "
            f"= {100 * steady / bounds[log_mel_on]:.0f}% of the bound; peak RSS {rss} MB")  # fmt: skip
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--weights", default=None, help="checkpoint folder (default: a random one; speed does not depend on it)"
    )
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: the CLI's own default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--precision",
        default="all",
        choices=["all", "fp32", "bf16", "bf16 + fast front-end"],
        help="end-to-end runs to time",
    )
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument("--large", action="store_true", help="measure the large generated set instead (docstring)")
    p.add_argument("--large-dir", default="~/.cache/coala-embed/bench/large", help="where the large set is kept")
    a = p.parse_args()
    device = torch.device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="coala-bench-"))
    weights = a.weights
    if weights is None:
        weights = str(tmp / "weights")
        save_pretrained(CoalaModel(CoalaConfig()), weights, trained=False)
    model = load_model(weights, device=device)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    native = bf16_native(device)
    where = f"{cpu_name()}, bf16 {'native' if native else 'NOT native'}{gpu}"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; {where}")

    def say(*args) -> None:  # every figure names the machine it was measured on
        builtins.print(*args, f" [{where}]")

    if a.large:
        report = large(a, weights, say)
        report["cpu"], report["bf16_native"] = cpu_name(), native
        builtins.print(json.dumps(report))
        return

    res: dict = {}
    macs = macs_per_patch()
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ceiling = conv_ceiling(device, dtype)
        n = 512 if device.type == "cpu" else 32_768  # a GPU needs far more work to time
        speed = encoder_speed(model, name, a.batch_size, n)
        res[name] = {"ceiling_gmacs": ceiling, "patches_per_s": speed, "share": speed * macs / 1e9 / ceiling}
        fallback = (
            " (bf16 is not native here: this is the fp32 fallback the package runs)"
            if name == "bf16" and not native
            else ""
        )
        say(f"[{name}] conv ceiling {ceiling:6.1f} GMAC/s | encoder {encoder_line(speed, ceiling)}{fallback}")
    if device.type == "cuda":  # what the GPU gives with larger batches than the CLI's default
        for name in ("fp32", "bf16"):
            big = encoder_speed(model, name, 1024, 65_536)
            res[name]["patches_per_s_batch1024"] = big
            say(f"[{name}] encoder at batch 1024: {encoder_line(big, res[name]['ceiling_gmacs'])}")
    audio = np.random.default_rng(0).standard_normal(22_000 * 600).astype(np.float32)
    t = timeit(lambda: log_mel(audio, FrontendConfig()), repeat=2)
    say(f"front-end (log-mel, float64 STFT, one thread of work): {600 / t:7.0f}x real time")
    folder = tmp / "audio"
    folder.mkdir()
    hours = make_folder(folder, a.files) / 3600
    # Where the time goes: each stage's CPU seconds on this folder, and the best wall time the whole pipeline
    # could reach if every core were kept busy all the time (work / cores + startup): a bound, not a measure.
    cores = torch.get_num_threads()
    start = startup_seconds(weights)
    for stft, label in (("float64", "fp32"), ("float32", "fp32 + --fast-frontend")):
        stages, by_format = stage_seconds(folder, FrontendConfig(stft_dtype=stft))
        for prec in ("fp32", "bf16"):
            if label.endswith("frontend") or prec == "fp32":
                enc_s = hours * 3600 / FrontendConfig().patch_seconds / res[prec]["patches_per_s"]
                if device.type == "cpu":  # the encoder's threads take the same cores as the other stages
                    enc, work = enc_s * cores, sum(stages.values()) + enc_s * cores
                    bound = hours * 3600 / (work / cores + start)
                else:  # on a GPU the encoder overlaps the CPU stages: the slower of the two bounds the run
                    enc, work = enc_s, sum(stages.values())
                    bound = hours * 3600 / (max(work / cores, enc_s) + start)
                total = (
                    f"core-s = {work:.1f} core-s" if device.type == "cpu" else f"GPU-s; CPU stages {work:.1f} core-s"
                )
                formats = ", ".join(f"{ext} {v:.1f}" for ext, v in by_format.items())
                say(f"budget ({label.replace('fp32', prec)}): decode {stages['decode']:.1f} ({formats}) + resample {stages['resample']:.1f} "
                      f"+ front-end {stages['frontend']:.1f} + encoder {enc:.1f} {total} on {cores} cores, "
                      f"startup {start:.1f} s -> at best {bound:.0f}x real time")  # fmt: skip
                res[f"bound_{prec}_{stft}"] = bound
    out = tmp / "feats.npy"
    runs = {
        "fp32": [],
        "bf16": ["--precision", "bf16"],
        "bf16 + fast front-end": ["--precision", "bf16", "--fast-frontend"],
    }
    for name, extra in runs.items():
        if a.precision != "all" and name != a.precision:
            continue
        workers = ["--workers", str(a.workers)] if a.workers else []
        wall, rss = cli([str(folder), "-o", str(out), "--weights", weights, "-q", "-f", "--device", a.device,
                       *workers, "--batch-size", str(a.batch_size), *extra])  # fmt: skip
        res[f"e2e_{name}"] = hours * 3600 / wall
        say(
            f"end to end ({name}): {a.files} files, {hours:.2f} h of audio in {wall:.1f} s = {hours * 3600 / wall:.0f}x real time, peak RSS {rss} MB"
        )
    if not a.skip_rss:
        long = tmp / "hour.flac"
        with sf.SoundFile(long, "w", 44_100, 2, format="FLAC") as f:
            rng = np.random.default_rng(1)
            for _ in range(60):
                f.write((0.05 * rng.standard_normal((44_100 * 60, 2))).astype(np.float32))
        wall, rss = cli(
            [str(long), "-o", str(tmp / "hour.npy"), "--weights", weights, "-q", "-f", "--device", a.device]
        )
        res["rss_1h_mb"] = rss
        say(f"1-hour 44.1 kHz stereo FLAC: peak RSS {rss} MB, {3600 / wall:.0f}x real time")
    res["cpu"], res["bf16_native"] = cpu_name(), native
    builtins.print(json.dumps(res))


if __name__ == "__main__":
    main()
