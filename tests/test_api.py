"""get_embedding / embed_file / embed_files: shapes, times, batching, devices and errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SR, noise, sine

from coala_embed import AudioError, DeviceError, embed_file, embed_files, get_embedding
from coala_embed.device import resolve_device


def test_clip_embedding(model):
    emb = get_embedding(sine(440, 5.0), SR, model=model)
    assert emb.shape == (1152,) and emb.dtype == np.float32 and np.isfinite(emb).all()


def test_frames_with_times(model):
    frames, times = get_embedding(noise(5.0), SR, model=model, frames=True)
    assert frames.shape == (3, 1152) and times.shape == (3, 2)
    np.testing.assert_allclose(times[:, 1] - times[:, 0], 96 * 512 / 22_000)
    np.testing.assert_allclose(times[:2, 0], [0.0, 96 * 512 / 22_000])
    np.testing.assert_allclose(frames.mean(0), get_embedding(noise(5.0), SR, model=model), atol=1e-6)


def test_batch_size_does_not_change_embeddings(model):
    x = noise(20.0, seed=4)
    ref = get_embedding(x, SR, model=model, frames=True, batch_size=64)[0]
    for bs in (1, 3, 7):
        np.testing.assert_allclose(get_embedding(x, SR, model=model, frames=True, batch_size=bs)[0], ref, atol=1e-5)


def test_one_by_one_equals_batched_files(model, audio_dir):
    paths = sorted(p for p in audio_dir.rglob("*") if p.is_file())
    single = [embed_file(p, model=model).clip for p in paths]
    batched = list(embed_files(paths, model=model, batch_size=16))
    assert [str(p) for p in paths] == [p for p, _ in batched]
    for a, (_, b) in zip(single, batched):
        np.testing.assert_allclose(a, b.clip, atol=1e-5)


def test_numpy_torch_mono_stereo_agree(model):
    x = sine(440, 3.0)
    ref = get_embedding(x, SR, model=model)
    np.testing.assert_allclose(get_embedding(torch.from_numpy(x), SR, model=model), ref, atol=1e-6)
    np.testing.assert_allclose(get_embedding(np.stack([x, x]), SR, model=model), ref, atol=1e-6)
    np.testing.assert_allclose(get_embedding(np.stack([x, x], axis=1), SR, model=model), ref, atol=1e-6)


def test_any_sample_rate(model):
    e44 = get_embedding(sine(440, 3.0, 44_100), 44_100, model=model)
    e22 = get_embedding(sine(440, 3.0, SR), SR, model=model)
    assert np.corrcoef(e44, e22)[0, 1] > 0.99


def test_short_audio_is_padded_and_silence_is_finite(model):
    frames, times = get_embedding(sine(440, 0.2), SR, model=model, frames=True)
    assert frames.shape == (1, 1152)
    assert np.isfinite(get_embedding(np.zeros(SR, np.float32), SR, model=model)).all()
    assert np.isfinite(get_embedding(np.zeros(10, np.float32), SR, model=model)).all()


def test_deterministic(model):
    x = sine(300, 1.0)
    assert np.array_equal(get_embedding(x, SR, model=model), get_embedding(x, SR, model=model))


def test_original_pooling_available(weights_dir):
    from coala_embed import load_model

    model = load_model(weights_dir, device="cpu")
    model.config = model.config.replace(pooling="original")
    frames, times = get_embedding(sine(440, 1.0), SR, model=model, frames=True)
    assert frames.shape == (4, 1152)  # padded to 10 s, every chunk kept


@pytest.mark.parametrize(
    "audio, sr, match",
    [
        (np.zeros(0, np.float32), SR, "empty"),
        (np.full(1000, np.nan, np.float32), SR, "NaN"),
        (np.zeros(1000, np.float32), 0, "sample rate"),
        (np.zeros((3, 3, 3), np.float32), SR, "shape"),
    ],
)
def test_errors_name_the_problem(model, audio, sr, match):
    with pytest.raises(AudioError, match=match):
        get_embedding(audio, sr, model=model)


def test_file_errors_name_the_file(model, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_text("hello, I am text")
    with pytest.raises(AudioError, match="not-audio.wav"):
        embed_file(bad, model=model)
    with pytest.raises(AudioError, match="missing.wav"):
        embed_file(tmp_path / "missing.wav", model=model)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioError, match="empty.wav"):
        embed_file(empty, model=model)


def test_embed_files_keeps_going_after_a_bad_file(model, audio_dir):
    (audio_dir / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    out = dict(embed_files(sorted(audio_dir.rglob("*.*")), model=model))
    assert isinstance(out[str(audio_dir / "broken.wav")], AudioError)
    assert sum(not isinstance(v, Exception) for v in out.values()) == 6


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(weights_dir):
    from coala_embed import load_model

    x = noise(10.0)
    cpu = get_embedding(x, SR, model=load_model(weights_dir, device="cpu"))
    gpu = get_embedding(x, SR, model=load_model(weights_dir, device="cuda"))
    np.testing.assert_allclose(gpu, cpu, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "name, fmt, subtype, sr",
    [("a.wav", "WAV", "PCM_16", 44_100), ("a.flac", "FLAC", None, 48_000), ("a.ogg", "OGG", "VORBIS", 44_100),
     ("a.opus", "OGG", "OPUS", 48_000), ("a.mp3", "MP3", None, 44_100)],
)  # fmt: skip
def test_file_formats(model, tmp_path, name, fmt, subtype, sr):
    x = sine(440, 3.0, sr)
    sf.write(tmp_path / name, np.stack([x, x], axis=1), sr, format=fmt, subtype=subtype)
    e = embed_file(tmp_path / name, model=model)
    ref = get_embedding(x, sr, model=model)
    assert abs(e.duration - 3.0) < 0.1
    assert np.corrcoef(e.clip, ref)[0, 1] > 0.98  # lossy codecs change the sound a little


def test_public_names_load_on_first_use_without_torch_at_import():
    """``import coala_embed`` and ``coala-embed --help`` do not load torch (PEP 562 lazy names), and every
    name in ``__all__`` resolves to the object its module defines."""
    import subprocess
    import sys

    import coala_embed

    code = (
        "import sys, coala_embed\n"
        "from coala_embed.cli import main\n"
        "try:\n    main(['embed', '--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from coala_embed import get_embedding\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(coala_embed.__all__) == {*coala_embed._LAZY, "__version__"}
    for name in coala_embed.__all__:
        assert getattr(coala_embed, name) is not None
    assert coala_embed.get_embedding is get_embedding and coala_embed.AudioError is AudioError
    with pytest.raises(AttributeError):
        coala_embed.no_such_name  # noqa: B018


def test_one_clip_vector_function():
    from coala_embed.api import clip_vector

    frames = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    np.testing.assert_allclose(clip_vector(frames), frames.mean(axis=0), rtol=1e-6, atol=1e-7)
    ms = clip_vector(frames, "meanstd")
    assert ms.shape == (10,) and ms.dtype == np.float32
    np.testing.assert_allclose(ms[5:], frames.std(axis=0), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="stat must be"):
        clip_vector(frames, "max")


@pytest.mark.parametrize("stat", ["mean", "meanstd"])
def test_the_clip_vector_from_parts_equals_the_whole(stat):
    """What the command line computes for a long file, block by block without keeping the patches' readout."""
    from coala_embed.api import ClipAccumulator, clip_vector

    frames = np.random.default_rng(1).standard_normal((500, 6)).astype(np.float32) + 3
    acc = ClipAccumulator(stat)
    for a in range(0, 500, 37):
        acc.add(frames[a : a + 37])
    assert acc.n == 500
    np.testing.assert_allclose(acc.vector(), clip_vector(frames, stat), rtol=1e-6, atol=1e-7)


