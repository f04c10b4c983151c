"""The soft-token contract: every consumer of speech tokens embeds ids, probabilities or codes alike.

A speech token is a point of the tokenizer's codebook ``(V, Dc)`` (for FSQ, the fixed grid that
``indices_to_codes`` enumerates). A consumer embeds a code ``c`` as ``mlp(c)``, so that:

* ids ``(B, T)`` long             -> ``mlp(codebook[ids])``
* probabilities ``(B, T, V)``      -> ``probs @ mlp(codebook)`` (expected embedding; Gumbel-softmax path)
* quantized codes ``(B, T, Dc)``   -> ``mlp(codes)`` (the tokenizer's straight-through output; joint stage)

A one-hot probability matrix therefore gives exactly the embedding of the hard ids, and gradients
reach the tokenizer through ``codes`` and the LLM through ``probs``.
"""

from __future__ import annotations

import torch
from torch import nn


class SpeechEmbedding(nn.Module):
    """Embeds speech tokens given as ids, probabilities or codes into ``dim``.

    Args:
        codebook_dim: dimension ``Dc`` of one code.
        dim: output width.
    """

    def __init__(self, codebook_dim: int, dim: int):
        super().__init__()
        self.codebook_dim = codebook_dim
        self.mlp = nn.Sequential(nn.Linear(codebook_dim, dim), nn.GELU(), nn.Linear(dim, dim))

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
        if not speech.is_floating_point():
            if speech.dim() != 2:
                raise ValueError(f"speech ids must be (B, T), got {tuple(speech.shape)}")
            return self.mlp(codebook[speech])
        if speech.dim() != 3:
            raise ValueError(f"soft speech input must be (B, T, V) or (B, T, Dc), got {tuple(speech.shape)}")
        if speech.shape[-1] == vocab:
            return speech.to(codebook.dtype) @ self.mlp(codebook)
        if speech.shape[-1] == code_dim:
            return self.mlp(speech)
        raise ValueError(f"last dim {speech.shape[-1]} is neither the codebook size {vocab} nor the code dim {code_dim}")
