"""What the rewards judge: sampled speech-id rows, with what each was asked to say and in whose voice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from e2e_tts.synth import Prompt


@dataclass
class Rollouts:
    """``N = G * group`` sampled speech-id rows: row ``g * group + k`` is sample ``k`` of text ``g``.

    Attributes:
        group: samples per text (``K``).
        texts: N texts as written (the K rows of a text repeat it), which the round-trip judge (``wer``) normalises
            and compares its transcripts with.
        text_ids: N text-tokenizer id rows ``(L_n,)`` of the normalised texts.
        speech: N sampled speech-id rows ``(T_n,)``, EOS excluded, at least one id each.
        ended: ``(N,)`` bool: the row emitted EOS before generate()'s cap.
        speakers: N speaker names each row should sound like: its prompt's, or its text's without a prompt.
        prompts: N zero-shot prompts or None: the flow decodes each row after its prompt, and the LLM continued it
            when ``llm_prompt``.
        prompt_audio: N prompt waveforms ``(N_b,)`` at the audio rate, or None (no prompt, or the batch carried no
            audio: ``data.return_wav``).
        llm_prompt: whether the LLM continued the prompts (``synthesis.llm_prompt``) or read its text alone.
    """

    group: int
    texts: list[str]
    text_ids: list[torch.Tensor]
    speech: list[torch.Tensor]
    ended: torch.Tensor
    speakers: list[str]
    prompts: list[Optional[Prompt]]
    prompt_audio: list[Optional[np.ndarray]]
    llm_prompt: bool

    def __len__(self) -> int:
        return len(self.speech)

    def select(self, rows: Sequence[int], group: int) -> "Rollouts":
        """The rows ``rows`` in that order, ``group`` per text."""
        return Rollouts(group=group, texts=[self.texts[r] for r in rows], text_ids=[self.text_ids[r] for r in rows],
                        speech=[self.speech[r] for r in rows], ended=self.ended[list(rows)],
                        speakers=[self.speakers[r] for r in rows], prompts=[self.prompts[r] for r in rows],
                        prompt_audio=[self.prompt_audio[r] for r in rows], llm_prompt=self.llm_prompt)

    def llm_prompts(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """See :func:`llm_prompt_rows`."""
        return llm_prompt_rows(self.prompts, self.llm_prompt)


def llm_prompt_rows(prompts: Sequence[Optional[Prompt]], llm_prompt: bool
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The prompt text ids and prompt speech ids each row's LLM continues (empty rows where it reads its text alone),
    as :meth:`e2e_tts.models.llm.SpeechLLM.forward_after_prompts` takes them."""
    empty = torch.zeros(0, dtype=torch.long)
    used = [p if llm_prompt else None for p in prompts]
    return [empty if p is None else p.text_ids for p in used], [empty if p is None else p.speech_ids for p in used]
