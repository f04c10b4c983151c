"""Model FLOPs of the modules and of one training update, counted from their shapes (for MFU).

Conventions (those of model FLOPs utilisation, Chowdhery et al. 2022, PaLM appendix B):

* a product of an ``(m, k)`` and a ``(k, n)`` matrix is ``2 m k n`` FLOPs (convolutions likewise per output); the
  elementwise work (norms, activations, softmax, losses, the optimizer) is not counted;
* attention's two products, the scores and the weighted values, are counted in full: ``4 T S d`` for ``T`` queries
  over ``S`` keys and heads of total width ``d``, also where a causal or padding mask hides some of them (the
  kernels this code calls compute them all);
* a backward pass costs twice its forward, so per update a trained module costs 3x its forward, a frozen module
  that passes gradients on to its input (the e2e stage's flow and reward model under the LLM's Gumbel tokens) 2x,
  and a frozen module that only runs forward 1x.

Rows count at their valid lengths (``padded=False``: the work the batch needs, the numerator of MFU) or at the
padded lengths the kernels run on (``padded=True``: the work done); the ratio of the two is the cost of padding.
Every function takes the module itself (built on the meta device it costs no memory, as for the paper sizes) and
per-row lengths.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from e2e_tts.models.flow import FlowDecoder
from e2e_tts.models.layers import TransformerStack
from e2e_tts.models.llm import SpeechLLM
from e2e_tts.models.reward import RewardModel
from e2e_tts.models.speech_embedding import SpeechEmbedding
from e2e_tts.models.tokenizer import SpeechTokenizer
from e2e_tts.models.vocoder import Vocoder
from e2e_tts.stage import StageConfig

SPEECH_INPUTS = ("ids", "codes", "probs")  # the three forms of the soft-token contract (speech_embedding.py)
FORWARD, BACKWARD_TO_INPUT, TRAINED = 1, 2, 3  # forward passes' worth of work per update (module docstring)


def matmul(rows: int, n_in: int, n_out: int) -> int:
    """FLOPs of ``rows`` vectors through an ``n_in -> n_out`` linear map."""
    return 2 * rows * n_in * n_out


def attention(queries: int, keys: int, dim: int, context_dim: int | None = None) -> int:
    """One :class:`~e2e_tts.models.layers.Attention` of width ``dim``: the q, kv and out projections and the two
    products, for ``queries`` positions attending to ``keys`` positions of width ``context_dim`` (self: ``dim``)."""
    context_dim = dim if context_dim is None else context_dim
    return (matmul(queries, dim, dim) + matmul(keys, context_dim, 2 * dim) + matmul(queries, dim, dim)
            + 4 * queries * keys * dim)


def _rows(lengths: Sequence[int], padded: bool) -> list[int]:
    """Per-row lengths, or every row at the longest one (what a padded batch computes)."""
    lengths = [int(n) for n in lengths]
    return [max(lengths, default=0)] * len(lengths) if padded else lengths


def transformer_stack(stack: TransformerStack, lengths: Sequence[int], context_lengths: Sequence[int] | None = None,
                      padded: bool = False) -> int:
    """A :class:`~e2e_tts.models.layers.TransformerStack` over rows of ``lengths`` (cross-attending to rows of
    ``context_lengths`` when it was built with a context); adaLN modulation counts one condition vector per row."""
    if not stack.blocks:
        return 0
    block = stack.blocks[0]
    dim, hidden = block.norm_ff.normalized_shape[0], block.ff.net[0].out_features
    lengths = _rows(lengths, padded)
    if block.cross is not None:
        if context_lengths is None:
            raise ValueError("a stack with cross-attention needs context_lengths")
        contexts = _rows(context_lengths, padded)
        context_dim = block.cross.to_kv.in_features
    total = 0
    for row, length in enumerate(lengths):
        per_block = attention(length, length, dim) + matmul(length, dim, hidden) + matmul(length, hidden, dim)
        if block.cross is not None:
            per_block += attention(length, contexts[row], dim, context_dim)
        if block.modulation is not None:
            per_block += matmul(1, block.modulation[-1].in_features, block.modulation[-1].out_features)
        total += len(stack.blocks) * per_block
    return total


def speech_embedding(embedding: SpeechEmbedding, lengths: Sequence[int], codebook_size: int, speech: str,
                     padded: bool = False) -> int:
    """A :class:`~e2e_tts.models.speech_embedding.SpeechEmbedding` of rows of ``lengths`` tokens given as
    ``speech`` (one of :data:`SPEECH_INPUTS`): ids and codes go through its MLP per token (codes also find their
    nearest codebook point when it has an id table); probabilities embed the whole codebook once, then each
    token's mixture of it."""
    if speech not in SPEECH_INPUTS:
        raise ValueError(f"speech must be one of {SPEECH_INPUTS}, got {speech!r}")
    code_dim, dim = embedding.codebook_dim, embedding.mlp[-1].out_features
    tokens = sum(_rows(lengths, padded))
    if speech == "probs":
        return matmul(codebook_size, code_dim, dim) + matmul(codebook_size, dim, dim) + matmul(tokens, codebook_size,
                                                                                                dim)
    total = matmul(tokens, code_dim, dim) + matmul(tokens, dim, dim)
    if speech == "codes" and embedding.table is not None:
        total += matmul(tokens, code_dim, codebook_size)  # torch.cdist to every code
    return total


