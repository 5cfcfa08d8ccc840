"""Speed against the peers, measured in one run on this machine (not a test).

Every system embeds the same generated folder (``--files`` WAV files of ``--seconds`` s, 44.1 kHz mono, noise
and tones) from file path to embeddings: decoding, resampling, its own front-end and its network, with its
model loaded once beforehand (load time printed apart). Each system runs in its own subprocess with the same
thread budget (all cores), one after the other, so the printed ratios come from one run on one machine.

Systems and what they run:

- ``coala`` / ``coala-bf16``: this package's CLI path (``coala_embed.batch.run``, decode threads, cross-file
  batches) with the shipped weights; fp32 defaults, and bf16 + the float32 front-end (``--precision bf16
  --fast-frontend``).
- ``musicnn``: the MTT_musicnn model (pretrained, from PyPI; TensorFlow), its own librosa front-end, the
  graph built and the checkpoint restored once (its ``extractor()`` rebuilds both for every file).
- ``aisfx``: the X-Sequential-CE model (pretrained, from PyPI; PyTorch), its librosa front-end, 1-s hop.
- ``openl3``: torchopenl3's PyTorch port (mel256, 512-d, the default 0.1-s hop), **random weights** (the real
  ones download at run time, which this machine cannot do; speed does not depend on the values).
- ``panns``: PANNs Cnn14 from panns-inference at 32 kHz on whole clips, **random weights** (idem).
- ``vggish``: torchvggish's VGGish with its own front-end, 0.96-s frames, **random weights** (idem).

The peers are not dependencies of coala-embed; install them apart (they pin old numpy/librosa, so use a
virtual environment that sees this one's packages):

    python -m venv --system-site-packages PEERS && PEERS/bin/pip install tensorflow-cpu tf-keras julius \\
        nnAudio 'resampy<0.3' torchlibrosa && PEERS/bin/pip install --no-deps musicnn aisfx panns-inference \\
        torchvggish torchopenl3
    python bench/peers.py --python PEERS/bin/python [--files 12] [--seconds 30]

A system whose package is missing is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SYSTEMS = ["coala", "coala-bf16", "musicnn", "aisfx", "openl3", "panns", "vggish"]


def make_folder(folder: Path, n: int, seconds: float, sr: int = 44100) -> list[Path]:
    """``n`` mono WAV files of noise with a few tones (seeded)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        x = 0.05 * rng.standard_normal(len(t))
        for f in rng.uniform(80, 4000, 3):
            x += 0.1 * np.sin(2 * np.pi * f * t) * (rng.random() > 0.3)
        p = folder / f"clip{i:03d}.wav"
        sf.write(p, x.astype(np.float32), sr)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------- systems
# Each returns (weights, embed) where embed(paths) -> list of [T, D] arrays; model loading happens in it.
def sys_coala(precision: str) -> tuple[str, Callable]:
    from coala_embed import load_model
    from coala_embed.batch import Options, run

    model = load_model(device="cpu")
    if precision == "bf16":
        model.config = model.config.replace(stft_dtype="float32")
    opts = Options(precision=precision)

    def embed(paths: list[Path]) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "feats.npy"
            files = run(paths, out, model, opts, progress=False)["files"]
            # one row per file; the frame count is what the network saw
            return [np.zeros((f["n_frames"], 1152), np.float32) for f in files]

    return "pretrained (shipped)", embed


def sys_musicnn() -> tuple[str, Callable]:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # musicnn uses tf.compat.v1.layers
    import librosa
    import tensorflow as tf
    from musicnn import configuration as config
    from musicnn import models
    from musicnn.extractor import batch_data

    model = "MTT_musicnn"
    n_frames = librosa.time_to_frames(3, sr=config.SR, n_fft=config.FFT_SIZE, hop_length=config.FFT_HOP) + 1
    tf.compat.v1.reset_default_graph()
    with tf.name_scope("model"):
        x = tf.compat.v1.placeholder(tf.float32, [None, n_frames, config.N_MELS])
        is_training = tf.compat.v1.placeholder(tf.bool)
        out = models.define_model(x, is_training, model, len(config.MTT_LABELS))
    penultimate = out[-1]
    sess = tf.compat.v1.Session()
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver().restore(sess, os.path.dirname(models.__file__) + f"/{model}/")

    def embed(paths: list[Path]) -> list[np.ndarray]:
        res = []
        for p in paths:
            batch, _ = batch_data(str(p), n_frames, n_frames)
            res.append(np.concatenate([
                sess.run(penultimate, {x: batch[i : i + config.BATCH_SIZE], is_training: False})
                for i in range(0, len(batch), config.BATCH_SIZE)
            ]))  # fmt: skip
        return res

    return "pretrained (PyPI)", embed


def sys_aisfx() -> tuple[str, Callable]:
    import torch
    from aisfx import inference as ai
    from aisfx.spectrogram.spectrogram_librosa import compute_spectrogram

    # weights_only: a state dict and a dict of numpy-int class counts; only numpy scalars/dtypes are allowed
    allowed: list = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype]  # type: ignore[attr-defined]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    with torch.serialization.safe_globals(allowed):
        weights, ds_dict = torch.load(ai.get_path_modelWeights(), map_location="cpu", weights_only=True)
    model = ai.load_bestModel(weights, ds_dict, "cpu")

    def embed(paths: list[Path]) -> list[np.ndarray]:
        res = []
        for p in paths:
            spec = compute_spectrogram(str(p), ai.SAMPLE_RATE, ai.SPEC_BLOCK_LENGTH, ai.SPEC_HOP_LENGTH,
                                       ai.MEL_BINS, ai.F_MIN, ai.F_MAX)  # fmt: skip
            res.append(ai.model_get_embedding(spec, 0.5, True, model, "cpu").numpy())
        return res

    return "pretrained (PyPI)", embed


