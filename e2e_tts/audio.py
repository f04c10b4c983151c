"""Audio I/O, checks, normalisation and the log-mel spectrogram, in plain torch (no torchaudio).

Waveforms are float32 numpy arrays ``(N,)`` in [-1, 1] at the rate they say; mels are channel-last
``(B, T, n_mels)`` natural-log magnitudes, ``T = N // hop_length`` frames (frame ``i`` centred on sample
``i * hop_length``), so that a token rate of ``sample_rate / hop_length / k`` maps to exactly ``k`` frames.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import nn

from e2e_tts.checks import FieldError, at_least, positive

LOG_FLOOR = 1e-5  # magnitude floor before the log: log(1e-5) = -11.5 is "silence"


@dataclass
class AudioConfig:
    """Sample rate, mel analysis and acceptance bounds shared by data, models and synthesis."""

    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 320  # 50 mel frames/s at 16 kHz: 2 frames per 25 Hz token
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = None  # None = sample_rate / 2
    min_duration: float = 0.3
    max_duration: float = 20.0
    silence_threshold_db: float = -50.0  # peak dBFS below which a clip counts as silent
    peak_level: float = 0.95  # peak after normalisation

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "max_duration", "peak_level"):
            positive(self, name)
        at_least(self, "min_duration", 0.0)
        at_least(self, "f_min", 0.0)
        if self.f_max is not None and not self.f_min < self.f_max <= self.sample_rate / 2:
            raise FieldError("f_max", f"must be above f_min {self.f_min} and at most half the sample rate "
                                      f"{self.sample_rate / 2}, got {self.f_max}")
        if self.win_length > self.n_fft:
            raise FieldError("win_length", f"must be <= n_fft {self.n_fft}, got {self.win_length}")
        if self.max_duration < self.min_duration:
            raise FieldError("max_duration", f"must be >= min_duration {self.min_duration}, got {self.max_duration}")
        if self.peak_level > 1:
            raise FieldError("peak_level", f"must be <= 1 (full scale), got {self.peak_level}")


class AudioRejected(ValueError):
    """Raised for audio that must not be trained on; ``reason`` is a short countable key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def load_audio(source: str | Path | bytes, sample_rate: int | None = None,
               max_duration: float | None = None) -> tuple[np.ndarray, int]:
    """Reads wav/flac/ogg from a path or bytes, mixes to mono and optionally resamples.

    The length is judged from the header before anything is decoded: a header that claims hours would otherwise
    make the decoder and the resampler allocate hours.

    Args:
        source: a file path or the file's bytes.
        sample_rate: the rate to resample to (``None``: keep the file's).
        max_duration: the longest accepted audio in seconds (``None``: no bound).
    Returns:
        waveform ``(N,)`` float32 and its sample rate.
    Raises:
        AudioRejected: ``unreadable`` when the file cannot be decoded, ``truncated`` when it ends before the audio its
            header declares, ``too_long`` when the header declares more than ``max_duration``.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as file:
            rate, declared = file.samplerate, file.frames
            if max_duration is not None and declared > max_duration * rate:
                raise AudioRejected("too_long", f"{name}: the header declares {declared / rate:.2f}s > {max_duration}s")
            data = file.read(dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioRejected("unreadable", f"{name}: {err}") from err
    # libsndfile quietly shortens a wav's declared length to what the file holds, so the header is read here too.
    missing = missing_wav_data(source)
    if missing:
        raise AudioRejected("truncated", f"{name}: the header declares {missing[0]} bytes of audio, the file holds "
                                         f"{missing[1]}")
    if len(data) < declared:
        raise AudioRejected("truncated", f"{name}: the header declares {declared} frames, the file holds {len(data)}")
    wav = data.mean(axis=1)
    if sample_rate is not None and rate != sample_rate:
        wav, rate = resample(wav, rate, sample_rate), sample_rate
    return np.ascontiguousarray(wav, dtype=np.float32), rate


_UNKNOWN_LENGTH = 0xFFFFFFFF  # the data size of a RIFF wav streamed to a pipe, whose header cannot be rewritten


def missing_wav_data(source: str | Path | bytes) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF/WAVE ``data`` chunk that the file cuts short, else ``None``."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as file:
        header = file.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        size = file.seek(0, io.SEEK_END)
        file.seek(12)
        while len(chunk := file.read(8)) == 8:
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                present = size - file.tell()
                return (declared, present) if present < declared != _UNKNOWN_LENGTH else None
            file.seek(declared + declared % 2, io.SEEK_CUR)  # chunks are padded to an even size
    return None


def resample(wav: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """High-quality resampling of ``(N,)`` with soxr."""
    if orig_rate == target_rate:
        return wav
    return soxr.resample(wav, orig_rate, target_rate).astype(np.float32)


def write_audio(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Writes ``(N,)`` to wav/flac (by suffix), clipping to [-1, 1]."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wav, -1.0, 1.0), sample_rate)


def encode_flac(wav: np.ndarray, sample_rate: int) -> bytes:
    """``(N,)`` float -> 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def check_audio(wav: np.ndarray, sample_rate: int, config: AudioConfig) -> None:
    """Rejects audio that would poison training.

    Raises:
        AudioRejected: with reason ``nan_or_inf``, ``too_short``, ``too_long`` or ``silent``.
    """
    if not np.isfinite(wav).all():
        raise AudioRejected("nan_or_inf", "waveform contains NaN or Inf")
    duration = len(wav) / sample_rate
    if duration < config.min_duration:
        raise AudioRejected("too_short", f"{duration:.2f}s < {config.min_duration}s")
    if duration > config.max_duration:
        raise AudioRejected("too_long", f"{duration:.2f}s > {config.max_duration}s")
    if is_silent(wav, config.silence_threshold_db):
        raise AudioRejected("silent", f"peak {float(np.abs(wav).max()):.2e} below {config.silence_threshold_db} dBFS")