def tokenizer(module: SpeechTokenizer, mel_frames: Sequence[int], padded: bool = False) -> int:
    """The speech tokenizer's forward over rows of ``mel_frames`` frames (each cut to whole tokens)."""
    cfg = module.config
    k = cfg.frames_per_token
    tokens = [m // k for m in _rows(mel_frames, padded)]
    frames = sum(n * k for n in tokens)
    return (matmul(frames, cfg.n_mels * module.front_end.kernel_size[0], cfg.dim)
            + transformer_stack(module.encoder, [n * k for n in tokens])
            + matmul(sum(tokens), k * cfg.dim, cfg.dim) + matmul(sum(tokens), cfg.dim, module.codebook_dim))


def llm(module: SpeechLLM, text_lengths: Sequence[int], speech_lengths: Sequence[int], speech: str = "ids",
        input_noise: bool = False, padded: bool = False) -> int:
    """The LLM's teacher-forced forward over rows ``SOS text TASK speech`` and its logits over the speech ids and
    EOS at each of the ``S + 1`` prediction positions.

    Args:
        text_lengths, speech_lengths: per row.
        speech: how the speech arrives (:data:`SPEECH_INPUTS`).
        input_noise: training with ``llm_input_noise > 0``, which embeds one random id per speech position too.
    """
    shape = module.decoder.config
    hidden, layers, inner = shape.hidden_size, shape.num_hidden_layers, shape.intermediate_size
    head_dim = getattr(shape, "head_dim", None) or hidden // shape.num_attention_heads
    q_dim, kv_dim = shape.num_attention_heads * head_dim, shape.num_key_value_heads * head_dim
    rows = [t + 2 + s for t, s in zip(text_lengths, speech_lengths)]
    total = 0
    for n in _rows(rows, padded):
        total += layers * (matmul(n, hidden, q_dim) + matmul(n, hidden, 2 * kv_dim) + matmul(n, q_dim, hidden)
                           + 4 * n * n * q_dim + 3 * matmul(n, hidden, inner))
    speech_rows = _rows(speech_lengths, padded)
    vocab = module.layout.speech_vocab_size
    total += matmul(sum(speech_rows) + len(speech_rows), hidden, vocab + 1)
    total += speech_embedding(module.speech_embedding, speech_rows, vocab, speech)
    if input_noise:
        total += speech_embedding(module.speech_embedding, speech_rows, vocab, "ids")
    return total


def flow_condition(module: FlowDecoder, token_lengths: Sequence[int], codebook_size: int, speech: str = "ids",
                   padded: bool = False) -> int:
    """The flow's token condition, computed once per utterance: speech embedding, token encoder and the
    upsampler's convolutions at the mel rate (:meth:`FlowDecoder.embed_tokens`)."""
    cfg = module.config
    tokens = _rows(token_lengths, padded)
    total = speech_embedding(module.speech_embedding, tokens, codebook_size, speech)
    if module.token_encoder is not None:
        total += transformer_stack(module.token_encoder, tokens)
    frames = sum(tokens) * cfg.token_mel_ratio
    total += len(module.token_upsampler.convs) * matmul(frames, cfg.dim * cfg.upsample_kernel_size, cfg.dim)
    return total


def flow_velocity(module: FlowDecoder, frames: Sequence[int], padded: bool = False) -> int:
    """One call of the DiT estimator (:meth:`FlowDecoder.velocity`) on rows of ``frames`` mel frames: an ODE
    step of synthesis costs this (twice with CFG), a training step once."""
    cfg = module.config
    frames = _rows(frames, padded)
    total_frames = sum(frames)
    time_mlp = matmul(len(frames), cfg.dim, cfg.dim) * 2
    return (matmul(total_frames, 2 * cfg.n_mels + cfg.dim, cfg.dim) + time_mlp
            + transformer_stack(module.transformer, frames) + matmul(total_frames, cfg.dim, cfg.n_mels))


def flow_loss(module: FlowDecoder, token_lengths: Sequence[int], mel_frames: Sequence[int], codebook_size: int,
              speech: str = "ids", padded: bool = False) -> int:
    """The flow's training forward (:meth:`FlowDecoder.loss_terms`): the condition, the prior head and one
    velocity on the frames shared by mel and tokens, ``min(mel frames, tokens * ratio)`` per row."""
    ratio = module.config.token_mel_ratio
    frames = _rows([min(m, n * ratio) for m, n in zip(mel_frames, token_lengths)], padded)
    prior = matmul(sum(frames), module.config.dim, module.config.n_mels) if module.prior_proj is not None else 0
    return flow_condition(module, token_lengths, codebook_size, speech, padded) + prior + flow_velocity(module, frames)


def reward(module: RewardModel, token_lengths: Sequence[int], text_lengths: Sequence[int], codebook_size: int,
           speech: str = "ids", padded: bool = False) -> int:
    """The reward model's forward (:meth:`RewardModel.forward`): encoder, CTC head, the attention decoder
    teacher-forced on ``sos + text`` and every task head."""
    cfg = module.config
    tokens, steps = _rows(token_lengths, padded), [n + 1 for n in _rows(text_lengths, padded)]
    classes = module.text_vocab_size + 1
    total = (speech_embedding(module.speech_embedding, tokens, codebook_size, speech)
             + transformer_stack(module.encoder, tokens) + matmul(sum(tokens), cfg.encoder_dim, classes)
             + transformer_stack(module.decoder, steps, tokens) + matmul(sum(steps), cfg.decoder_dim, classes))
    for head in module.task_heads.values():
        total += sum(attention(1, n, cfg.encoder_dim) for n in tokens)
        total += matmul(len(tokens), cfg.encoder_dim, head.classifier.out_features)
    return total


def vocoder(module: Vocoder, mel_frames: Sequence[int], padded: bool = False) -> int:
    """The vocoder generator's forward (:meth:`Vocoder.spectrogram`; the inverse STFT is an FFT, not counted)."""
    cfg = module.config
    frames = sum(_rows(mel_frames, padded))
    per_block = matmul(frames, cfg.kernel_size, 1) * cfg.dim + 2 * matmul(frames, cfg.dim, cfg.intermediate_dim)
    return (matmul(frames, cfg.n_mels * cfg.kernel_size, cfg.dim) + cfg.num_blocks * per_block
            + matmul(frames, cfg.dim, cfg.n_fft + 2))


def update_flops(system: nn.Module, stage: StageConfig, mel_frames: Sequence[int], text_lengths: Sequence[int],
                 encoded_rows: Sequence[int] | None = None, padded: bool = False) -> dict[str, int]:
    """Model FLOPs of one update of ``stage`` on a batch, per module, forward and backward.

    Counts the ``multitask`` objective (joint, separate, cascade stages) and the ``e2e`` objective
    (e2e_tts/objectives): which modules run, on which input form, and with which multiplier of the module
    docstring. Prompt pairs (``stage.multitask.prompt_pairs``) lengthen some LLM rows by a random partner and are not
    counted: with them the LLM's count is a lower bound.

    Args:
        system: the :class:`~e2e_tts.system.TTSSystem` (may live on the meta device).
        stage: the stage spec.
        mel_frames, text_lengths: the batch's valid mel frames and text ids per row.
        encoded_rows: rows a frozen tokenizer encoded in this update (its token cache misses); None = every row.
        padded: count rows at the batch's padded lengths (the work done) instead of their own.
    Returns:
        FLOPs per module name (``tokenizer``, ``llm``, ``flow``, ``reward``, and ``reference``: the e2e stage's
        frozen copy of the LLM), only those that run.
    Raises:
        ValueError: for the objectives this does not count (grpo, vocoder).
    """
    tokens = [m // system.tokenizer.config.frames_per_token for m in mel_frames]
    codes = system.tokenizer.codebook_size
    trains_tokenizer = "tokenizer" in stage.trainable
    flops: dict[str, int] = {}
    if trains_tokenizer:
        flops["tokenizer"] = TRAINED * tokenizer(system.tokenizer, mel_frames, padded)
    else:
        rows = range(len(mel_frames)) if encoded_rows is None else encoded_rows
        if len(rows):  # the token cache encodes its misses as a batch of their own, padded as the whole batch
            frames = [max(mel_frames) if padded else mel_frames[r] for r in rows]
            flops["tokenizer"] = FORWARD * tokenizer(system.tokenizer, frames)
    weights = {name: weight for name, weight in stage.loss_weights.items() if weight != 0}
    if stage.objective == "multitask":
        speech = "codes" if trains_tokenizer else "ids"
        if "llm" in weights:
            flops["llm"] = TRAINED * llm(system.llm, text_lengths, tokens, speech,
                                         stage.multitask.llm_input_noise > 0, padded)
        if "flow" in weights:
            flops["flow"] = TRAINED * flow_loss(system.flow, tokens, mel_frames, codes, speech, padded)
        if "reward" in weights:
            flops["reward"] = TRAINED * reward(system.reward, tokens, text_lengths, codes, speech, padded)
    elif stage.objective == "e2e":
        flops["llm"] = TRAINED * llm(system.llm, text_lengths, tokens, "ids", padded=padded)
        if stage.kl_beta > 0:
            flops["reference"] = FORWARD * llm(system.llm, text_lengths, tokens, "ids", padded=padded)
        if "flow" in weights:
            flops["flow"] = BACKWARD_TO_INPUT * flow_loss(system.flow, tokens, mel_frames, codes, "probs", padded)
        if "asr" in weights or "speaker" in weights:
            flops["reward"] = BACKWARD_TO_INPUT * reward(system.reward, tokens, text_lengths, codes, "probs", padded)
    else:
        raise ValueError(f"FLOPs per update are counted for the multitask and e2e objectives, not "
                         f"{stage.objective!r}")
    return flops
