"""Zero-shot prompts inside a training batch: a row continues another utterance of its own speaker.

Synthesis asks the LLM to continue a prompt: ``SOS prompt_text text TASK prompt_speech``, then its own speech.
An LLM trained on single utterances only meets that layout at inference; the tiny recipe's predicted the true
next token a third less often behind a prompt than without one (recipes/tiny/README.md). Prefixing some training
rows with a partner's text and speech trains the continuation that inference asks for.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from e2e_tts.models.masks import concat_prefixes


def same_speaker_partners(speakers: Sequence[str]) -> list[Optional[int]]:
    """For each row, the next row (cyclically) of the same speaker, or None when it has no other row."""
    count = len(speakers)
    return [next((other % count for other in range(row + 1, row + count) if speakers[other % count] == name), None)
            for row, name in enumerate(speakers)]


def prefix_partners(text_ids: torch.Tensor, text_mask: torch.Tensor, speech: torch.Tensor, speech_mask: torch.Tensor,
                    speech_ids: torch.Tensor, speakers: Sequence[str], fraction: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefixes each row that has a same-speaker partner, with probability ``fraction``, by the partner's text
    and speech, as a zero-shot prompt precedes it in synthesis.

    Args:
        text_ids, text_mask: ``(B, L)``.
        speech: ids ``(B, S)``, probabilities ``(B, S, V)`` or codes ``(B, S, Dc)``; speech_mask ``(B, S)``.
        speech_ids: ``(B, S)`` the ids of ``speech`` (the LLM's targets).
        speakers: B speaker names.
        fraction: chance that a row with a partner is prefixed (drawn from torch's global RNG).
    Returns:
        text_ids, text_mask, speech, speech_mask, speech_ids with row ``b`` = partner's then its own (unchanged
        rows are re-padded only), right-padded to the longest row.
    """
    partners = same_speaker_partners(speakers)
    device = text_ids.device
    chosen = torch.tensor([p is not None for p in partners], device=device)
    chosen &= torch.rand(len(partners), device=device) < fraction
    index = torch.tensor([b if p is None else p for b, p in enumerate(partners)], device=device)
    prompt_text_mask = text_mask[index] & chosen[:, None]
    prompt_speech_mask = speech_mask[index] & chosen[:, None]
    text_ids, new_text_mask = concat_prefixes(text_ids[index], prompt_text_mask, text_ids, text_mask)
    speech_ids, _ = concat_prefixes(speech_ids[index], prompt_speech_mask, speech_ids, speech_mask)
    speech, new_speech_mask = concat_prefixes(speech[index], prompt_speech_mask, speech, speech_mask)
    return text_ids, new_text_mask, speech, new_speech_mask, speech_ids
