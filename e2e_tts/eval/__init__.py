"""Evaluation: faithful Seed-TTS-Eval scoring, ASR and speaker-similarity judges, catastrophic-failure detection."""
