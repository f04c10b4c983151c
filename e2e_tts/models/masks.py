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


def concat_prefixes(first: torch.Tensor, first_mask: torch.Tensor, second: torch.Tensor,
                    second_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise concatenation of the valid prefixes of two right-padded batches.

    Args:
        first: ``(B, T1, ...)`` with mask ``(B, T1)``; second: ``(B, T2, ...)`` with mask ``(B, T2)`` (the same
            trailing dims). Rows may be empty.
    Returns:
        ``(B, T, ...)`` where row ``b`` is ``first[b]``'s valid part then ``second[b]``'s, zero at padding
        (``T`` = the longest row), and its mask ``(B, T)``. Differentiable in both inputs.
    """
    first_lengths = prefix_lengths(first_mask, "first_mask")
    lengths = first_lengths + prefix_lengths(second_mask, "second_mask")
    # Both side by side, then each output position gathers from its source column.
    both = torch.cat([first, second], dim=1)
    positions = torch.arange(int(lengths.max()), device=both.device)[None, :]
    source = torch.where(positions < first_lengths[:, None], positions,
                         positions - first_lengths[:, None] + first.shape[1])
    mask = positions < lengths[:, None]
    rows = torch.arange(both.shape[0], device=both.device)[:, None]
    joined = both[rows, source.clamp(max=both.shape[1] - 1)]
    keep = mask.view(*mask.shape, *(1,) * (both.dim() - 2))
    return torch.where(keep, joined, torch.zeros((), dtype=joined.dtype, device=joined.device)), mask
