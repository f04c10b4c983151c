"""Transformer building blocks shared by the tokenizer encoder, the flow DiT and the reward model.

Pre-norm blocks with rotary positions, optional causal masking, optional cross-attention (whose
weights can be returned, for alignment rewards and plots) and optional adaptive layer norm
conditioning (DiT-style, for the flow time step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gathered_collectively(module: nn.Module) -> bool:
    """Whether ``module``'s weights are ZeRO-3 partitioned over several ranks (DeepSpeed gives such parameters a
    ``ds_id``). Every forward then all-gathers them, a collective: all ranks must run the same sequence of
    forwards whatever their own data, or they hang or exchange mismatched tensors."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return False
    return any(hasattr(param, "ds_id") for param in module.parameters())


def rotary_tables(length: int, head_dim: int, device: torch.device, base: float = 10000.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``(length, head_dim)`` for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x (B, H, T, Dh)`` by the tables ``(T, Dh)``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention (self or cross).

    Args:
        dim: model width.
        heads: number of heads; ``dim`` must be divisible by it.
        context_dim: width of the keys/values source for cross-attention (None = self-attention).
        dropout: attention dropout probability.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                causal: bool = False, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attends from ``x (B, T, dim)`` to ``context (B, S, context_dim)`` (or to ``x``).

        Args:
            key_mask: ``(B, S)`` True where a key is valid (not padding).
            causal: mask future keys (self-attention only).
            rotary: cos/sin tables ``(T, head_dim)`` applied to queries and keys (self-attention only).
            return_weights: also return the attention weights ``(B, heads, T, S)``.
        Returns:
            output ``(B, T, dim)`` and the weights or None.
        """
        b, t, _ = x.shape
        source = x if context is None else context
        q = self.to_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_kv(source).view(b, source.shape[1], 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        mask = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]
        if causal:
            causal_mask = torch.ones(t, source.shape[1], dtype=torch.bool, device=x.device).tril()
            mask = causal_mask if mask is None else mask & causal_mask
        drop = self.dropout if self.training else 0.0
        if return_weights:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, drop, self.training) @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(out.transpose(1, 2).reshape(b, t, -1)), weights


class FeedForward(nn.Module):
    """Two-layer GELU MLP ``(B, T, dim) -> (B, T, dim)``."""

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, feed-forward.

    With ``cond_dim`` set, each sub-layer's layer norm is modulated (scale, shift, gate) by a
    conditioning vector, as in DiT's adaLN-Zero; the gates start at zero so a new block is the identity.

    Args:
        dim: model width.
        heads: attention heads.
        ff_mult: feed-forward expansion.
        dropout: dropout on attention weights and feed-forward hidden units.
        context_dim: enables cross-attention to a context of this width.
        cond_dim: enables adaptive layer norm from a condition of this width.
    """

    def __init__(self, dim: int, heads: int, ff_mult: float = 4.0, dropout: float = 0.0,
                 context_dim: int | None = None, cond_dim: int | None = None):
        super().__init__()
        affine = cond_dim is None
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=affine)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.norm_ff = nn.LayerNorm(dim, elementwise_affine=affine)
        self.ff = FeedForward(dim, ff_mult, dropout)
        self.modulation = None
        if cond_dim is not None:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
            nn.init.zeros_(self.modulation[-1].weight)
            nn.init.zeros_(self.modulation[-1].bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cond: torch.Tensor | None = None, causal: bool = False,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None, return_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: x ``(B, T, dim)``; mask ``(B, T)`` valid frames; context ``(B, S, context_dim)``;
        context_mask ``(B, S)``; cond ``(B, cond_dim)`` or ``(B, T, cond_dim)``.

        Returns: ``(B, T, dim)`` and the cross-attention weights ``(B, heads, T, S)`` when asked.
        """
        if self.modulation is not None:
            if cond is None:
                raise ValueError("this block was built with cond_dim and needs a condition")
            mod = self.modulation(cond)
            if mod.dim() == 2:
                mod = mod[:, None, :]
            shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mod.chunk(6, dim=-1)
        h = self.norm_attn(x)
        if self.modulation is not None:
            h = h * (1 + scale_a) + shift_a
        h, _ = self.attn(h, key_mask=mask, causal=causal, rotary=rotary)
        x = x + (gate_a * h if self.modulation is not None else self.drop(h))
        weights = None
        if self.cross is not None:
            h, weights = self.cross(self.norm_cross(x), context=context, key_mask=context_mask,
                                    return_weights=return_weights)
            x = x + self.drop(h)
        h = self.norm_ff(x)
        if self.modulation is not None:
            h = h * (1 + scale_f) + shift_f
        h = self.ff(h)
        x = x + (gate_f * h if self.modulation is not None else self.drop(h))
        return x, weights


class TransformerStack(nn.Module):
    """``depth`` :class:`TransformerBlock` s with shared rotary tables and a final layer norm.

    Args: as :class:`TransformerBlock`, plus ``depth``.
    """

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: float = 4.0, dropout: float = 0.0,
                 context_dim: int | None = None, cond_dim: int | None = None):
        super().__init__()
        self.head_dim = dim // heads
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, ff_mult, dropout, context_dim, cond_dim)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cond: torch.Tensor | None = None, causal: bool = False,
                return_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs every block on ``x (B, T, dim)``; returns ``(B, T, dim)`` and the per-layer
        cross-attention weights (a list of ``(B, heads, T, S)``, empty unless asked)."""
        rotary = rotary_tables(x.shape[1], self.head_dim, x.device)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, mask, context, context_mask, cond, causal, rotary, return_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.norm(x), all_weights
