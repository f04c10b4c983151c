"""Next-token sampling strategies on logits ``(B, V)``: temperature, top-k, top-p and repetition-aware sampling.

All functions are pure (no state, no in-place edits of their input). Filters return logits with the
removed tokens set to ``-inf``; samplers return token indices ``(B,)``.

Repetition-aware sampling (RAS) follows CosyVoice 2 (``cosyvoice/utils/common.py::ras_sampling``): draw a
nucleus (top-p, then top-k) sample; if that token already occurs at least ``window * tau_r`` times among the
last ``window`` generated tokens, draw again from the full distribution instead. This breaks the loops a
peaked nucleus would otherwise repeat forever, while leaving non-repeating steps untouched.
"""

from __future__ import annotations

from typing import Optional

import torch

RAS_WINDOW = 10  # CosyVoice 2's win_size
RAS_TAU = 0.1  # CosyVoice 2's tau_r: one repeat inside the window triggers the fallback


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the ``k`` largest logits of each row ``(B, V)``; ``k <= 0`` or ``k >= V`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keeps the smallest set of most likely tokens whose probability mass reaches ``p`` (nucleus).

    A token is kept when the mass of the tokens strictly more likely than it is below ``p``, so the most
    likely token always survives. ``p >= 1`` keeps all.

    Args:
        logits: ``(B, V)``.
        p: nucleus mass in ``(0, 1]``.
    """
    if not 0.0 < p:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before >= p
    remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_from_logits(logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Draws one token per row from ``softmax(logits)`` ``(B, V)`` -> ``(B,)``."""
    probs = logits.float().softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def nucleus_sample(logits: torch.Tensor, top_k: int, top_p: float,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Samples ``(B,)`` among the tokens that pass both top-p (on the full distribution) and top-k.

    Filtering top-p first keeps the intersection of both sets, as CosyVoice's ``nucleus_sampling`` does.
    """
    return sample_from_logits(top_k_filter(top_p_filter(logits, top_p), top_k), generator)


def repetition_aware_sample(logits: torch.Tensor, history: torch.Tensor, top_k: int, top_p: float,
                            window: int = RAS_WINDOW, tau_r: float = RAS_TAU,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """CosyVoice 2's RAS: a nucleus sample, replaced by a full-distribution sample where it repeats.

    Args:
        logits: ``(B, V)``.
        history: previously generated tokens ``(B, T)`` (``T`` may be 0), most recent last.
        top_k, top_p: the nucleus.
        window: how many recent tokens are checked for repeats.
        tau_r: a token repeating at least ``window * tau_r`` times in the window triggers the fallback.
        generator: random source.
    Returns:
        tokens ``(B,)``.
    """
    candidates = nucleus_sample(logits, top_k, top_p, generator)
    if window <= 0 or history.shape[-1] == 0:
        return candidates
    repeats = (history[:, -window:] == candidates[:, None]).sum(dim=-1)
    fallback = sample_from_logits(logits, generator)
    return torch.where(repeats >= window * tau_r, fallback, candidates)


def sample_next_token(logits: torch.Tensor, history: torch.Tensor, temperature: float = 1.0, top_k: int = 25,
                      top_p: float = 0.8, repetition_aware: bool = True,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One decoding step: temperature, then (repetition-aware) nucleus sampling.

    Args:
        logits: ``(B, V)``; tokens that must not be drawn are already ``-inf``.
        history: previously generated tokens ``(B, T)``, used by repetition-aware sampling.
        temperature: divides the logits; ``0`` means greedy (argmax; the other settings are ignored).
        top_k: keep the ``k`` most likely tokens (``0`` = no limit). CosyVoice 2 uses 25.
        top_p: nucleus mass. CosyVoice 2 uses 0.8.
        repetition_aware: apply RAS with CosyVoice's window 10 and ``tau_r`` 0.1.
        generator: random source.
    Returns:
        tokens ``(B,)``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if repetition_aware:
        return repetition_aware_sample(logits, history, top_k, top_p, generator=generator)
    return nucleus_sample(logits, top_k, top_p, generator)
