"""Seed-TTS-Eval's SIM summary (``average.py``), over the speaker similarity judges of
:mod:`e2e_tts.scoring.similarity`.

The judges live in the scoring layer, below training, so that training's speaker-similarity reward (e2e_tts.rewards)
uses the same ones; evaluation's callers import them from here as before.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from e2e_tts.scoring.similarity import SpeakerSimilarity, build_similarity, sinc_resample  # noqa: F401


def mean_similarity(scores: Sequence[float]) -> tuple[float, float]:
    """The official ``average.py`` summary: (mean, variance), each rounded to 3 decimals.

    Raises:
        ValueError: for no scores.
    """
    if not scores:
        raise ValueError("mean_similarity needs at least one score")
    values = np.array(scores, dtype=np.float64)
    return float(round(np.mean(values), 3)), float(round(np.var(values), 3))
