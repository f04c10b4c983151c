"""Token ids of a frozen tokenizer, computed once per utterance instead of at every update.

In the stages after the joint one the tokenizer is frozen and in eval mode, and a sequence's tokens do not depend
on what it is batched with (:class:`~e2e_tts.models.tokenizer.SpeechTokenizer` hides padded frames), so an
utterance's ids are the same every time it is read. Re-encoding them was about 30 % of each separate-stage update
on the tiny recipe. The cache lives in the objective's memory (a few hundred bytes per utterance), is rebuilt lazily
after a resume, and is keyed by the utterance's key and its number of valid mel frames, so two different clips
that share a key are never confused.
"""

from __future__ import annotations

from typing import Sequence

import torch

from e2e_tts.models.layers import gathered_collectively
from e2e_tts.models.tokenizer import SpeechTokenizer


class FrozenTokenCache:
    """``(ids, mask)`` of a frozen tokenizer per utterance; see the module docstring.

    Args:
        tokenizer: the frozen tokenizer (it must be in eval mode whenever the cache is called).
    """

    def __init__(self, tokenizer: SpeechTokenizer):
        self.tokenizer = tokenizer
        self._ids: dict[tuple[str, int], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor, mel_mask: torch.Tensor, keys: Sequence[str]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ids the tokenizer would return for this batch, encoding only the utterances not seen before.

        Args:
            mel: ``(B, T_mel, n_mels)`` log-mel; mel_mask: ``(B, T_mel)`` bool; keys: B utterance keys.
        Returns:
            ids ``(B, T_mel // frames_per_token)`` long (0 on padding) and mask of the same shape, as
            :meth:`SpeechTokenizer.forward` returns them.
        Raises:
            RuntimeError: when the tokenizer is in training mode (its ids could change between calls).
        """
        if self.tokenizer.training:
            raise RuntimeError("the token cache needs a frozen tokenizer in eval mode")
        if len(keys) != mel.shape[0]:
            raise ValueError(f"{len(keys)} keys for a batch of {mel.shape[0]}")
        entries = [(key, int(frames)) for key, frames in zip(keys, mel_mask.sum(1).tolist())]
        missing = [row for row, entry in enumerate(entries) if entry not in self._ids]
        if gathered_collectively(self.tokenizer):  # every rank must run the forward, whatever it has cached
            missing = list(range(len(entries)))
        if missing:
            out = self.tokenizer(mel[missing], mel_mask[missing])
            for position, row in enumerate(missing):
                self._ids[entries[row]] = out.ids[position][out.mask[position]].clone()
        num_tokens = mel.shape[1] // self.tokenizer.config.frames_per_token
        ids = mel.new_zeros((mel.shape[0], num_tokens), dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, entry in enumerate(entries):
            cached = self._ids[entry]
            ids[row, :len(cached)] = cached
            mask[row, :len(cached)] = True
        return ids, mask