def is_silent(wav: np.ndarray, threshold_db: float) -> bool:
    """True for an empty ``(N,)`` waveform or one whose absolute peak is below ``threshold_db`` dBFS."""
    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    return peak <= 0 or 20 * math.log10(peak) < threshold_db


def normalize_peak(wav: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Scales ``(N,)`` so that its absolute peak is ``level`` (silence is returned unchanged)."""
    peak = float(np.abs(wav).max()) if len(wav) else 0.0
    return wav if peak == 0 else (wav * (level / peak)).astype(np.float32)


def normalize_loudness(wav: np.ndarray, target_rms_db: float = -20.0, peak_limit: float = 0.99) -> np.ndarray:
    """Scales ``(N,)`` to an RMS level in dBFS, then limits the peak so that it cannot clip."""
    rms = float(np.sqrt(np.mean(np.square(wav)))) if len(wav) else 0.0
    if rms == 0:
        return wav
    out = wav * (10 ** (target_rms_db / 20) / rms)
    peak = float(np.abs(out).max())
    if peak > peak_limit:
        out = out * (peak_limit / peak)
    return out.astype(np.float32)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Slaney-style (HTK mel scale, area-normalised) triangular filters ``(n_mels, n_fft // 2 + 1)``."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f: float) -> float:  # plain floats: the filterbank must also build on the meta device
        return 2595.0 * math.log10(1.0 + f / 700.0)

    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    up = (fft_freqs[None, :] - lower) / (centre - lower)
    down = (upper - fft_freqs[None, :]) / (upper - centre)
    filters = torch.clamp(torch.minimum(up, down), min=0.0)
    filters *= (2.0 / (upper - lower))  # equal area per filter
    return filters.float()


def stft(wav: torch.Tensor, n_fft: int, hop_length: int, window: torch.Tensor) -> torch.Tensor:
    """Complex STFT with the project's framing: ``(B, N)`` -> ``(B, n_fft // 2 + 1, N // hop)``.

    Reflect padding by ``n_fft // 2`` (``center=True``) centres frame ``t`` on sample ``t * hop``; the trailing
    frame that ``center=True`` adds beyond ``N // hop`` is dropped, so ``T`` frames always span ``T * hop``
    samples (what the vocoder's inverse relies on). A bf16 or fp16 ``wav`` is transformed in float32: neither MKL
    (CPU) nor cuFFT has a bf16 FFT.
    """
    if wav.dtype in (torch.bfloat16, torch.float16):
        wav = wav.float()
    spec = torch.stft(wav, n_fft, hop_length, window.shape[-1], window.to(wav.dtype), center=True,
                      pad_mode="reflect", return_complex=True)
    return spec[..., :wav.shape[-1] // hop_length]


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram: ``(B, N)`` or ``(N,)`` waveform -> ``(B, N // hop, n_mels)``.

    Differentiable (used inside vocoder losses) and device-agnostic. Computed in float32 from a bf16 waveform
    (see :func:`stft`).
    """

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)
        self.register_buffer("filters", mel_filterbank(config.sample_rate, config.n_fft, config.n_mels,
                                                       config.f_min, config.f_max), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.config.hop_length

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude ``(B, T, n_fft // 2 + 1)`` with ``T = N // hop``."""
        if wav.dim() == 1:
            wav = wav[None]
        return stft(wav, self.config.n_fft, self.config.hop_length, self.window).abs().transpose(1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        magnitude = self.magnitude(wav)
        mel = magnitude @ self.filters.T.to(magnitude.dtype)
        return torch.log(torch.clamp(mel, min=LOG_FLOOR))
