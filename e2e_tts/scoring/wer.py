"""Per-utterance WER/CER and the Seed-TTS-Eval aggregate, as ``run_wer.py`` + ``average_wer.py`` compute them;
and the same edit-distance rate over sequences of units (phones, text ids), :func:`unit_error_rates`.

Per utterance the official script calls ``jiwer.compute_measures`` (removed in jiwer 4) on the normalised strings;
``jiwer.process_words`` with the same default transform (collapse whitespace runs, strip, split on spaces) gives the
same WER ``(S + D + I) / N``, ``N`` the number of reference tokens (words for ``en``, characters for ``zh``): the
edit distance is unique, only its split into S/D/I may differ between jiwer versions when alignments tie.

The reported number is the *arithmetic mean of per-utterance WERs* x 100, rounded to 3 decimals
(``round(np.mean(wers) * 100, 3)``), which weights a 3-word utterance like a 30-word one. We also give the corpus WER
(all errors / all reference tokens), the number of utterances with WER > 0.5 and the mean over the others, which
``average_wer.py`` tracks but does not print.

Edge cases (documented behaviour, tested):

* empty hypothesis (or one that normalises to nothing): every reference token is a deletion, WER = 1.0 - the same
  as the official script.
* empty reference after normalisation (e.g. a text made only of punctuation): :class:`EmptyReferenceError`. A WER
  has no denominator there; the official script crashes on it (older jiwer raises "one or more references are empty
  strings" and run_wer.py catches nothing), and jiwer 4 returns the raw *insertion count* as "wer", which would
  silently corrupt a mean of rates.
  Such an item is a bug in the test list and must be fixed there, not averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import jiwer
import numpy as np

from e2e_tts.scoring.normalize import normalize_for_wer

FAILURE_WER = 0.5  # average_wer.py's "n_higher_than_50" threshold (strictly greater)


class EmptyReferenceError(ValueError):
    """The reference text of an utterance is empty after normalisation, so it has no WER."""


@dataclass(frozen=True)
class ScoredUtterance:
    """One scored row (the official per-line output plus the normalised strings and raw counts).

    Attributes:
        utt: utterance id.
        ref: raw reference text.
        hyp: raw transcript.
        ref_normalized: reference after :func:`normalize_for_wer`.
        hyp_normalized: transcript after :func:`normalize_for_wer`.
        wer: ``(substitutions + deletions + insertions) / ref_words``.
        substitutions, deletions, insertions: edit counts of the jiwer alignment.
        ref_words: number of reference tokens (words for ``en``, characters for ``zh``).
    """

    utt: str
    ref: str
    hyp: str
    ref_normalized: str
    hyp_normalized: str
    wer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


@dataclass(frozen=True)
class WerSummary:
    """Aggregates over scored utterances.

    Attributes:
        num_utterances: utterances scored.
        seedtts_wer: the official number: mean per-utterance WER in percent, rounded to 3 decimals.
        mean_wer: the same mean as a fraction, unrounded.
        corpus_wer: all errors / all reference tokens (fraction).
        num_wer_above_half: utterances with WER > 0.5 (a catastrophic-failure proxy).
        mean_wer_at_most_half: mean WER (fraction) of the other utterances; None when there are none.
    """

    num_utterances: int
    seedtts_wer: float
    mean_wer: float
    corpus_wer: float
    num_wer_above_half: int
    mean_wer_at_most_half: Optional[float]


def score_utterance(utt: str, ref: str, hyp: str, language: str) -> ScoredUtterance:
    """Normalises both texts and scores them.

    Raises:
        EmptyReferenceError: when ``ref`` normalises to no token.
        ValueError: for an unsupported language.
    """
    ref_normalized = normalize_for_wer(ref, language)
    hyp_normalized = normalize_for_wer(hyp, language)
    out = jiwer.process_words(ref_normalized, hyp_normalized)
    ref_words = out.hits + out.substitutions + out.deletions
    if ref_words == 0:
        raise EmptyReferenceError(f"utterance {utt!r}: reference {ref!r} is empty after Seed-TTS-Eval "
                                  f"normalisation ({language}); it has no WER - fix the test list")
    return ScoredUtterance(utt=utt, ref=ref, hyp=hyp, ref_normalized=ref_normalized, hyp_normalized=hyp_normalized,
                           wer=float(out.wer), substitutions=out.substitutions, deletions=out.deletions,
                           insertions=out.insertions, ref_words=ref_words)


def score_utterances(rows: Iterable[tuple[str, str, str]], language: str) -> list[ScoredUtterance]:
    """Scores ``(utt, ref, hyp)`` rows in order."""
    return [score_utterance(utt, ref, hyp, language) for utt, ref, hyp in rows]


def summarize_wer(scored: Sequence[ScoredUtterance]) -> WerSummary:
    """Computes the official aggregate and the extra statistics.

    Raises:
        ValueError: for an empty sequence (the official script would print ``nan``).
    """
    if not scored:
        raise ValueError("summarize_wer needs at least one scored utterance")
    wers = np.array([u.wer for u in scored], dtype=np.float64)
    mean = np.mean(wers)  # numpy's pairwise sum and rounding, exactly as average_wer.py
    rest = wers[wers <= FAILURE_WER]
    return WerSummary(
        num_utterances=len(scored),
        seedtts_wer=float(round(mean * 100, 3)),
        mean_wer=float(mean),
        corpus_wer=sum(u.errors for u in scored) / sum(u.ref_words for u in scored),
        num_wer_above_half=int((wers > FAILURE_WER).sum()),
        mean_wer_at_most_half=float(np.mean(rest)) if len(rest) else None,
    )


def unit_error_rates(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> dict:
    """Edit-distance rates of unit sequences (phones, or ids as strings), each against its reference.

    Args:
        references, hypotheses: one unit list per utterance, in the same order. An empty hypothesis scores 100%
            (all deletions).

    Returns:
        ``{"per": [per-utterance rate], "mean_per": mean of those, "corpus_per": all errors / all reference
        units, "num_utterances": int}``, rates ``(S + D + I) / N`` in percent and unrounded.
    Raises:
        ValueError: for unequal lengths, no utterances, or a unit that is empty or holds whitespace (it would
            not survive joining with spaces).
        EmptyReferenceError: for an utterance with no reference unit (a rate has no denominator there).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("unit_error_rates needs at least one utterance")
    rates, errors, total = [], 0, 0
    for index, (reference, hypothesis) in enumerate(zip(references, hypotheses)):
        for kind, units in (("reference", reference), ("hypothesis", hypothesis)):
            bad = [unit for unit in units if not unit or unit != "".join(unit.split())]
            if bad:
                raise ValueError(f"utterance {index}: {kind} unit {bad[0]!r} is empty or holds whitespace")
        if not reference:
            raise EmptyReferenceError(f"utterance {index}: the reference has no units, so it has no error rate")
        out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
        utterance_errors = out.substitutions + out.deletions + out.insertions
        rates.append(100.0 * utterance_errors / len(reference))
        errors, total = errors + utterance_errors, total + len(reference)
    return {"per": rates, "mean_per": float(np.mean(rates)), "corpus_per": 100.0 * errors / total,
            "num_utterances": len(rates)}


def id_error_rates(references: Sequence[Sequence[int]], hypotheses: Sequence[Sequence[int]]) -> dict:
    """:func:`unit_error_rates` of integer id sequences, e.g. text ids against the reward model's reading."""
    def as_units(rows: Sequence[Sequence[int]]) -> list[list[str]]:
        return [[str(i) for i in row] for row in rows]

    return unit_error_rates(as_units(references), as_units(hypotheses))
