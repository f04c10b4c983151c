"""The speech tokenizer: log-mel frames -> transformer encoder -> quantized tokens at the token rate.

::

    mel (B, T_mel, n_mels) -> normalise -> Conv1d front-end -> TransformerStack (non-causal, masked)
        -> stack frames_per_token frames + Linear (B, T_tok, dim) -> Linear projection in (B, T_tok, Dc)
        -> quantizer -> ids (B, T_tok), codes (B, T_tok, Dc)

A *code* is a point of the quantizer's codebook ``(V, Dc)``, in the quantizer's own space: for FSQ the
fixed grid that ``indices_to_codes`` enumerates (``Dc = len(levels)``, values in [-1, 1]); the up-projection
into a model's width is done by each consumer's :class:`~e2e_tts.models.speech_embedding.SpeechEmbedding`.
``codes`` carry straight-through gradients, so a loss on them (LLM, flow, reward model in the joint stage)
reaches the encoder. The quantizers come from ``vector_quantize_pytorch``:

* ``fsq``: ``FSQ(levels)`` (the paper's single FSQ codebook; no auxiliary loss, nothing to collapse or sync).
* ``vq``: ``VectorQuantize`` with an EMA codebook and plain straight-through (``rotation_trick=False``).
* ``rvq``: ``ResidualVQ``. One token is the combined index ``sum_q i_q * K**q`` of its ``Q`` stage indices
  (``K`` codes per stage), so ``V = K**Q`` and a code is the sum of the selected stage vectors.

Distributed training with ``vq``/``rvq``: the EMA codebook all-reduces its statistics *inside* every
training-mode ``forward``, so every rank must call ``forward`` the same number of times per step (or the job
hangs), and the tokenizer must be built after ``torch.distributed`` is initialised (the sync flag is fixed at
construction). The EMA buffers are updated outside the optimizer and are not ZeRO-partitioned.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, ResidualVQ, VectorQuantize

from e2e_tts.checks import FieldError, at_least, one_of, positive
from e2e_tts.models.layers import TransformerStack

QUANTIZERS = ("fsq", "vq", "rvq")
MAX_ENUMERATED_CODES = 2 ** 16  # an RVQ codebook() beyond this would be too large to embed as soft tokens


@dataclass
class TokenizerConfig:
    """Speech tokenizer sizes; the defaults are the ``tiny`` preset (about 3M parameters).

    Args:
        n_mels: mel bins of the input.
        frames_per_token: mel frames per token (50 Hz mel / 2 = 25 Hz tokens).
        dim: encoder width.
        depth: encoder transformer blocks.
        heads: attention heads.
        ff_mult: feed-forward expansion.
        dropout: encoder dropout (it makes training-mode ids stochastic, so the default is 0).
        mel_mean: subtracted from the log-mel so the encoder sees roughly zero-mean input.
        mel_std: divides the centred log-mel to roughly unit scale.
        quantizer: "fsq", "vq" or "rvq".
        levels: FSQ levels per code dimension, each >= 3; ``prod(levels)`` codes. The tiny preset uses
            [5, 5, 5, 5] (625 codes) so a small LLM sees each code often; the paper preset [3] * 8 (6561).
        codebook_size: VQ codes (RVQ: codes per stage).
        codebook_dim: VQ/RVQ code dimension.
        num_quantizers: RVQ stages.
        commitment_weight: VQ/RVQ commitment loss weight (the aux loss).
        vq_decay: EMA decay of the VQ/RVQ codebook.
    """

    n_mels: int = 80
    frames_per_token: int = 2
    dim: int = 256
    depth: int = 4
    heads: int = 4
    ff_mult: float = 4.0
    dropout: float = 0.0
    # Measured with e2e_tts.audio.MelSpectrogram: LibriVox speech -4.5 +- 2.3, flite speech -5.9 +- 3.7.
    mel_mean: float = -5.0
    mel_std: float = 3.0
    quantizer: str = "fsq"
    levels: list[int] = field(default_factory=lambda: [5, 5, 5, 5])
    codebook_size: int = 1024
    codebook_dim: int = 16
    num_quantizers: int = 2
    commitment_weight: float = 0.25
    vq_decay: float = 0.99

    def __post_init__(self) -> None:
        one_of(self, "quantizer", QUANTIZERS)
        for name in ("n_mels", "frames_per_token", "dim", "heads", "ff_mult", "mel_std"):
            positive(self, name)
        at_least(self, "depth", 0)
        if self.dim % self.heads or self.dim // self.heads % 2:
            raise FieldError("dim", f"{self.dim} must split into heads {self.heads} of even width (rotary)")
        if not self.levels or any(level < 3 for level in self.levels):
            raise FieldError("levels", f"must be a non-empty list of FSQ levels >= 3, got {list(self.levels)}")
        at_least(self, "codebook_size", 2)
        at_least(self, "codebook_dim", 1)
        at_least(self, "num_quantizers", 1)

PRESETS: dict[str, TokenizerConfig] = {
    "tiny": TokenizerConfig(),
    # ~0.59B like the paper's tokenizer: 30 blocks of 1280 (24 blocks would be only 0.47B), FSQ 3^8 at 25 Hz.
    "paper": TokenizerConfig(dim=1280, depth=30, heads=20, levels=[3] * 8),
}


@dataclass
class TokenizerOutput:
    """What :meth:`SpeechTokenizer.forward` returns.

    Attributes:
        ids: ``(B, T_tok)`` long token ids, 0 on padding.
        codes: ``(B, T_tok, Dc)`` quantized codes with straight-through gradients, 0 on padding.
        mask: ``(B, T_tok)`` True on valid tokens.
        aux_loss: scalar; 0 for FSQ, the commitment loss for VQ/RVQ.
    """

    ids: torch.Tensor
    codes: torch.Tensor
    mask: torch.Tensor
    aux_loss: torch.Tensor


class SpeechTokenizer(nn.Module):
    """Log-mel -> discrete speech tokens and their codes.

    Args:
        config: sizes and quantizer choice.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        cfg = config
        # A kernel-3 conv gives each frame its neighbours before attention; padded frames are zeroed first,
        # which is exactly the conv's own zero padding, so batching cannot change a sequence's output.
        self.front_end = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=3, padding=1)
        self.encoder = TransformerStack(cfg.dim, cfg.depth, cfg.heads, cfg.ff_mult, cfg.dropout)
        self.downsample = nn.Sequential(nn.Linear(cfg.frames_per_token * cfg.dim, cfg.dim), nn.GELU())
        self.project_in = nn.Linear(cfg.dim, self.codebook_dim)
        if cfg.quantizer == "fsq":
            # FSQ's constructor calls .item(), which fails on the meta device; its only state is small buffers.
            building_on_meta = torch.empty(0).device.type == "meta"
            with torch.device("cpu") if building_on_meta else contextlib.nullcontext():
                self.quantizer = FSQ(list(cfg.levels))
        else:
            vq_args = dict(dim=cfg.codebook_dim, codebook_size=cfg.codebook_size, rotation_trick=False,
                           commitment_weight=cfg.commitment_weight, decay=cfg.vq_decay,
                           sync_codebook=_is_multi_process())
            if cfg.quantizer == "vq":
                self.quantizer = VectorQuantize(**vq_args)
            else:
                self.quantizer = ResidualVQ(num_quantizers=cfg.num_quantizers, **vq_args)

    @property
    def codebook_size(self) -> int:
        """Number of distinct token ids ``V``."""
        cfg = self.config
        if cfg.quantizer == "fsq":
            return math.prod(cfg.levels)
        if cfg.quantizer == "vq":
            return cfg.codebook_size
        return cfg.codebook_size ** cfg.num_quantizers

    @property
    def codebook_dim(self) -> int:
        """Dimension ``Dc`` of one code."""
        cfg = self.config
        return len(cfg.levels) if cfg.quantizer == "fsq" else cfg.codebook_dim

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> TokenizerOutput:
        """Tokenizes a padded batch.

        ``T_tok = T_mel // frames_per_token``; trailing frames are dropped, and a token is valid only if all its
        frames are valid. Frames of invalid tokens are hidden from the encoder, so a sequence's tokens do not
        depend on what it is batched with.

        Args:
            mel: ``(B, T_mel, n_mels)`` natural-log mel magnitudes.
            mel_mask: ``(B, T_mel)`` bool, True on valid frames.
        Returns:
            :class:`TokenizerOutput` with ids ``(B, T_tok)``, codes ``(B, T_tok, Dc)``, mask ``(B, T_tok)``.
        Raises:
            ValueError: on wrong shapes or dtypes, or a sequence with no complete valid token.
        """
        token_mask = self._token_mask(mel, mel_mask)
        batch, num_tokens = token_mask.shape
        k = self.config.frames_per_token
        frame_mask = token_mask.repeat_interleave(k, dim=1)
        x = (mel[:, :num_tokens * k] - self.config.mel_mean) / self.config.mel_std
        x = x.masked_fill(~frame_mask[..., None], 0.0)
        x = self.front_end(x.transpose(1, 2)).transpose(1, 2)
        x, _ = self.encoder(x, mask=frame_mask)
        x = self.downsample(x.reshape(batch, num_tokens, k * self.config.dim))
        latent = self.project_in(x)
        codes, ids, aux_loss = self._quantize(latent, token_mask)
        return TokenizerOutput(ids=ids.long().masked_fill(~token_mask, 0),
                               codes=codes.masked_fill(~token_mask[..., None], 0.0),
                               mask=token_mask, aux_loss=aux_loss)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, T_tok)`` and mask ``(B, T_tok)`` in eval mode without gradients (the training mode
        is restored afterwards). Arguments as :meth:`forward`."""
        was_training = self.training
        self.eval()
        try:
            out = self(mel, mel_mask)
        finally:
            self.train(was_training)
        return out.ids, out.mask

    def codebook(self) -> torch.Tensor:
        """The enumerated codebook ``(V, Dc)``: row ``i`` is the code of token id ``i``.

        FSQ: the fixed grid. VQ/RVQ: a snapshot of the current EMA codebook (no gradient); ``codebook()[ids]``
        equals the codes of a forward pass in eval mode (a training-mode forward moves the codebook after
        quantizing).

        Raises:
            ValueError: for an RVQ whose ``K**Q`` combined codes exceed ``MAX_ENUMERATED_CODES``.
        """
        if self.config.quantizer == "rvq" and self.codebook_size > MAX_ENUMERATED_CODES:
            raise ValueError(f"RVQ has {self.codebook_size} combined codes, more than MAX_ENUMERATED_CODES="
                             f"{MAX_ENUMERATED_CODES}: use fewer codes per stage or fewer stages")
        ids = torch.arange(self.codebook_size, device=self.project_in.weight.device)
        return self._lookup(ids)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes ``(..., Dc)`` of valid ids ``(...)``."""
        quantizer, cfg = self.quantizer, self.config
        flat = ids.reshape(-1)  # the library lookups read extra dims as image/video layouts
        if cfg.quantizer == "fsq":
            codes = quantizer.indices_to_codes(flat)
        elif cfg.quantizer == "vq":
            codes = quantizer.get_codes_from_indices(flat).detach().clone()
        else:
            stage_ids = torch.stack([(flat // cfg.codebook_size ** q) % cfg.codebook_size
                                     for q in range(cfg.num_quantizers)], dim=-1)
            codes = quantizer.get_codes_from_indices(stage_ids[None]).sum(dim=0)[0].detach()
        # Consumers multiply codes with their own (possibly bf16) weights: match the tokenizer's dtype.
        return codes.reshape(*ids.shape, self.codebook_dim).to(self.project_in.weight.dtype)

    def _token_mask(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        """Validates the inputs and returns the token mask ``(B, T_tok)``."""
        cfg = self.config
        if mel.dim() != 3 or mel.shape[-1] != cfg.n_mels:
            raise ValueError(f"mel must be (B, T_mel, {cfg.n_mels}), got {tuple(mel.shape)}")
        if mel_mask.dtype != torch.bool or mel_mask.shape != mel.shape[:2]:
            raise ValueError(f"mel_mask must be a bool tensor of shape {tuple(mel.shape[:2])}, "
                             f"got {mel_mask.dtype} {tuple(mel_mask.shape)}")
        num_tokens = mel.shape[1] // cfg.frames_per_token
        token_mask = mel_mask[:, :num_tokens * cfg.frames_per_token].reshape(
            mel.shape[0], num_tokens, cfg.frames_per_token).all(dim=-1)
        empty = (~token_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            # Such a sequence would attend to nothing (NaN) and make the commitment loss a mean over nothing.
            raise ValueError(f"sequences {empty} have no complete valid token "
                             f"(fewer than {cfg.frames_per_token} valid frames in a token's span)")
        return token_mask

    def _quantize(self, latent: torch.Tensor, token_mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantizes ``latent (B, T, Dc)`` -> codes ``(B, T, Dc)``, ids ``(B, T)``, aux loss (scalar)."""
        cfg = self.config
        if cfg.quantizer == "fsq":
            codes, ids = self.quantizer(latent)
            return codes, ids, latent.new_zeros(())
        quantized, ids, loss = self.quantizer(latent, mask=token_mask)
        if cfg.quantizer == "rvq":
            basis = cfg.codebook_size ** torch.arange(cfg.num_quantizers, device=ids.device)
            ids = (ids.clamp(min=0) * basis).sum(dim=-1)
        # Plain straight-through on the (summed) code: ResidualVQ alone would hand the input a gradient
        # num_quantizers times too large, and VectorQuantize passes none in eval mode.
        codes = latent + (quantized.to(latent.dtype) - latent).detach()
        return codes, ids, loss.sum()


def _is_multi_process() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def token_statistics(sequences: Sequence[torch.Tensor], vocab_size: int) -> dict[str, float]:
    """Codebook usage and predictability of token sequences: how much of its codebook a tokenizer uses, and how
    much one token tells about the next (a low-entropy, predictable code is easier for the LLM to model).

    Pairs are counted only within each sequence. Both measures are plug-in estimates from counts; the MI is
    biased upwards by roughly ``(distinct pairs seen) / (2 N ln 2)`` bits for N pairs, so use many more tokens
    than codes (a 6561-code tokenizer needs millions of tokens before its MI means much).

    Args:
        sequences: 1-D integer tensors (valid tokens only, no padding), ids in ``[0, vocab_size)``.
        vocab_size: number of possible ids ``V``.
    Returns:
        ``usage`` (fraction of the V codes seen), ``entropy_bits`` (unigram entropy H(X_n)), ``perplexity``
        (2 ** entropy), ``mutual_information_bits`` (I(X_{n+1}; X_n) from adjacent pairs; NaN if there is no
        pair), ``num_tokens``, ``num_pairs``.
    Raises:
        ValueError: for a non-1-D or non-integer sequence, ids out of range, or no tokens at all.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    tokens, firsts, seconds = [], [], []
    for index, seq in enumerate(sequences):
        seq = torch.as_tensor(seq).detach().cpu()
        if seq.dim() != 1 or seq.is_floating_point() or seq.dtype == torch.bool:
            raise ValueError(f"sequence {index} must be a 1-D integer tensor, got {seq.dtype} {tuple(seq.shape)}")
        if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) >= vocab_size):
            raise ValueError(f"sequence {index} has ids out of range [0, {vocab_size}): "
                             f"min={int(seq.min())} max={int(seq.max())}")
        seq = seq.long()
        tokens.append(seq)
        firsts.append(seq[:-1])
        seconds.append(seq[1:])
    all_tokens = torch.cat(tokens) if tokens else torch.empty(0, dtype=torch.long)
    if all_tokens.numel() == 0:
        raise ValueError("token_statistics needs at least one token")
    counts = torch.bincount(all_tokens, minlength=vocab_size).double()
    probs = counts[counts > 0] / counts.sum()
    entropy = float(-(probs * torch.log2(probs)).sum())

    first, second = torch.cat(firsts), torch.cat(seconds)
    num_pairs = first.numel()
    mutual_information = float("nan")
    if num_pairs:
        # Joint counts over observed pairs only (V**2 dense counts would not fit for V = 6561).
        pair_keys, joint = torch.unique(first * vocab_size + second, return_counts=True)
        joint = joint.double()
        first_counts = torch.bincount(first, minlength=vocab_size).double()[pair_keys // vocab_size]
        second_counts = torch.bincount(second, minlength=vocab_size).double()[pair_keys % vocab_size]
        terms = joint / num_pairs * torch.log2(joint * num_pairs / (first_counts * second_counts))
        mutual_information = max(float(terms.sum()), 0.0)
    return {
        "usage": float((counts > 0).double().mean()),
        "entropy_bits": entropy,
        "perplexity": 2.0 ** entropy,
        "mutual_information_bits": mutual_information,
        "num_tokens": int(all_tokens.numel()),
        "num_pairs": num_pairs,
    }

