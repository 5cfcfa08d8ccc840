"""The front-end against librosa (docs/method.md section 1), padding and chunking, streaming."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SR, chirp, fsdd_file, noise, sine

from coala_embed.config import LOG_EPS, FrontendConfig
from coala_embed.errors import AudioError
from coala_embed.frontend import (
    DITHER_CACHE_SECONDS,
    StreamingPatches,
    _torch_constants,
    chunk_starts,
    dither,
    log_mel,
    mel_filterbank,
    pad,
    patches_from_audio,
    prepare,
    to_mono,
)

CFG = FrontendConfig()


def librosa_log_mel(y: np.ndarray) -> np.ndarray:
    """The original's compute_spectrogram with librosa 0.7.2 semantics (reflect padding made explicit)."""
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=96, power=1.0, pad_mode="reflect", htk=False, norm="slaney",
        fmin=0.0, fmax=11_000.0, dtype=np.float64,
    )  # fmt: skip
    return np.log(mel + np.finfo(np.float32).eps)


def test_filterbank_equals_librosa_slaney():
    ref = librosa.filters.mel(
        sr=22_000, n_fft=1024, n_mels=96, fmin=0, fmax=11_000, htk=False, norm="slaney", dtype=np.float64
    )
    np.testing.assert_allclose(mel_filterbank(22_000, 1024, 96, 0.0, 11_000.0), ref, rtol=1e-10, atol=1e-14)


def _real_recording() -> np.ndarray:
    f = fsdd_file()
    if f is None:
        pytest.skip("../shared/data/fsdd is not beside the checkout")
    y, sr = sf.read(f, dtype="float32")
    return librosa.resample(y, orig_sr=sr, target_sr=SR)


