"""Catastrophic-failure detection: one binary verdict per synthesised utterance.

An utterance fails when any of these holds (the reasons are reported, several may apply):

* ``empty_audio``: no samples, or all samples zero (nothing else is checked then);
* ``dropout``: less than ``min_speech_seconds`` of speech according to Silero VAD (silence, noise, mumble);
* ``too_short_for_text`` / ``too_long_for_text``: the speech span (first VAD onset to last offset, so leading and
  trailing silence do not count) per character of the normalised text lies outside
  ``[min_seconds_per_char, max_seconds_per_char]`` (plus ``duration_slack_seconds`` of allowance on the long side
  for very short texts): early termination, or looping / babbling;
* ``wer_above_threshold``: the ASR round-trip WER (Seed-TTS-Eval normalisation) exceeds ``max_wer`` (hallucinated,
  skipped or repeated content).

The paper's own thresholds are not published; the WER default 0.5 is Seed-TTS-Eval's "WER > 50%" count, and the
duration bounds come from measuring flite (see :class:`FailureConfig`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from e2e_tts.audio import resample
from e2e_tts.scoring.asr import ASRBackend
from e2e_tts.scoring.normalize import spoken_characters
from e2e_tts.scoring.wer import FAILURE_WER, score_utterance

VAD_RATE = 16000
REASONS = ("empty_audio", "dropout", "too_short_for_text", "too_long_for_text", "wer_above_threshold")


@dataclass
class FailureConfig:
    """Thresholds of the failure verdict.

    The duration bounds are per non-space character of the normalised text, over the VAD speech span. Measured on
    flite (4 voices x 40 held-out English sentences, 160 clips): 0.055 - 0.104 s/char, median 0.071. The defaults
    leave a wide margin (about half the fastest and 2.4x the slowest rate), so that only gross truncation or
    looping trips them. They suit English; Mandarin runs about 0.2 - 0.3 s per character and needs its own bounds.

    Args:
        language: ``en`` or ``zh``, for text normalisation and WER.
        max_wer: an utterance with round-trip WER above this fails (Seed-TTS-Eval counts WER > 0.5).
        min_speech_seconds: less VAD speech than this is a dropout.
        min_seconds_per_char, max_seconds_per_char: plausible speech span per character.
        duration_slack_seconds: added to the upper duration bound (a one-word text still takes ~0.4 s).
        vad_threshold: Silero VAD speech probability threshold.
    """

    language: str = "en"
    max_wer: float = FAILURE_WER
    min_speech_seconds: float = 0.3
    min_seconds_per_char: float = 0.025
    max_seconds_per_char: float = 0.25
    duration_slack_seconds: float = 1.0
    vad_threshold: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.min_seconds_per_char < self.max_seconds_per_char:
            raise ValueError(f"FailureConfig needs 0 < min_seconds_per_char < max_seconds_per_char, got "
                             f"{self.min_seconds_per_char} and {self.max_seconds_per_char}")
        if self.max_wer < 0 or self.min_speech_seconds < 0 or self.duration_slack_seconds < 0:
            raise ValueError("FailureConfig thresholds max_wer, min_speech_seconds and duration_slack_seconds "
                             "must be >= 0")
        if not 0 < self.vad_threshold < 1:
            raise ValueError(f"FailureConfig.vad_threshold must be in (0, 1), got {self.vad_threshold}")


@dataclass(frozen=True)
class SynthesizedItem:
    """One synthesised utterance to judge.

    Attributes:
        utt: id.
        text: the text it should say.
        wav: mono waveform ``(N,)``.
        sample_rate: its rate.
        transcript: an ASR transcript if already computed; otherwise the ASR backend given to
            :func:`detect_failures` transcribes it.
    """

    utt: str
    text: str
    wav: np.ndarray
    sample_rate: int
    transcript: Optional[str] = None


@dataclass(frozen=True)
class FailureVerdict:
    """The measurements and reasons for one utterance (``reasons`` empty = not a failure)."""

    utt: str
    reasons: tuple[str, ...]
    speech_seconds: float
    speech_span_seconds: float
    seconds_per_char: Optional[float]
    wer: Optional[float]
    transcript: Optional[str]

    @property
    def failed(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True)
class FailureReport:
    """Verdicts of a set of utterances and the catastrophic-failure rate."""

    verdicts: tuple[FailureVerdict, ...]

    @property
    def num_items(self) -> int:
        return len(self.verdicts)

    @property
    def failed_ids(self) -> list[str]:
        return [v.utt for v in self.verdicts if v.failed]

    @property
    def rate(self) -> float:
        return len(self.failed_ids) / self.num_items

    @property
    def reasons(self) -> dict[str, tuple[str, ...]]:
        """Failing utterance id -> its reasons."""
        return {v.utt: v.reasons for v in self.verdicts if v.failed}


@functools.lru_cache(maxsize=1)
def _silero_vad() -> Any:
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_segments(wav: np.ndarray, sample_rate: int, threshold: float = 0.5) -> list[tuple[float, float]]:
    """Silero VAD speech segments ``[(start_s, end_s), ...]`` of a mono waveform ``(N,)``."""
    import torch
    from silero_vad import get_speech_timestamps

    audio = resample(np.asarray(wav, dtype=np.float32), sample_rate, VAD_RATE)
    stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(audio)), _silero_vad(), threshold=threshold,
                                   sampling_rate=VAD_RATE, return_seconds=True)
    return [(float(s["start"]), float(s["end"])) for s in stamps]


def judge_audio(item: SynthesizedItem, config: FailureConfig) -> tuple[list[str], float, float, Optional[float]]:
    """Audio-only checks of one item: (reasons, speech seconds, speech span seconds, seconds per character).

    Raises:
        ValueError: when the text has no speakable character after normalisation.
    """
    chars = spoken_characters(item.text, config.language)
    if chars == 0:
        raise ValueError(f"utterance {item.utt!r}: text {item.text!r} has no character after normalisation")
    wav = np.asarray(item.wav)
    if wav.size == 0 or not np.any(wav):
        return ["empty_audio"], 0.0, 0.0, None
    segments = speech_segments(wav, item.sample_rate, config.vad_threshold)
    speech = sum(end - start for start, end in segments)
    span = segments[-1][1] - segments[0][0] if segments else 0.0
    if speech < config.min_speech_seconds:
        return ["dropout"], speech, span, span / chars
    reasons = []
    if span < config.min_seconds_per_char * chars:
        reasons.append("too_short_for_text")
    if span > config.max_seconds_per_char * chars + config.duration_slack_seconds:
        reasons.append("too_long_for_text")
    return reasons, speech, span, span / chars


def detect_failures(items: Sequence[SynthesizedItem], config: Optional[FailureConfig] = None,
                    asr: Optional[ASRBackend] = None) -> FailureReport:
    """Judges every item; items without a transcript are transcribed with ``asr`` (one call per sample rate).

    Raises:
        ValueError: for no items, duplicate ids, or items that need transcription when no ``asr`` is given.
    """
    config = config or FailureConfig()
    if not items:
        raise ValueError("detect_failures needs at least one item")
    ids = [item.utt for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate utterance ids: {sorted({u for u in ids if ids.count(u) > 1})}")
    audio = [judge_audio(item, config) for item in items]
    transcripts = {item.utt: item.transcript for item in items}
    pending = [item for item, (reasons, *_) in zip(items, audio)
               if item.transcript is None and reasons != ["empty_audio"]]
    if pending and asr is None:
        raise ValueError(f"{len(pending)} items have no transcript (e.g. {pending[0].utt!r}) and no ASR backend "
                         f"was given")
    for rate in sorted({item.sample_rate for item in pending}):
        batch = [item for item in pending if item.sample_rate == rate]
        transcripts.update(zip([item.utt for item in batch], asr.transcribe([item.wav for item in batch], rate)))
    verdicts = []
    for item, (reasons, speech, span, per_char) in zip(items, audio):
        transcript = transcripts[item.utt]
        wer = None
        if transcript is not None:
            wer = score_utterance(item.utt, item.text, transcript, config.language).wer
            if wer > config.max_wer:
                reasons = reasons + ["wer_above_threshold"]
        verdicts.append(FailureVerdict(item.utt, tuple(reasons), speech, span, per_char, wer, transcript))
    return FailureReport(tuple(verdicts))
