"""The project's reward model as a recogniser: of speech tokens, or of audio through the system's speech tokenizer.

The reward model's attention decoder emits text-tokenizer ids, so a transcript is in the text tokenizer's rendering:
readable text for bytes/chars/HF tokenizers (chars: unknown characters as U+FFFD), IPA for the phoneme tokenizer.
Score it against :meth:`RewardModelRecognizer.reference` of the text, never against the raw text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn.utils.rnn import pad_sequence

from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.scoring.asr import REWARD_AUDIO, check_waveforms
from e2e_tts.speech_encoder import SpeechEncoder
from e2e_tts.system import TTSSystem
from e2e_tts.text import normalize_text


class RewardModelRecognizer:
    """Greedy transcripts of a system's reward model (an :class:`~e2e_tts.scoring.asr.ASRBackend` of audio).

    Args:
        system: the trained modules (in eval mode): speech tokenizer, reward model, text tokenizer.
        speech_encoder: audio -> the system's speech ids, with the features it was trained on.
        text_language: the system's text language (``TextConfig.language``), to normalise references.
        export_dir: where the system was loaded from (None: built in memory); part of :attr:`name`.
    """

    def __init__(self, system: TTSSystem, speech_encoder: SpeechEncoder, text_language: str,
                 export_dir: Optional[str | Path] = None):
        self.system, self.speech_encoder, self.text_language = system, speech_encoder, text_language
        self.export_dir = None if export_dir is None else Path(export_dir).resolve()
        self.name = REWARD_AUDIO if export_dir is None else f"{REWARD_AUDIO}:{export_dir}"
        self.device = speech_encoder.device

    @classmethod
    def from_export(cls, export_dir: str | Path, device: str | torch.device = "cpu") -> "RewardModelRecognizer":
        """Loads the system of an export directory written by :meth:`TTSSystem.export`."""
        system, config = TTSSystem.from_export(export_dir, map_location=device)
        encoder = SpeechEncoder(system.tokenizer, OmegaConf.to_object(config.audio))
        return cls(system, encoder, config.text.language, export_dir)

    def reference(self, text: str) -> str:
        """What a transcript of a perfect rendering of ``text`` (raw or already model-normalised) reads: the text
        tokenizer's rendering of the model-normalised text."""
        tokenizer = self.system.text_tokenizer
        return tokenizer.decode(tokenizer.encode(normalize_text(text, self.text_language)))

    def transcribe_tokens(self, tokens: Sequence[torch.Tensor], max_len: Optional[int] = None) -> list[str]:
        """Greedy attention-decoder transcripts of speech-id rows ``(T_b,)``; an empty row gives ``""``."""
        texts = ["" for _ in tokens]
        rows = [i for i, row in enumerate(tokens) if len(row)]
        if not rows:
            return texts
        lengths = torch.tensor([len(tokens[i]) for i in rows], device=self.device)
        speech = pad_sequence([tokens[i].to(self.device) for i in rows], batch_first=True)
        mask = lengths_to_mask(lengths, speech.shape[1])
        with torch.inference_mode():
            ids = self.system.reward.transcribe_attention(speech, mask, self.system.codebook(), max_len=max_len)
        for i, row_ids in zip(rows, ids):
            texts[i] = self.system.text_tokenizer.decode(row_ids)
        return texts

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int, batch_size: int = 16) -> list[str]:
        """Transcripts of mono waveforms ``(N,)`` at ``sample_rate`` (resampled to the model rate): the speech
        tokenizer, then :meth:`transcribe_tokens`, ``batch_size`` waveforms per call. Audio shorter than one
        speech token gives ``""``.

        Raises:
            ValueError: for a bad rate or waveform (see :func:`~e2e_tts.scoring.asr.check_waveforms`).
        """
        check_waveforms(wavs, sample_rate)
        texts = []
        for start in range(0, len(wavs), batch_size):
            texts.extend(self.transcribe_tokens(self.speech_encoder.encode_batch(wavs[start:start + batch_size],
                                                                                 sample_rate)))
        return texts