@pytest.mark.parametrize("signal", ["noise", "sine", "two_sines", "chirp", "real"])
def test_log_mel_matches_librosa(signal):
    y = {
        "noise": lambda: noise(4.0),
        "sine": lambda: sine(440, 4.0),
        "two_sines": lambda: sine(97, 4.0) + sine(5_003, 4.0, amp=0.01),
        "chirp": lambda: chirp(4.0),
        "real": _real_recording,
    }[signal]()
    ours = log_mel(y, CFG).numpy()
    ref = librosa_log_mel(y)
    assert ours.shape == ref.shape == (96, 1 + len(y) // 512)
    assert np.abs(ours - ref).max() <= 1e-4


def test_log_uses_natural_log_and_float32_eps():
    silence = np.zeros(22_000, np.float32)
    assert torch.allclose(log_mel(silence, CFG), torch.tensor(np.log(LOG_EPS), dtype=torch.float32))


def test_original_pooling_pads_to_10s_and_keeps_four_chunks():
    cfg = FrontendConfig(pooling="original")
    p = patches_from_audio(sine(440, 1.0), cfg)
    assert p.patches.shape == (4, 96, 96)  # 430 frames -> chunks at 0, 96, 192, 288
    np.testing.assert_allclose(p.starts, np.array([0, 96, 192, 288]) * 512 / 22_000)
    long = patches_from_audio(noise(30.0), cfg)  # > 10 s: no padding, no noise
    assert len(long.patches) == (1 + 30 * 22_000 // 512) // 96
    assert np.array_equal(pad(noise(30.0), cfg), noise(30.0))


@pytest.mark.parametrize("stft_dtype", ["float64", "float32"])
def test_magnitude_equals_complex_abs(stft_dtype):
    """The front-end takes |X| as sqrt(re^2 + im^2) (faster than torch's complex abs): the same log-mel within
    float rounding of the textbook formula."""
    cfg = FrontendConfig(stft_dtype=stft_dtype)
    y = sine(97, 3.0) + sine(5_003, 3.0, amp=0.01) + noise(3.0) * 1e-3
    window, fb = _torch_constants(cfg)
    spec = torch.stft(torch.as_tensor(y).to(window.dtype), 1024, 512, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # fmt: skip
    ref = torch.log(fb @ spec.abs() + cfg.log_eps).float()
    # float64: equal up to the final cast to float32 (log-mels of order 10: a float32 ulp is ~1e-6)
    atol = 4e-7 if stft_dtype == "float64" else 1e-5
    torch.testing.assert_close(log_mel(y, cfg), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("seconds", [0.001, 1.0, DITHER_CACHE_SECONDS, DITHER_CACHE_SECONDS + 1])
def test_dither_is_the_seeded_draw_cached_or_not(seconds):
    """dither(n) slices a cached prefix of one seeded sequence: bit for bit the fresh draw, read-only, and
    past the cache drawn afresh."""
    n = int(seconds * CFG.sample_rate)
    ref = (CFG.pad_noise * np.random.default_rng(CFG.noise_seed).random(n)).astype(np.float32)
    d = dither(n, CFG)
    assert d.dtype == np.float32 and np.array_equal(d, ref)
    if seconds <= DITHER_CACHE_SECONDS:
        with pytest.raises(ValueError):
            d[0] = 1.0  # the cache cannot be written through a result
    other = dither(n, FrontendConfig(noise_seed=1))
    assert not np.array_equal(other, d) or n == 0


def test_original_dither_is_seeded_and_non_negative():
    cfg = FrontendConfig(pooling="original")
    a, b = pad(np.zeros(100, np.float32), cfg), pad(np.zeros(100, np.float32), cfg)
    assert np.array_equal(a, b) and len(a) == 220_000
    assert a.min() >= 0 and a.max() < 5e-4 and abs(a.mean() - 2.5e-4) < 1e-5


def test_signal_pooling_covers_the_end_without_noise_chunks():
    p = patches_from_audio(noise(5.0), CFG)  # 215 frames: chunks at 0, 96 and one ending at frame 214
    starts = chunk_starts(1 + 5 * 22_000 // 512, CFG)
    assert list(starts) == [0, 96, 215 - 96]
    assert p.patches.shape == (3, 96, 96)
    short = patches_from_audio(sine(440, 0.5), CFG)  # shorter than a patch: padded to exactly one
    assert short.patches.shape == (1, 96, 96)


def test_overlapping_patches():
    cfg = FrontendConfig(chunk_hop=48)
    assert list(chunk_starts(240, cfg)) == [0, 48, 96, 144]


@pytest.mark.parametrize("pooling", ["signal", "original"])
@pytest.mark.parametrize("hop", [96, 48])
def test_streaming_equals_whole_signal(pooling, hop):
    cfg = FrontendConfig(pooling=pooling, chunk_hop=hop)
    x = noise(37.3, seed=3)
    ref = patches_from_audio(x, cfg)
    stream = StreamingPatches(cfg)
    parts = [stream.push(x[i : i + 50_000], last=i + 50_000 >= len(x)) for i in range(0, len(x), 50_000)]
    got = torch.cat([p.patches for p in parts])
    assert torch.equal(got, ref.patches)
    np.testing.assert_allclose(np.concatenate([p.starts for p in parts]), ref.starts)


def test_a_fine_hop_streams_in_shorter_blocks_with_the_same_patches(tmp_path):
    """With --hop 2 a file is cut block by block past two short blocks (memory stays flat), into the same
    patches as the whole signal."""
    from dataclasses import replace

    from coala_embed.frontend import resample
    from coala_embed.streaming import file_patches, stream_block_seconds, stream_threshold

    cfg = replace(CFG, chunk_hop=2)
    assert stream_block_seconds(CFG) == 60.0 and 5.0 <= stream_block_seconds(cfg) < 15.0
    assert stream_threshold(CFG) == 120.0 and stream_threshold(cfg) < 30.0
    x = noise(31.0, sr=16_000, seed=4)
    sf.write(tmp_path / "a.wav", x, 16_000, subtype="FLOAT")
    got = file_patches(tmp_path / "a.wav", cfg)
    ref = patches_from_audio(resample(x, 16_000, cfg.sample_rate), cfg)
    assert got.patches.shape == ref.patches.shape and len(ref.patches) > 600
    torch.testing.assert_close(got.patches, ref.patches, rtol=0, atol=1e-4)


def test_to_mono_channel_axis():
    x = np.stack([np.ones(1000), -np.ones(1000) * 3])
    np.testing.assert_allclose(to_mono(x), -1.0)  # [channels, samples]
    np.testing.assert_allclose(to_mono(x.T), -1.0)  # [samples, channels]
    np.testing.assert_allclose(to_mono(torch.from_numpy(x)), -1.0)


@pytest.mark.parametrize(
    "audio, sr, match",
    [
        (np.zeros(0, np.float32), SR, "empty"),
        (np.array([0.0, np.nan] * 100, np.float32), SR, "NaN"),
        (np.array([0.0, np.inf] * 100, np.float32), SR, "NaN or Inf"),
        (np.zeros((2, 2, 100), np.float32), SR, "1-D or 2-D"),
        (np.zeros((2, 0), np.float32), SR, "empty"),
        (np.zeros(1000, np.float32), 0, "sample rate"),
        (np.zeros(1000, np.float32), -8000, "sample rate"),
        (np.array(["a", "b"]), SR, "numeric"),
    ],
)
def test_bad_audio_raises_clear_error(audio, sr, match):
    with pytest.raises(AudioError, match=match):
        prepare(audio, sr, CFG, name="my-input")


def test_resampling_any_rate():
    p = prepare(sine(440, 3.0, 44_100), 44_100, CFG)
    q = prepare(sine(440, 3.0, 22_000), 22_000, CFG)
    assert p.patches.shape == q.patches.shape
    loud = q.patches > -4  # the tone's bands; far below it the resampler's stopband noise differs
    assert loud.any() and (p.patches - q.patches)[loud].abs().max() < 0.05


@pytest.mark.parametrize("pooling", ["signal", "original"])
def test_float32_fast_path_tolerance(pooling):
    """The fast path (float32 STFT) keeps patch embeddings within 1e-5 relative (L2) of the float64 default:
    the pipeline's dither lifts every band above float32's noise floor. Clips over 10 s in `original` mode get
    no dither: there a pure digital tone is the worst case, within 1e-3."""
    from conftest import random_model

    from coala_embed.api import get_embedding

    ref_model = random_model(pooling=pooling).optimize()
    fast_model = random_model(pooling=pooling, stft_dtype="float32").optimize()
    signals = [sine(440, 5.0), noise(5.0), chirp(5.0), sine(440, 12.0) + sine(3000, 12.0, amp=1e-3)]
    f = fsdd_file()
    if f is not None:
        y, sr = sf.read(f, dtype="float32")
        signals.append(librosa.resample(y, orig_sr=sr, target_sr=SR))
    for y in signals:
        a = get_embedding(y, SR, model=ref_model, frames=True)[0]
        b = get_embedding(y, SR, model=fast_model, frames=True)[0]
        tolerance = 1e-3 if pooling == "original" and len(y) > 10 * SR else 1e-5
        assert (np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)).max() < tolerance
