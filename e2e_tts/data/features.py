"""One shard sample -> training features, or a countable rejection.

The step every sample of the streaming pipeline goes through (in a data-loader worker): parse the ``json``
metadata, apply the cheap metadata filters (duration, text length) before any audio is decoded, decode the
audio with soundfile, validate it (:func:`e2e_tts.audio.check_audio`), then compute the log-mel spectrogram
and the text ids. A sample that cannot or must not be trained on raises :class:`SampleRejected` with a short
reason that the pipeline counts; nothing is dropped without a reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from e2e_tts.audio import AudioConfig, AudioRejected, MelSpectrogram, check_audio, load_audio
from e2e_tts.text import TextTokenizer, normalize_text

AUDIO_FIELDS = ("audio.flac", "audio.wav")  # shard members that may hold the waveform, in preference order
REQUIRED_METADATA = ("text", "speaker", "language")

# Rejections that mean broken data, as opposed to a filter the config chose (durations, text length).
ERROR_REASONS = frozenset({"missing_json", "bad_json", "missing_field", "missing_audio", "unreadable", "nan_or_inf",
                           "silent", "empty_text"})


class SampleRejected(ValueError):
    """A sample that the pipeline skips; ``reason`` is the key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class SampleFilter:
    """Training-time bounds on top of the audio acceptance checks.

    Attributes:
        min_duration: shortest kept utterance in seconds.
        max_duration: longest kept utterance in seconds.
        max_text_length: most text ids kept (``None``: no bound).
    """

    min_duration: float
    max_duration: float
    max_text_length: Optional[int] = None

    def check_duration(self, seconds: float) -> None:
        if seconds < self.min_duration:
            raise SampleRejected("duration_below_min", f"{seconds:.2f}s < {self.min_duration}s")
        if seconds > self.max_duration:
            raise SampleRejected("duration_above_max", f"{seconds:.2f}s > {self.max_duration}s")

    def check_text_length(self, num_ids: int) -> None:
        if self.max_text_length is not None and num_ids > self.max_text_length:
            raise SampleRejected("text_above_max_length", f"{num_ids} ids > {self.max_text_length}")


class SampleFeaturizer:
    """Turns a raw shard sample into features.

    Args:
        audio_config: target rate, mel analysis and the acceptance bounds of :func:`check_audio`.
        tokenizer: text tokenizer; texts are normalised (:func:`normalize_text`, in the sample's language) first.
        sample_filter: training-time duration and text-length bounds.
        return_wav: also return the waveform (the vocoder trains on it).
    """

    def __init__(self, audio_config: AudioConfig, tokenizer: TextTokenizer, sample_filter: SampleFilter,
                 return_wav: bool = False):
        self.audio_config = audio_config
        self.tokenizer = tokenizer
        self.sample_filter = sample_filter
        self.return_wav = return_wav
        self.mel = MelSpectrogram(audio_config)

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Featurizes one sample as grouped by webdataset (``__key__`` plus one bytes value per member).

        Returns:
            ``key``, ``mel`` ``(T, n_mels)`` float32, ``text_ids`` ``(L,)`` int64 (of the normalised text),
            ``wav`` ``(N,)`` float32 (only with ``return_wav``), ``num_frames`` (T), ``text`` (as written),
            ``speaker``, ``language``, ``emotion``, ``quality`` and ``duration`` (seconds of the decoded audio).
        Raises:
            SampleRejected: with the reason the sample is skipped.
        """
        key = raw["__key__"]
        meta = _metadata(raw)
        declared = meta.get("duration")
        if isinstance(declared, (int, float)) and math.isfinite(declared):
            self.sample_filter.check_duration(float(declared))  # cheap: before any decoding
        text_ids = encode_text(meta["text"], meta["language"], self.tokenizer, key)
        self.sample_filter.check_text_length(len(text_ids))

        wav = self._decode(raw, key)
        duration = len(wav) / self.audio_config.sample_rate
        self.sample_filter.check_duration(duration)  # again: the declared duration may be wrong
        with torch.no_grad():
            mel = self.mel(torch.from_numpy(wav))[0]
        features = dict(key=key, mel=mel, num_frames=int(mel.shape[0]),
                        text_ids=torch.tensor(text_ids, dtype=torch.long), text=meta["text"],
                        speaker=meta["speaker"], language=meta["language"], emotion=meta.get("emotion"),
                        quality=meta.get("quality"), duration=duration)
        if self.return_wav:
            features["wav"] = torch.from_numpy(wav)
        return features

    def _decode(self, raw: dict[str, Any], key: str) -> np.ndarray:
        audio = next((raw[name] for name in AUDIO_FIELDS if name in raw), None)
        if audio is None:
            raise SampleRejected("missing_audio", f"{key}: no {' or '.join(AUDIO_FIELDS)} member")
        try:
            wav, rate = load_audio(bytes(audio), self.audio_config.sample_rate, self.audio_config.max_duration)
            check_audio(wav, rate, self.audio_config)
        except AudioRejected as err:
            raise SampleRejected(err.reason, f"{key}: {err}") from err
        return wav


def encode_text(text: str, language: str, tokenizer: TextTokenizer, key: str) -> list[int]:
    """The text ids training reads for a text: :func:`normalize_text` in its language, then ``tokenizer``.

    The shard writer applies it too, so that a text that training would reject is skipped when shards are written.

    Raises:
        SampleRejected: ``empty_text`` when the text gives no id (empty, only spaces, or only punctuation to the
            phoneme tokenizer).
    """
    text_ids = tokenizer.encode(normalize_text(text, language))
    if not text_ids:
        raise SampleRejected("empty_text", f"{key}: no text ids after normalisation of {text!r}")
    return text_ids


def _metadata(raw: dict[str, Any]) -> dict[str, Any]:
    key = raw["__key__"]
    if "json" not in raw:
        raise SampleRejected("missing_json", f"{key}: no json member")
    try:
        meta = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SampleRejected("bad_json", f"{key}: {err}") from err
    if not isinstance(meta, dict):
        raise SampleRejected("bad_json", f"{key}: json is a {type(meta).__name__}, not an object")
    # An empty text is a string: it is rejected as "empty_text" once normalised, like a text of only spaces.
    missing = [name for name in REQUIRED_METADATA
               if not isinstance(meta.get(name), str) or (name != "text" and not meta[name])]
    if missing:
        raise SampleRejected("missing_field", f"{key}: json lacks {', '.join(missing)}")
    return meta
