"""Padding masks: the one convention every module uses (True on a prefix of each row, then False)."""

from __future__ import annotations

from typing import Optional

import torch


def lengths_to_mask(lengths: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, length)`` bool mask, True on the first ``lengths[b]`` positions of row ``b``.

    ``length`` defaults to the longest row.
    """
    length = int(lengths.max()) if length is None else length
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


def prefix_lengths(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Lengths ``(B,)`` of a right-padded mask ``(B, T)``.

    Raises:
        ValueError: naming ``name``, when the mask is not a 2-D bool tensor or has a hole (a False before a True).
    """
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"{name} must be bool (B, T), got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    if not torch.equal(mask, lengths_to_mask(lengths, mask.shape[1])):
        raise ValueError(f"{name} must be right-padded: True on a prefix of each row, then False")
    return lengths
