"""Speaker similarity judges behind one interface, chosen by a spec string (``build_similarity``): evaluation's SIM
and training's speaker-similarity reward (e2e_tts.rewards) use the same ones.

Specs:

* ``resemblyzer`` - the offline default: Resemblyzer's GE2E voice encoder (weights ship with the package). Its
  cosines run higher than the official model's and are not comparable with published SIM numbers.
* ``wavlm-ecapa:<checkpoint>`` - Seed-TTS-Eval's SIM: UniSpeech ECAPA-TDNN over WavLM-large loaded from
  ``wavlm_large_finetune.pth`` (:mod:`e2e_tts.scoring.ecapa_tdnn`). As ``verification.py``: each waveform resampled to
  16 kHz with torchaudio's default ``Resample`` (reproduced in :func:`sinc_resample`), embedded alone, scored with
  ``F.cosine_similarity``. The official pairs are (synthesised wav, prompt wav), first channel of each.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from e2e_tts.scoring.asr import check_waveforms
from e2e_tts.scoring.ecapa_tdnn import load_speaker_verifier

SV_RATE = 16000


@runtime_checkable
class SpeakerSimilarity(Protocol):
    """A speaker-embedding judge over mono waveforms ``(N,)``."""

    name: str

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        ...

    def similarity(self, wav_a: np.ndarray, wav_b: np.ndarray, sample_rate: int,
                   sample_rate_b: Optional[int] = None) -> float:
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings, as ``F.cosine_similarity`` computes it (``eps = 1e-8``)."""
    return float(F.cosine_similarity(torch.as_tensor(a)[None], torch.as_tensor(b)[None])[0])


def _pair_similarity(judge: SpeakerSimilarity, wav_a: np.ndarray, wav_b: np.ndarray, sample_rate: int,
                     sample_rate_b: Optional[int]) -> float:
    return cosine(judge.embed(wav_a, sample_rate), judge.embed(wav_b, sample_rate_b or sample_rate))


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
                 rolloff: float = 0.99) -> tuple[torch.Tensor, int]:
    """torchaudio's ``sinc_interp_hann`` kernel ``(new, 1, 2 * width + orig)`` for reduced rates, and ``width``."""
    base_freq = min(orig_freq, new_freq) * rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
    idx = torch.arange(-width, width + orig_freq, dtype=torch.float64)[None, None] / orig_freq
    # int arange / int -> float32 before meeting float64 idx, as in torchaudio with dtype=None
    t = torch.arange(0, -new_freq, -1)[:, None, None] / new_freq + idx
    t = (t * base_freq).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0, dtype=t.dtype), torch.sin(t) / t)
    return (kernels * (window * (base_freq / orig_freq))).to(torch.float32), width


def sinc_resample(wav: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.transforms.Resample(orig_freq, new_freq)`` with its defaults (Hann-windowed sinc, 6 zero
    crossings, rolloff 0.99), without depending on torchaudio: ``(..., N)`` -> ``(..., ceil(N * new / orig))``."""
    if orig_freq == new_freq:
        return wav
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    kernel, width = _sinc_kernel(orig, new)
    shape = wav.shape
    flat = F.pad(wav.reshape(-1, shape[-1]), (width, width + orig))
    out = F.conv1d(flat[:, None], kernel.to(wav.dtype), stride=orig).transpose(1, 2).reshape(flat.shape[0], -1)
    return out[:, :math.ceil(new * shape[-1] / orig)].reshape(*shape[:-1], -1)


class ResemblyzerSimilarity:
    """Resemblyzer voice-encoder cosine (``preprocess_wav`` resamples, normalises volume and trims silences)."""

    name = "resemblyzer"

    def __init__(self, device: str = "cpu"):
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device, verbose=False)

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        check_waveforms([wav], sample_rate)
        return self.encoder.embed_utterance(preprocess_wav(np.asarray(wav, dtype=np.float32), source_sr=sample_rate))

    def similarity(self, wav_a: np.ndarray, wav_b: np.ndarray, sample_rate: int,
                   sample_rate_b: Optional[int] = None) -> float:
        """Cosine of the two embeddings; ``sample_rate_b`` defaults to ``sample_rate``."""
        return _pair_similarity(self, wav_a, wav_b, sample_rate, sample_rate_b)


class WavLMEcapaSimilarity:
    """Seed-TTS-Eval's SIM model (see module docstring).

    Args:
        checkpoint: an official-layout ``wavlm_large_finetune.pth`` (or a smaller model with the same key layout).
        device: torch device string.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        self.name = f"wavlm-ecapa:{checkpoint}"
        self.device = device
        self.model = load_speaker_verifier(checkpoint).to(device)

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        check_waveforms([wav], sample_rate)
        audio = sinc_resample(torch.as_tensor(np.asarray(wav, dtype=np.float32))[None], sample_rate, SV_RATE)
        with torch.no_grad():
            return self.model(audio.to(self.device))[0].float().cpu().numpy()

    def similarity(self, wav_a: np.ndarray, wav_b: np.ndarray, sample_rate: int,
                   sample_rate_b: Optional[int] = None) -> float:
        """Cosine of the two embeddings; ``sample_rate_b`` defaults to ``sample_rate``."""
        return _pair_similarity(self, wav_a, wav_b, sample_rate, sample_rate_b)


def build_similarity(spec: str, *, device: str = "cpu") -> SpeakerSimilarity:
    """Builds ``resemblyzer`` or ``wavlm-ecapa:<checkpoint>``.

    Raises:
        ValueError: for an unknown spec or a missing checkpoint path.
        FileNotFoundError: when the checkpoint does not exist.
    """
    kind, sep, path = spec.partition(":")
    if kind == "resemblyzer" and not sep:
        return ResemblyzerSimilarity(device)
    if kind == "wavlm-ecapa":
        if not path:
            raise ValueError(f"similarity spec {spec!r} needs a checkpoint: wavlm-ecapa:<wavlm_large_finetune.pth>")
        return WavLMEcapaSimilarity(path, device)
    raise ValueError(f"unknown similarity spec {spec!r}: expected resemblyzer or wavlm-ecapa:<checkpoint>")

