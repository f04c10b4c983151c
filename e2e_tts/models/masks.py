"""Padding masks: the one convention every module uses (True on a prefix of each row, then False)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence


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


def pad_rows(rows: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads 1-D id tensors into ``(B, T)`` ids (0 at padding) and a ``(B, T)`` boolean mask."""
    for row in rows:
        if row.dim() != 1:
            raise ValueError(f"each id row must be 1-D, got shape {tuple(row.shape)}")
    lengths = torch.tensor([len(row) for row in rows], device=device)
    ids = pad_sequence([row.to(device=device, dtype=torch.long) for row in rows], batch_first=True)
    return ids, lengths_to_mask(lengths, ids.shape[1])
