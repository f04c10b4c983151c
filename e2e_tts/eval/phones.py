"""Phone error rate (PER): an intelligibility judge that shows progress before whole words are recognised.

Pocketsphinx's word decoder lets its word LM hallucinate on poorly intelligible speech, so its WER saturates above
100% long before synthesis sounds right. Here the same bundled en-us acoustic model decodes *phones* instead
(allphone search with the bundled phone LM ``en-us-phone.lm.bin``), and is scored against the reference text's
phones looked up in the bundled ``cmudict-en-us.dict``:

* reference: Seed-TTS-Eval English normalisation (:func:`normalize_for_wer`), then the first pronunciation of each
  word, stress digits removed. A word missing from the dictionary raises :class:`UnknownWordError` naming it (our
  corpus keeps only dictionary words, so a miss is a bug in the test list, not an item to skip silently).
* hypothesis: recognised phones without silence (``SIL``) and filler units (``+NSN+``, ``+SPN+``, ...).
* rate: jiwer edit distance on the phone sequences (:func:`e2e_tts.scoring.wer.unit_error_rates`),
  ``(S + D + I) / N`` with ``N`` reference phones, reported as the mean per-utterance PER (like Seed-TTS-Eval's
  WER) and the corpus PER, in percent.

Like the word judge, it is not comparable with published numbers; it is for tracking our own models.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from e2e_tts.eval.seedtts import ground_truth_wav_paths, read_first_channel, read_meta, synthesized_wav_paths
from e2e_tts.scoring.asr import pocketsphinx_hypotheses
from e2e_tts.scoring.normalize import normalize_for_wer
from e2e_tts.scoring.wer import unit_error_rates

SILENCE_PHONE = "SIL"
_STRESS = re.compile(r"\d+$")
_ALTERNATE = re.compile(r"\(\d+\)$")  # cmudict marks the 2nd, 3rd... pronunciation of a word as "word(2)"


class UnknownWordError(KeyError):
    """A reference word has no pronunciation in the dictionary, so the reference has no phone sequence."""

    def __str__(self) -> str:  # KeyError would print the message repr-quoted
        return str(self.args[0])


def _pocketsphinx_model_path(name: str) -> Path:
    from pocketsphinx import get_model_path

    return Path(get_model_path(name))


def default_dictionary() -> Path:
    """The pronunciation dictionary shipped with pocketsphinx (``model/en-us/cmudict-en-us.dict``)."""
    return _pocketsphinx_model_path("en-us/cmudict-en-us.dict")


@functools.lru_cache(maxsize=4)
def read_pronunciations(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Reads a CMU-format dictionary (``word PH1 PH2 ...`` per line) once per path.

    Returns:
        word -> phones of its *first* pronunciation, stress digits stripped (``AH0`` -> ``AH``); alternates
        (``word(2)``) are skipped.
    Raises:
        ValueError: for a line with a word but no phones, naming the file and line.
    """
    pronunciations: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            word, phones = fields[0], fields[1:]
            if not phones:
                raise ValueError(f"{path}:{number}: word {word!r} has no phones")
            if _ALTERNATE.search(word) is None:
                pronunciations.setdefault(word, tuple(_STRESS.sub("", phone) for phone in phones))
    return pronunciations


def reference_phones(text: str, dictionary: str | Path | None = None) -> list[str]:
    """The ARPAbet phones of a reference text, without stress digits (e.g. ``["DH", "AH", "K", "AE", "T"]``).

    Args:
        text: raw reference text; normalised like Seed-TTS-Eval English (punctuation but the apostrophe deleted,
            lower-cased) before the lookup.
        dictionary: CMU-format dictionary; the one pocketsphinx ships when None.
    Raises:
        UnknownWordError: naming the first word of ``text`` that the dictionary lacks.
    """
    dictionary = dictionary or default_dictionary()
    pronunciations = read_pronunciations(dictionary)
    phones: list[str] = []
    for word in normalize_for_wer(text, "en").split():
        if word not in pronunciations:
            raise UnknownWordError(f"word {word!r} of reference {text!r} is not in the pronunciation dictionary "
                                   f"{dictionary}; it has no phones to score")
        phones.extend(pronunciations[word])
    return phones


