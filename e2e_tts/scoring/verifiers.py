"""Recognisers and best-of-N verifiers built from spec strings: one construction for synthesis and evaluation.

Specs: the ASR specs of :func:`~e2e_tts.scoring.asr.parse_asr_spec` (``pocketsphinx``, ``whisper:<dir>``,
``paraformer:<dir>``, ``rm-audio:<export dir>``), and for verification only :data:`TOKEN_VERIFIER`. The reward
model judges in two ways, named apart:

* ``rm-tokens``: the synthesising system's own reward model reads the speech tokens it generated (no audio round
  trip, so it cannot hear what the flow and vocoder made of them);
* ``rm-audio:<export dir>``: that export's speech tokenizer turns the audio into tokens and its reward model reads
  them: a recogniser of audio like the others.

A reward-model transcript is compared with the reward model's rendering of the text, any other with the text
itself (:func:`reference_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from e2e_tts.scoring.asr import ASRBackend, ParaformerASR, PocketsphinxASR, WhisperASR, parse_asr_spec
from e2e_tts.scoring.reward_model import RewardModelRecognizer

TOKEN_VERIFIER = "rm-tokens"


def build_asr(spec: str, *, device: str = "cpu", loaded: Optional[RewardModelRecognizer] = None) -> ASRBackend:
    """Builds the recogniser an ASR spec names.

    Args:
        spec: see :func:`~e2e_tts.scoring.asr.parse_asr_spec`.
        device: torch device of the model.
        loaded: a reward-model recogniser already in memory; ``rm-audio:<dir>`` of its export dir reuses it
            instead of loading the export again.
    Raises:
        ValueError: for a bad spec.
        FileNotFoundError: when a model directory does not exist.
        ImportError: when an optional package of the backend is missing.
    """
    parsed = parse_asr_spec(spec)
    if parsed.kind == "pocketsphinx":
        return PocketsphinxASR()
    if parsed.kind == "whisper":
        return WhisperASR(parsed.path, device=device)
    if parsed.kind == "paraformer":
        return ParaformerASR(parsed.path, device=device)
    # rm-audio, the last kind
    if loaded is not None and loaded.export_dir == Path(parsed.path).resolve():
        return loaded
    return RewardModelRecognizer.from_export(parsed.path, device)


def reference_of(asr: ASRBackend) -> Callable[[str], str]:
    """Maps a text to what ``asr``'s transcript of a perfect rendering reads: the reward model's rendering of the
    model-normalised text for a reward-model recogniser, else the text itself."""
    return asr.reference if isinstance(asr, RewardModelRecognizer) else (lambda text: text)


@dataclass(frozen=True)
class Verifier:
    """Transcribes best-of-N candidates.

    Attributes:
        transcribe: ``(wavs, sample_rate, tokens) -> transcripts``: the candidates' waveforms ``(N,)`` and their
            generated speech ids ``(T,)``, one transcript each.
        reference: maps a model-normalised text to what a perfect transcript reads.
    """

    transcribe: Callable[[Sequence[np.ndarray], int, Sequence[torch.Tensor]], list[str]]
    reference: Callable[[str], str]


def verifier_of(asr: ASRBackend) -> Verifier:
    """A recogniser of audio as a verifier (it ignores the tokens)."""
    return Verifier(lambda wavs, rate, _: asr.transcribe(wavs, rate), reference_of(asr))


def build_verifier(spec: str, own: RewardModelRecognizer, device: str = "cpu") -> Verifier:
    """Builds the verifier a spec names.

    Args:
        spec: :data:`TOKEN_VERIFIER` or an ASR spec (see the module docstring).
        own: the synthesising system's reward model: ``rm-tokens`` reads with it, and ``rm-audio:<dir>`` of the
            same export reuses it.
        device: torch device of a model loaded here.
    Raises:
        ValueError: for a bad spec (a retired spelling is named with its new one).
    """
    if spec == TOKEN_VERIFIER:
        return Verifier(lambda _, __, tokens: own.transcribe_tokens(tokens), own.reference)
    return verifier_of(build_asr(spec, device=device, loaded=own))
