"""Scoring: what synthesis, training and evaluation all need to judge speech, below all three.

The Seed-TTS-Eval text normaliser (:mod:`~e2e_tts.scoring.normalize`), WER and the error rates of unit and id
sequences (:mod:`~e2e_tts.scoring.wer`), the speech recognisers (:mod:`~e2e_tts.scoring.asr`), the reward model as
a recogniser of tokens or audio (:mod:`~e2e_tts.scoring.reward_model`), recognisers and best-of-N verifiers
built from spec strings (:mod:`~e2e_tts.scoring.verifiers`), and the speaker similarity judges
(:mod:`~e2e_tts.scoring.similarity`, Seed-TTS-Eval's WavLM ECAPA-TDNN in :mod:`~e2e_tts.scoring.ecapa_tdnn`).
Nothing here imports ``e2e_tts.eval`` or the synthesizer (tests/test_layers.py).
"""