def sys_openl3() -> tuple[str, Callable]:
    import soundfile as sf
    import torchopenl3
    from torchopenl3.models import PytorchOpenl3

    model = PytorchOpenl3(content_type="env", input_repr="mel256", embedding_size=512).eval()

    def embed(paths: list[Path]) -> list[np.ndarray]:
        res = []
        for p in paths:
            audio, sr = sf.read(p, dtype="float32")
            e, _ = torchopenl3.get_audio_embedding(audio, sr, model=model, hop_size=0.1, verbose=False)
            res.append(np.asarray(e.detach().cpu())[0])
        return res

    return "random (architecture only)", embed


def sys_panns() -> tuple[str, Callable]:
    import librosa
    import torch
    from panns_inference.models import Cnn14

    model = Cnn14(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
                  classes_num=527).eval()  # fmt: skip

    def embed(paths: list[Path]) -> list[np.ndarray]:
        res = []
        with torch.inference_mode():
            for p in paths:
                audio, _ = librosa.load(p, sr=32000, mono=True)  # what panns_inference's examples do
                res.append(model(torch.from_numpy(audio)[None])["embedding"].numpy())
        return res

    return "random (architecture only)", embed


def sys_vggish() -> tuple[str, Callable]:
    import soundfile as sf
    import torch
    import torchvggish

    model = torchvggish.torchvggish._vgg(postprocess=False).eval()

    def embed(paths: list[Path]) -> list[np.ndarray]:
        res = []
        with torch.inference_mode():
            for p in paths:
                audio, sr = sf.read(p, dtype="float32")
                res.append(model(torchvggish.waveform_to_examples(audio, sr, return_tensor=True)).numpy())
        return res

    return "random (architecture only)", embed


def child(system: str, folder: Path, budget: float) -> dict:
    import soundfile as sf

    paths = sorted(folder.glob("*.wav"))
    t0 = time.perf_counter()
    if system.startswith("coala"):
        weights, embed = sys_coala("bf16" if system == "coala-bf16" else "fp32")
    else:
        weights, embed = globals()[f"sys_{system}"]()
    load_s = time.perf_counter() - t0
    embed(paths[:1])  # warm-up: first-call allocations and lazy initialisation
    t0 = time.perf_counter()
    if system.startswith("coala"):
        out = embed(paths)  # the CLI path batches across files
    else:  # file by file, stopping after ``budget`` seconds (the slowest peers would take hours)
        out = []
        for p in paths:
            out += embed([p])
            if time.perf_counter() - t0 > budget:
                break
    seconds = time.perf_counter() - t0
    audio_s = sum(sf.info(p).duration for p in paths[: len(out)])
    return {
        "system": system,
        "weights": weights,
        "load_s": round(load_s, 2),
        "seconds": round(seconds, 3),
        "files": len(out),
        "audio_s": round(audio_s, 2),
        "x_real_time": round(audio_s / seconds, 1),
        "frames": int(sum(len(e) for e in out)),
        "dim": int(out[0].shape[-1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=sys.executable, help="interpreter that has the peers installed")
    p.add_argument("--files", type=int, default=12)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--budget", type=float, default=60.0, help="seconds per peer; slower ones embed fewer files")
    p.add_argument("--system", action="append", choices=SYSTEMS, help="systems to run (default: all)")
    p.add_argument("--run", choices=SYSTEMS, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        print(json.dumps(child(args.run, args.folder, args.budget)))
        return

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1", PYTHONWARNINGS="ignore")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        make_folder(Path(d), args.files, args.seconds)
        for system in args.system or SYSTEMS:
            py = sys.executable if system.startswith("coala") else args.python
            cmd = [py, __file__, "--run", system, "--folder", d, "--budget", str(args.budget)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
            if r.returncode or not last.startswith("{"):
                err = (r.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{system}: skipped ({err})", file=sys.stderr)
                continue
            rows.append(json.loads(last))
            print(f"{system}: {rows[-1]}", file=sys.stderr)
    if not rows:
        sys.exit("no system ran")
    ref = next((r for r in rows if r["system"] == "coala"), rows[0])
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(" :\t")
    print(f"\n{args.files} files x {args.seconds:.0f} s, 44.1 kHz mono WAV; {os.cpu_count()} cores ({cpu})\n")
    print(
        "| system | weights | dim | files | rows out | load (s) | embed (s) | x real time | coala-embed is faster by |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = ref["x_real_time"] / r["x_real_time"]
        print(f"| {r['system']} | {r['weights']} | {r['dim']} | {r['files']} | {r['frames']} | {r['load_s']:.1f} | "
              f"{r['seconds']:.2f} | {_num(r['x_real_time'])}x | {_num(ratio)}x |")  # fmt: skip


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"


if __name__ == "__main__":
    main()