def is_speech_phone(unit: str) -> bool:
    """False for the units a recogniser emits besides phones: silence and fillers such as ``+NSN+``."""
    return unit != SILENCE_PHONE and not (unit.startswith("+") and unit.endswith("+"))


@functools.lru_cache(maxsize=2)
def _allphone_decoder(language_weight: float, beam: float) -> Any:
    # One decoder per setting and process: reusable across utterances, and loading the model costs ~0.1 s.
    from pocketsphinx import Decoder

    return Decoder(hmm=str(_pocketsphinx_model_path("en-us/en-us")),
                   allphone=str(_pocketsphinx_model_path("en-us/en-us-phone.lm.bin")), lm=None,
                   lw=language_weight, beam=beam, pbeam=beam, loglevel="FATAL")


class PocketsphinxPhones:
    """Phone recognition with pocketsphinx's bundled en-us acoustic model and phone LM (allphone search).

    Args:
        language_weight: phone-LM weight. The default 2.0 and the beams are the settings CMUSphinx's phoneme
            recognition tutorial suggests; on 20 flite rms test sentences they gave 28.6% corpus PER against
            45.2% with the word decoder's weight (6.5), whose stronger LM overrides the acoustics.
        beam: beam width for HMMs and phones (smaller is wider).
    """

    name = "pocketsphinx-allphone"

    def __init__(self, language_weight: float = 2.0, beam: float = 1e-20):
        self.language_weight, self.beam = language_weight, beam

    def recognize(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[list[str]]:
        """Mono waveforms ``(N,)`` at ``sample_rate`` (resampled to 16 kHz here) -> recognised phones of each.

        Raises:
            ValueError: for a bad rate or waveform (see :func:`e2e_tts.scoring.asr.check_waveforms`).
        """
        hypotheses = pocketsphinx_hypotheses(_allphone_decoder(self.language_weight, self.beam), wavs, sample_rate)
        return [[unit for unit in hypothesis.split() if is_speech_phone(unit)] for hypothesis in hypotheses]


def mean_phone_error_rate(judge: PocketsphinxPhones, texts: Sequence[str], wav_paths: Sequence[str | None]
                          ) -> float | None:
    """Mean per-utterance PER (%) of the wavs that exist, each against its text's reference phones (None if no
    wav exists): the rate that still moves where word WER is past 100 %."""
    pairs = [(text, path) for text, path in zip(texts, wav_paths) if path is not None and Path(path).is_file()]
    if not pairs:
        return None
    hypotheses = [judge.recognize([wav], rate)[0] for wav, rate in (read_first_channel(p) for _, p in pairs)]
    return unit_error_rates([reference_phones(text) for text, _ in pairs], hypotheses)["mean_per"]


def folder_phone_error_rates(meta: str | Path, wav_dir: str | Path, judge: Optional[PocketsphinxPhones] = None
                             ) -> dict[str, Any]:
    """Mean PER of an evaluated Seed-TTS-Eval folder, the synthesised wavs and (where the list has them) the ground
    truth, each against its line's text (``e2e-tts eval per``).

    Args:
        meta: the Seed-TTS-Eval list; wav_dir: its folder of ``<utt>.wav``.
        judge: the phone recogniser (default: :class:`PocketsphinxPhones`).
    Returns:
        ``meta`` and ``wavs`` as given, ``num_items``, ``num_synthesized`` (wavs that exist), and the mean
        per-utterance PER (%) of each condition, ``synthesized_mean_per`` and ``ground_truth_mean_per`` (None when
        it has no wav).
    Raises:
        ManifestError: for a malformed list; ValueError for an empty one.
        UnknownWordError: for a text with a word the dictionary lacks.
    """
    items = read_meta(meta)
    texts, wavs = [item.text for item in items], synthesized_wav_paths(items, wav_dir)
    judge = judge or PocketsphinxPhones()
    return {"meta": str(meta), "wavs": str(wav_dir), "num_items": len(items),
            "num_synthesized": sum(Path(path).is_file() for path in wavs),
            "synthesized_mean_per": mean_phone_error_rate(judge, texts, wavs),
            "ground_truth_mean_per": mean_phone_error_rate(judge, texts, ground_truth_wav_paths(items))}
