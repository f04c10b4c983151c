"""e2e-tts: end-to-end training of discrete-token text-to-speech."""

__version__ = "0.1.0"
