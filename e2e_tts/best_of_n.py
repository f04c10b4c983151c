"""Best-of-N: of several renderings of one text, keep the one a verifier hears best.

A candidate that is a dropout (silent, or too short for its text) cannot be the answer whatever its transcript
says. The others are transcribed by the verifier (:mod:`e2e_tts.scoring.verifiers`: an ASR of the audio, or the
reward model reading the tokens) and scored with the Seed-TTS-Eval WER against the verifier's reference of the
text. The kept one has the lowest WER among the non-dropouts; ties go to the earlier candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from e2e_tts.audio import is_silent
from e2e_tts.scoring.normalize import spoken_characters
from e2e_tts.scoring.verifiers import Verifier
from e2e_tts.scoring.wer import score_utterance


@dataclass
class CandidateScore:
    """How best-of-N judged one candidate.

    Attributes:
        index: candidate number (sampling order).
        num_tokens: generated speech tokens.
        duration: seconds of audio.
        dropout: why it counts as a dropout (``"empty_audio"`` or ``"too_short_for_text"``), or None; judged
            only when there is a verifier.
        transcript: the verifier's transcript (None without a verifier, or for empty audio).
        wer: Seed-TTS-Eval WER of the transcript against the reference (None when not transcribed).
    """

    index: int
    num_tokens: int
    duration: float
    dropout: Optional[str] = None
    transcript: Optional[str] = None
    wer: Optional[float] = None


def choose_candidate(candidates: Sequence[CandidateScore]) -> int:
    """Index of the best candidate: non-dropouts first, then lowest WER (untranscribed last), then earliest."""
    if not candidates:
        raise ValueError("choose_candidate needs at least one candidate")
    best = min(candidates, key=lambda c: (c.dropout is not None, math.inf if c.wer is None else c.wer, c.index))
    return best.index


def dropout_reason(wav: np.ndarray, sample_rate: int, text: str, language: str, min_seconds_per_char: float,
                   silence_threshold_db: float) -> Optional[str]:
    """Why a candidate cannot be the answer whatever its transcript says, or None.

    Args:
        wav: ``(N,)`` waveform; text: the text it should say; language: Seed-TTS-Eval scoring language.
        min_seconds_per_char: shortest plausible duration per spoken (non-space, non-punctuation) character.
        silence_threshold_db: peak dBFS below which the audio is silent.
    Returns:
        ``"empty_audio"`` (no samples, or peak below the silence threshold), ``"too_short_for_text"`` or None.
    """
    if is_silent(wav, silence_threshold_db):
        return "empty_audio"
    if len(wav) / sample_rate < min_seconds_per_char * spoken_characters(text, language):
        return "too_short_for_text"
    return None


def score_candidates(text: str, normalized: str, tokens: Sequence[torch.Tensor], wavs: Sequence[np.ndarray],
                     sample_rate: int, verifier: Optional[Verifier], language: str, min_seconds_per_char: float,
                     silence_threshold_db: float) -> list[CandidateScore]:
    """Judges the candidates of one text: dropouts, then the transcripts and WERs of the audible ones (without a
    verifier, only their lengths).

    Args:
        text: the input text (names the candidates in errors); normalized: what the model was asked to say.
        tokens, wavs: each candidate's generated speech ids ``(T,)`` and waveform ``(N,)``, in sampling order.
        sample_rate: rate of ``wavs``.
        verifier: transcribes the audible candidates (one call for all of them), or None.
        language: Seed-TTS-Eval scoring language; min_seconds_per_char, silence_threshold_db: see
            :func:`dropout_reason`.
    Raises:
        ValueError: when the verifier returns another number of transcripts than it was given candidates.
    """
    scores = [CandidateScore(index=i, num_tokens=len(ids), duration=len(wav) / sample_rate)
              for i, (ids, wav) in enumerate(zip(tokens, wavs))]
    if verifier is None:
        return scores
    for score, wav in zip(scores, wavs):
        score.dropout = dropout_reason(wav, sample_rate, normalized, language, min_seconds_per_char,
                                       silence_threshold_db)
    audible = [i for i, s in enumerate(scores) if s.dropout != "empty_audio"]
    transcripts = verifier.transcribe([wavs[i] for i in audible], sample_rate,
                                      [tokens[i] for i in audible]) if audible else []
    if len(transcripts) != len(audible):
        raise ValueError(f"the verifier returned {len(transcripts)} transcripts for {len(audible)} waveforms")
    reference = verifier.reference(normalized)
    for i, transcript in zip(audible, transcripts):
        scores[i].transcript = transcript
        scores[i].wer = score_utterance(f"{text!r} candidate {i}", reference, transcript, language).wer
    return scores
