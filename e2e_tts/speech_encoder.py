"""Waveforms -> the features a system was trained on -> its speech tokenizer's ids.

Synthesis needs it for a zero-shot prompt, the reward model for recognising audio, and the diagnostics for real
utterances; all three must see audio exactly as training saw it (:meth:`SpeechEncoder.log_mel`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from e2e_tts.audio import AudioConfig, MelSpectrogram, normalize_peak, resample
from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.models.tokenizer import SpeechTokenizer


class SpeechEncoder:
    """Audio at the model rate -> peak-normalised log-mel -> speech ids, on the tokenizer's device.

    Args:
        tokenizer: the trained speech tokenizer (in eval mode).
        audio_config: the mel analysis and sample rate it was trained on.
    """

    def __init__(self, tokenizer: SpeechTokenizer, audio_config: AudioConfig):
        self.tokenizer, self.audio_config = tokenizer, audio_config
        self.device = next(tokenizer.parameters()).device
        self._mel = MelSpectrogram(audio_config).to(self.device)

    @property
    def min_samples(self) -> int:
        """Shortest audio that tokenizes to one speech token (the mel's reflect padding also needs more than
        ``n_fft / 2`` samples)."""
        config = self.audio_config
        return max(self.tokenizer.config.frames_per_token * config.hop_length, config.n_fft // 2 + 1)

    def log_mel(self, audio: np.ndarray) -> torch.Tensor:
        """The training features of a waveform ``(N,)`` at the model rate: ``(1, T, n_mels)`` on the device.

        Peak-normalised first, as the shards store every training utterance (e2e_tts.data.shards): the tokenizer
        and the flow's prompt condition only ever saw that level, and at another one the tokenizer gives other
        ids (about 10 % of flite's raw-level ids agreed with its training-level ids).
        """
        audio = normalize_peak(np.asarray(audio, dtype=np.float32), self.audio_config.peak_level)
        return self._mel(torch.from_numpy(audio).to(self.device))

    def encode(self, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech ids of one utterance at the model rate: ``(N,)`` -> ids ``(T,)`` (CPU) and the log-mel
        ``(T * frames_per_token, n_mels)`` they cover (on the device).

        Raises:
            ValueError: audio shorter than one speech token.
        """
        if len(audio) < self.min_samples:
            raise ValueError(f"audio has {len(audio)} samples at {self.audio_config.sample_rate} Hz, fewer than one "
                             f"speech token needs ({self.min_samples})")
        with torch.inference_mode():
            mel = self.log_mel(audio)
            ids, _ = self.tokenizer.encode(mel, torch.ones(mel.shape[:2], dtype=torch.bool, device=self.device))
        frames = ids.shape[1] * self.tokenizer.config.frames_per_token
        return ids[0].cpu(), mel[0, :frames]

    def encode_batch(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[torch.Tensor]:
        """Speech ids ``(T_b,)`` (on the device) of mono waveforms at any rate, in one padded tokenizer call; a
        waveform shorter than one token gives no id."""
        audios = [resample(np.asarray(wav, dtype=np.float32), sample_rate, self.audio_config.sample_rate)
                  for wav in wavs]
        long_enough = [i for i, audio in enumerate(audios) if len(audio) >= self.min_samples]
        ids = [torch.zeros(0, dtype=torch.long) for _ in audios]
        if long_enough:
            with torch.inference_mode():
                mels = [self.log_mel(audios[i])[0] for i in long_enough]
                frames = torch.tensor([mel.shape[0] for mel in mels], device=self.device)
                mel = pad_sequence(mels, batch_first=True)
                batch_ids, id_mask = self.tokenizer.encode(mel, lengths_to_mask(frames, mel.shape[1]))
            for row, i in enumerate(long_enough):
                ids[i] = batch_ids[row, id_mask[row]]
        return ids
