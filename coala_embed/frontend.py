"""Waveform -> log-mel patches: mono, resample, pad, STFT, Slaney mel, log, chunking (docs/method.md section 1)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import soxr
import torch

from .config import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, FrontendConfig
from .errors import AudioError


@dataclass
class Patches:
    """Log-mel patches of one clip, before the scaler.

    Attributes:
        patches: ``[N, n_mels, patch_frames]`` float32, axes (chunk, mel, time).
        starts: ``[N]`` start time of each patch in seconds.
        ends: ``[N]`` end time of each patch in seconds.
        duration: the clip's duration in seconds (before padding).
    """

    patches: torch.Tensor
    starts: np.ndarray
    ends: np.ndarray
    duration: float


def to_mono(audio: np.ndarray | torch.Tensor, name: str = "audio") -> np.ndarray:
    """Return a float32 mono copy of ``audio`` after checking it.

    Args:
        audio: ``[n_samples]`` or ``[channels, n_samples]`` / ``[n_samples, channels]``. For 2-D input the
            shorter axis is taken as the channel axis (a clip has more samples than channels); a square
            array is read as ``[channels, n_samples]``. Channels are averaged.
        name: how error messages name the input.

    Raises:
        AudioError: not 1-D or 2-D, empty, zero channels, holding NaN or Inf, or 64-bit integers.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.is_floating_point() else audio).numpy()
    audio = np.asarray(audio)
    if audio.dtype.kind not in "fiu":
        raise AudioError(f"{name}: audio must be numeric, got dtype {audio.dtype}")
    if audio.dtype.kind in "iu" and audio.dtype.itemsize > 4:
        # no PCM format has 64-bit integers: a list of Python ints, or int16 samples widened by numpy or torch,
        # would be scaled by 2**63 into silence
        raise AudioError(
            f"{name}: {audio.dtype} samples have no PCM scale (a list of Python ints becomes int64); pass floats in "
            "[-1, 1], or integers as int16 or int32 PCM (e.g. np.asarray(samples, np.int16))"
        )
    if audio.dtype.kind in "iu":  # PCM integers: scaled by their type's range to [-1, 1), as soundfile reads them
        audio = pcm_to_float(audio)
    if audio.ndim == 2:
        if 0 in audio.shape:
            raise AudioError(f"{name}: audio is empty (shape {audio.shape}, zero channels or samples)")
        channel_axis = 0 if audio.shape[0] <= audio.shape[1] else 1
        audio = audio.astype(np.float32).mean(axis=channel_axis)
    elif audio.ndim != 1:
        raise AudioError(f"{name}: audio must be 1-D or 2-D [channels, samples], got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    step = 1 << 20  # checked a million samples at a time: no boolean copy of an hour of audio
    if not all(np.isfinite(audio[i : i + step]).all() for i in range(0, audio.size, step)):
        raise AudioError(f"{name}: audio holds NaN or Inf samples")
    return audio


def pcm_to_float(audio: np.ndarray) -> np.ndarray:
    """Integer PCM samples -> float32 in [-1, 1): signed types divided by 2**(bits-1), unsigned ones (8-bit WAV)
    centred first; what soundfile returns for the same samples read from a file."""
    info = np.iinfo(audio.dtype)
    scale = np.float32(2.0 ** (info.bits - 1))
    if info.min == 0:
        return (audio.astype(np.float32) - scale) / scale
    return audio.astype(np.float32) / scale


def check_sample_rate(sr: float, name: str = "audio", *, file: bool = False) -> int:
    """Return ``sr`` as an int, or raise AudioError when it is not an integer between ``MIN_SAMPLE_RATE`` and
    ``MAX_SAMPLE_RATE`` Hz (a rate of 1 Hz would make a 3-second clip hours long at 22 kHz). ``file``: the rate
    is a file's header, ``name`` the file."""
    try:
        ok = not isinstance(sr, bool) and math.isfinite(sr) and int(sr) == sr
    except TypeError:
        ok = False
    if not ok:
        raise AudioError(f"{name}: sample rate must be an integer number of Hz, got {sr!r}")
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        hint = (
            "its header is damaged, or the file must be resampled into that range first"
            if file
            else "pass the rate the audio was recorded at, e.g. get_embedding(audio, 44100)"
        )
        raise AudioError(f"{name}: sample rate {sr!r} Hz is outside {MIN_SAMPLE_RATE:,}-{MAX_SAMPLE_RATE:,} Hz; {hint}")
    return int(sr)


def resample(audio: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample mono float32 audio with soxr (high quality); a no-op when the rates match."""
    if sr == target_sr:
        return audio
    return soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above (librosa htk=False).
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney mel filterbank ``[n_mels, 1 + n_fft // 2]`` float64, computed once per setting.

    Equals ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False,
    norm='slaney')`` (librosa 0.7.2's ``norm=1``); ``tests/test_frontend.py`` checks it against librosa.
    """
    fft_freqs = np.linspace(0.0, sr / 2, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalisation
    return weights


@functools.lru_cache(maxsize=8)
def _torch_constants(cfg: FrontendConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hann window and the mel filterbank in the STFT's dtype, on ``device`` (the CPU by default)."""
    dtype = torch.float64 if cfg.stft_dtype == "float64" else torch.float32
    window = torch.hann_window(cfg.n_fft, periodic=True, dtype=dtype)
    fb = torch.from_numpy(mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)).to(dtype)
    return window.to(device), fb.to(device)


def _spectrum_to_log_mel(frames_stft: torch.Tensor, fb: torch.Tensor, cfg: FrontendConfig) -> torch.Tensor:
    # |X| as sqrt(re^2 + im^2): 2-3x faster than the complex abs (a hypot per bin) and within one rounding of
    # it (relative 1e-7 in float32, 2e-16 in float64; tests/test_frontend.py).
    ri = torch.view_as_real(frames_stft)
    re, im = ri[..., 0], ri[..., 1]
    return torch.log(fb @ torch.sqrt(re * re + im * im) + cfg.log_eps).to(torch.float32)


def log_mel(
    audio: np.ndarray | torch.Tensor, cfg: FrontendConfig, device: str | torch.device | None = None
) -> torch.Tensor:
    """Log-mel spectrogram ``[n_mels, T]`` float32 of mono audio at ``cfg.sample_rate``, computed on ``device``
    (default: where ``audio`` is, the CPU for an array) and returned there.

    Centred STFT with reflect padding and a periodic Hann window, magnitude (power 1), Slaney mel, natural
    log of ``mel + log_eps``; ``T = 1 + n_samples // hop_length``. By default the STFT and the mel product run
    in float64 (``cfg.stft_dtype``): in float32, bands 100 dB or more below a pure tone's peak sit at the
    float32 FFT's noise floor and their logs move by up to ~0.7; on recordings with any noise floor the
    float32 fast path stays within the tolerance that ``tests/test_frontend.py`` states.
    """
    x = torch.as_tensor(audio)
    window, fb = _torch_constants(cfg, torch.device(device) if device is not None else x.device)
    x = x.to(window.device, window.dtype)
    if x.shape[-1] <= cfg.n_fft // 2:
        raise AudioError(f"log_mel needs more than {cfg.n_fft // 2} samples, got {x.shape[-1]}")
    spec = torch.stft(x, cfg.n_fft, cfg.hop_length, window=window, center=True, pad_mode="reflect", return_complex=True)
    return _spectrum_to_log_mel(spec, fb, cfg)


def dither(n: int, cfg: FrontendConfig) -> np.ndarray:
    """The original's pad noise, ``pad_noise * U[0, 1)``, from a generator seeded by ``cfg.noise_seed``.

    Every call starts the generator afresh, so ``dither(n)`` is the first ``n`` values of one fixed sequence:
    the first ``DITHER_CACHE_SECONDS`` of it are computed once per setting and sliced (read-only), which
    saves drawing ~1 ns per sample for every clip; longer requests are drawn in full.
    """
    cached = _dither_prefix(cfg.noise_seed, cfg.pad_noise, int(DITHER_CACHE_SECONDS * cfg.sample_rate))
    if n <= len(cached):
        return cached[:n]
    return _draw_dither(n, cfg.noise_seed, cfg.pad_noise)


DITHER_CACHE_SECONDS = 130.0  # covers every file the CLI decodes whole (streaming.STREAM_SECONDS) and 10-s pads


def _draw_dither(n: int, seed: int, amplitude: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.random(n, dtype=np.float64)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _dither_prefix(seed: int, amplitude: float, n: int) -> np.ndarray:
    out = _draw_dither(n, seed, amplitude)
    out.flags.writeable = False
    return out


def chunk_starts(n_frames: int, cfg: FrontendConfig) -> np.ndarray:
    """First frame of each patch for a signal of ``n_frames`` frames (after padding, see ``pad``)."""
    p, hop = cfg.patch_frames, cfg.chunk_hop
    if n_frames < p:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n_frames - p + 1, hop)
    if cfg.pooling == "signal" and starts[-1] + p < n_frames:
        # One last patch that ends on the last frame, so no signal at the end is dropped.
        starts = np.append(starts, n_frames - p)
    return starts


def gather(spec: torch.Tensor, starts: np.ndarray, cfg: FrontendConfig, first_frame: int = 0) -> torch.Tensor:
    """The patches ``[N, n_mels, patch_frames]`` of a log-mel spectrogram ``[n_mels, F]`` whose column 0 is frame
    ``first_frame``, starting at the frames ``starts``: the one place patches are cut (whole clips, streamed
    blocks and the HEAR wrapper)."""
    if len(starts) == 0:
        return torch.zeros(0, cfg.n_mels, cfg.patch_frames, device=spec.device)
    idx = torch.as_tensor(np.asarray(starts), dtype=torch.long)[:, None] - first_frame + torch.arange(cfg.patch_frames)
    idx = idx.to(spec.device)
    return spec[:, idx].permute(1, 0, 2).contiguous()


def patch_times(starts: np.ndarray, cfg: FrontendConfig) -> tuple[np.ndarray, np.ndarray]:
    """Start and end in seconds of the patches that start at the frames ``starts``."""
    sec = cfg.hop_length / cfg.sample_rate
    s = np.asarray(starts, dtype=np.int64)
    return s * sec, (s + cfg.patch_frames) * sec


def pad(audio: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Pad mono audio at the model rate as the pooling mode requires, and dither it.

    ``original``: clips of up to ``pad_seconds`` are zero-padded to that length and the whole buffer gets
    the dither (docs/method.md 1.2); longer clips are left as they are, with no noise. ``signal``: clips shorter
    than one patch are zero-padded to one patch; every clip gets the dither over its whole length. The
    dither is seeded, so the same clip always gives the same patches.
    """
    n = audio.shape[0]
    if cfg.pooling == "original":
        target = int(round(cfg.pad_seconds * cfg.sample_rate))
        if n > target:
            return audio
    else:
        target = max(n, (cfg.patch_frames - 1) * cfg.hop_length)
    out = np.zeros(target, dtype=np.float32)
    out[:n] = audio
    out += dither(target, cfg)
    return out


def patches_from_audio(audio: np.ndarray, cfg: FrontendConfig, device: str | torch.device | None = None) -> Patches:
    """Cut mono audio at the model rate into unscaled log-mel patches (docs/method.md 1.6), the log-mel computed on
    ``device`` (the CPU by default), where the patches are returned."""
    duration = audio.shape[0] / cfg.sample_rate
    spec = log_mel(pad(audio, cfg), cfg, device)
    starts = chunk_starts(spec.shape[1], cfg)
    return Patches(gather(spec, starts, cfg), *patch_times(starts, cfg), duration)


def prepare(audio: np.ndarray | torch.Tensor, sr: float, cfg: FrontendConfig, name: str = "audio") -> Patches:
    """Check, down-mix, resample and cut any audio array into patches; errors name ``name``."""
    sr = check_sample_rate(sr, name)
    mono = resample(to_mono(audio, name), sr, cfg.sample_rate)
    if mono.size == 0:
        raise AudioError(f"{name}: audio is too short to resample ({audio.shape[-1]} samples at {sr} Hz)")
    return patches_from_audio(mono, cfg)


class StreamingPatches:
    """Cut a long signal into the same patches as :func:`patches_from_audio`, block by block.

    Feed mono blocks at the model rate with :meth:`push` (``last=True`` on the final one); each call returns
    the patches completed so far. Memory stays bounded by a block plus one patch. Only for signals longer
    than ``pad_seconds`` (and than one patch): shorter ones are padded as a whole by :func:`pad`.
    The frames equal a centred STFT over the whole signal: the first and last ``n_fft // 2`` samples are
    reflected as ``torch.stft(center=True, pad_mode='reflect')`` does, and the seeded dither (signal mode)
    is drawn in sequence, which gives the same numbers as one draw over the whole length. The STFT runs on
    ``device`` (the CPU by default), where the patches are returned.
    """

    def __init__(self, cfg: FrontendConfig, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.half = cfg.n_fft // 2
        self.rng = np.random.default_rng(cfg.noise_seed) if cfg.pooling == "signal" else None
        self.buf = np.zeros(0, dtype=np.float32)  # padded signal from sample `frame * hop` of the next frame on
        self.frame = 0  # next frame to compute
        self.spec = torch.zeros(cfg.n_mels, 0, device=self.device)  # spectrogram columns from frame `spec0` on
        self.spec0 = 0
        self.next_start = 0  # next patch start (frame)
        self.last_start = -1
        self.n = 0  # samples seen
        self.tail = np.zeros(0, dtype=np.float32)  # last n_fft // 2 + 1 samples, for the final reflection

    def _frames(self) -> None:
        cfg, hop = self.cfg, self.cfg.hop_length
        n_new = (len(self.buf) - cfg.n_fft) // hop + 1 if len(self.buf) >= cfg.n_fft else 0
        if n_new <= 0:
            return
        window, fb = _torch_constants(cfg, self.device)
        seg = torch.from_numpy(self.buf[: (n_new - 1) * hop + cfg.n_fft]).to(self.device, window.dtype)
        cols = _spectrum_to_log_mel(
            torch.stft(seg, cfg.n_fft, hop, window=window, center=False, return_complex=True), fb, cfg
        )
        self.spec = torch.cat([self.spec, cols], dim=1)
        self.frame += n_new
        self.buf = self.buf[n_new * hop :]

    def _emit(self, final: bool) -> Patches:
        cfg, p = self.cfg, self.cfg.patch_frames
        starts = []
        while self.next_start + p <= self.frame:
            starts.append(self.next_start)
            self.next_start += cfg.chunk_hop
        if final:  # chunk_starts's last-patch rule over the whole signal: a start beyond the grid, if any
            previous = starts[-1] if starts else self.last_start
            starts += [int(s) for s in chunk_starts(self.frame, cfg)[-1:] if s > previous]
        if starts:
            self.last_start = starts[-1]
        patches = gather(self.spec, np.asarray(starts, dtype=np.int64), cfg, first_frame=self.spec0)
        keep_from = min(self.next_start, max(0, self.frame - p))  # keep one patch for the final one
        if keep_from > self.spec0:
            self.spec = self.spec[:, keep_from - self.spec0 :]
            self.spec0 = keep_from
        return Patches(patches, *patch_times(np.asarray(starts), cfg), self.n / cfg.sample_rate)

    def push(self, block: np.ndarray, last: bool = False) -> Patches:
        block = np.asarray(block, dtype=np.float32)
        if self.rng is not None:
            block = block + (self.cfg.pad_noise * self.rng.random(len(block))).astype(np.float32)
        if self.n == 0:
            if len(block) <= self.half:
                raise AudioError("the first block must be longer than n_fft // 2 samples")
            block = np.concatenate([block[1 : self.half + 1][::-1], block])
        self.n += len(block) - (self.half if self.n == 0 else 0)
        self.buf = np.concatenate([self.buf, block])
        self.tail = self.buf[-(self.half + 1) :].copy()
        if last:
            self.buf = np.concatenate([self.buf, self.tail[:-1][::-1]])
        self._frames()
        return self._emit(final=last)


@dataclass
class Signal:
    """Mono float32 audio at the model rate on its way to the front-end: a short clip's whole signal (padded and
    cut at once by :func:`patches_from_audio`) or one block of a long one (cut by :class:`StreamingPatches`).

    Attributes:
        audio: ``[n]`` float32 at ``cfg.sample_rate``.
        whole: the whole clip, rather than a block of a streamed one.
        last: the clip's last part.
    """

    audio: np.ndarray
    whole: bool
    last: bool


class PatchCutter:
    """Cut the :class:`Signal` parts of one clip, in order, into the patches :func:`patches_from_audio` gives
    for the whole clip; the log-mels run on ``device`` (the CPU by default). One cutter per clip."""

    def __init__(self, cfg: FrontendConfig, device: str | torch.device | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.stream: StreamingPatches | None = None

    def __call__(self, signal: Signal) -> Patches:
        if signal.whole:
            return patches_from_audio(signal.audio, self.cfg, self.device)
        if self.stream is None:
            self.stream = StreamingPatches(self.cfg, self.device)
        return self.stream.push(signal.audio, last=signal.last)
