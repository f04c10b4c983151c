"""The soft-token contract: every consumer of speech tokens embeds ids, probabilities or codes alike.

A speech token is a point of the tokenizer's codebook ``(V, Dc)`` (for FSQ, the fixed grid that
``indices_to_codes`` enumerates). A consumer embeds a code ``c`` as ``mlp(c)``, so that:

* ids ``(B, T)`` long             -> ``mlp(codebook[ids])``
* probabilities ``(B, T, V)``      -> ``probs @ mlp(codebook)`` (expected embedding; Gumbel-softmax path)
* quantized codes ``(B, T, Dc)``   -> ``mlp(codes)`` (the tokenizer's straight-through output; joint stage)

A one-hot probability matrix therefore gives exactly the embedding of the hard ids, and gradients
reach the tokenizer through ``codes`` and the LLM through ``probs``.

With ``codebook_size > 0`` every id also gets a free vector of its own (an ``nn.Embedding`` row, zero at the start,
as CosyVoice's LLM and flow embed their tokens) added to ``mlp(c)``: ids ``table[ids]``, probabilities
``probs @ table``, codes the row of their codebook point (found by nearest match; the row learns, the tokenizer is
reached through ``mlp(c)`` as before). A small MLP of a 4-number FSQ code maps neighbouring grid points to similar
vectors and learns 625 unrelated ones slowly; the table learns each token's meaning directly.
"""

from __future__ import annotations

import torch
from torch import nn


class SpeechEmbedding(nn.Module):
    """Embeds speech tokens given as ids, probabilities or codes into ``dim``.

    Args:
        codebook_dim: dimension ``Dc`` of one code.
        dim: output width.
        codebook_size: ``V`` for a free vector per id added to the code's embedding; 0 = codes only.
    """

    def __init__(self, codebook_dim: int, dim: int, codebook_size: int = 0):
        super().__init__()
        self.codebook_dim = codebook_dim
        self.mlp = nn.Sequential(nn.Linear(codebook_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.table = None
        if codebook_size > 0:
            self.table = nn.Embedding(codebook_size, dim)
            nn.init.zeros_(self.table.weight)

    def forward(self, speech: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """Args:
            speech: ids ``(B, T)`` (integer), probabilities ``(B, T, V)`` or codes ``(B, T, Dc)``.
            codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
        Returns:
            embeddings ``(B, T, dim)``.
        """
        vocab, code_dim = codebook.shape
        if code_dim != self.codebook_dim:
            raise ValueError(f"codebook has dim {code_dim}, this embedding expects {self.codebook_dim}")
        if vocab == code_dim:
            raise ValueError("codebook size equals code dim: probabilities and codes would be ambiguous")
        if self.table is not None and vocab != self.table.num_embeddings:
            raise ValueError(f"codebook has {vocab} codes, this embedding's id table {self.table.num_embeddings}")
        if not speech.is_floating_point():
            if speech.dim() != 2:
                raise ValueError(f"speech ids must be (B, T), got {tuple(speech.shape)}")
            return self._with_table(self.mlp(codebook[speech]), speech)
        if speech.dim() != 3:
            raise ValueError(f"soft speech input must be (B, T, V) or (B, T, Dc), got {tuple(speech.shape)}")
        if speech.shape[-1] == vocab:
            vectors = self.mlp(codebook) if self.table is None else self.mlp(codebook) + self.table.weight
            return speech.to(codebook.dtype) @ vectors
        if speech.shape[-1] == code_dim:
            nearest = None if self.table is None else torch.cdist(speech.detach(), codebook).argmin(-1)
            return self._with_table(self.mlp(speech), nearest)
        raise ValueError(f"last dim {speech.shape[-1]} is neither the codebook size {vocab} nor the code dim {code_dim}")

    def _with_table(self, embedded: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        """``embedded`` ``(B, T, dim)`` plus the id table's rows of ``ids`` ``(B, T)`` when there is a table."""
        return embedded if self.table is None else embedded + self.table(ids)