def test_the_z_max_clip_vector_everywhere(tmp_path):
    """A checkpoint with ``clip.readout = "z+max"``: get_embedding, embed_file, the CLI and a saved-and-loaded
    copy give the same 1664-d clip vector (its first 1152 columns the paper's mean of z), frames stay z, and the
    co-aligned tags read the first 1152 columns."""
    from dataclasses import replace

    from click.testing import CliRunner
    from conftest import chirp, random_model

    from coala_embed import embed_file, get_embedding, load_model, save_pretrained
    from coala_embed.cli import main
    from coala_embed.tags import predict_tags, tag_scores

    plain = random_model().optimize()
    model = random_model()
    model.config = replace(model.config, clip=replace(model.config.clip, readout="z+max"))
    folder = save_pretrained(model, tmp_path / "w", trained=False)
    model = load_model(folder, device="cpu")
    assert model.config.clip.readout == "z+max"
    x = chirp(5.0)
    clip = get_embedding(x, 22_000, model=model)
    frames, _ = get_embedding(x, 22_000, model=model, frames=True)
    assert clip.shape == (1664,) and frames.shape[1] == 1152
    np.testing.assert_allclose(clip[:1152], get_embedding(x, 22_000, model=plain), atol=1e-6)
    np.testing.assert_allclose(clip[:1152], frames.mean(axis=0), atol=1e-6)
    sf.write(tmp_path / "a.wav", x, 22_000, subtype="FLOAT")
    np.testing.assert_allclose(embed_file(tmp_path / "a.wav", model=model).clip, clip, atol=1e-6)
    r = CliRunner().invoke(main, ["embed", str(tmp_path / "a.wav"), "-o", str(tmp_path / "f.npy"), "--weights",
                                  str(folder), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = np.load(tmp_path / "f.npy")
    assert rows.shape == (1, 1664)
    np.testing.assert_allclose(rows[0], clip, atol=1e-5)
    torch.testing.assert_close(tag_scores(model, rows), tag_scores(model, rows[:, :1152]))
    assert predict_tags(x, 22_000, model=model, top_k=3) == predict_tags(x, 22_000, model=plain, top_k=3)
    # HEAR: the scene embedding is the clip vector, the timestamp embeddings are z
    from coala_embed.hear import HearModel, get_scene_embeddings, get_timestamp_embeddings

    audio = torch.from_numpy(np.stack([chirp(3.0, sr=22_050)]))
    hear, hear_plain = HearModel(model), HearModel(plain)
    assert (hear.scene_embedding_size, hear.timestamp_embedding_size) == (1664, 1152)
    assert get_scene_embeddings(audio, hear).shape == (1, 1664)
    np.testing.assert_allclose(
        get_timestamp_embeddings(audio, hear)[0].numpy(),
        get_timestamp_embeddings(audio, hear_plain)[0].numpy(),
        atol=1e-6,
    )
