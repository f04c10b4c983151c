"""The LLM's attention over its text while it predicts speech: has it learnt to read the text?

A decoder-only TTS model continues speech long before it follows the text; once it does, the attention of its
speech positions runs along the text (a diagonal band). :func:`text_attention` measures it teacher-forced on given
speech ids, which for the ids the LLM generated itself is the attention generation saw (the same causal rows).
Synthesis records it for every utterance and the evaluation report draws it; ``tools/llm_alignment.py`` measures it
on real utterances.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from e2e_tts.models.llm import SpeechLLM


@torch.inference_mode()
def text_attention(llm: SpeechLLM, codebook: torch.Tensor, text_ids: torch.Tensor, speech_ids: torch.Tensor,
                   prompt_text_ids: Optional[torch.Tensor] = None, prompt_speech_ids: Optional[torch.Tensor] = None
                   ) -> np.ndarray:
    """Per decoder layer, the attention of the positions that predict ``speech_ids`` to the text (heads averaged).

    The row is laid out as synthesis lays it out, ``SOS prompt_text text TASK prompt_speech speech``. Attention
    weights need transformers' eager path, so the pass runs on it and the decoder goes back to its own path after.

    Args:
        llm: the LLM (in eval mode); codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
        text_ids: ``(L,)`` text ids; speech_ids: ``(T,)`` speech ids after the prompt's.
        prompt_text_ids, prompt_speech_ids: ``(P,)`` and ``(Q,)`` ids of a zero-shot prompt, or None.
    Returns:
        ``(layers, T + 1, L)`` float32: row ``t`` is the position that predicts speech token ``t`` (the last row
        predicts EOS), column ``l`` the text's ``l``-th id (not the prompt's text); each row sums to at most 1.
    """
    empty = text_ids[:0]
    prompt_text = empty if prompt_text_ids is None else prompt_text_ids
    prompt_speech = empty if prompt_speech_ids is None else prompt_speech_ids
    decoder = llm.decoder
    path = decoder.config._attn_implementation  # transformers records the attention path only here
    decoder.set_attn_implementation("eager")  # the fused kernels return no weights
    try:
        out, _ = llm.forward_after_prompts([prompt_text], [text_ids], [prompt_speech], [speech_ids], codebook,
                                           return_attentions=True)
    finally:
        decoder.set_attn_implementation(path)
    text_start = 1 + len(prompt_text)  # after SOS and the prompt's text
    # The last prompt speech position (TASK without a prompt) predicts speech token 0.
    first = text_start + len(text_ids) + len(prompt_speech)
    rows, columns = slice(first, first + len(speech_ids) + 1), slice(text_start, text_start + len(text_ids))
    return torch.stack([weights[0].float().mean(0)[rows, columns] for weights in out.attentions]).cpu().numpy()
