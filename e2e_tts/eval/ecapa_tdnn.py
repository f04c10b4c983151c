"""Seed-TTS-Eval's speaker-verification model now lives in :mod:`e2e_tts.scoring.ecapa_tdnn` (the scoring layer,
which training's rewards may import); its names stay importable from here for evaluation's callers."""

from e2e_tts.scoring.ecapa_tdnn import PRESETS, EcapaTdnnWavLM, WavLM  # noqa: F401
