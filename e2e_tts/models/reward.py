"""Token-level multi-task reward model ("Token2Reward" of DiffRO): recognition from speech tokens.

A SenseVoice-like recogniser whose front end is the soft-token embedding instead of a CNN over
features, so it reads ids, Gumbel-softmax probabilities or the tokenizer's quantized codes alike::

    speech (B, T) | (B, T, V) | (B, T, Dc) -> SpeechEmbedding -> Transformer encoder (non-causal)
        -> CTC head                                  (hybrid CTC/attention ASR, as WeNet/SenseVoice)
        -> attention decoder (causal, cross-attends)  -> log P(text | tokens): the DiffRO ASR reward
        -> one learned-query attention pooling per task -> speaker / emotion / quality (MOS bin) logits

Text ids are the TEXT tokenizer's own ids ``[0, text_vocab_size)``, not the LLM's. The one extra id
``text_vocab_size`` is the special of each table, as WeNet shares sos/eos: the CTC blank in the CTC
head's output, the start symbol in the decoder's input embedding and the end symbol in the decoder's
output. No table ever needs two specials, so none wastes a class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from e2e_tts.checks import FieldError, at_least, positive, within
from e2e_tts.models.layers import Attention, TransformerStack
from e2e_tts.models.masks import lengths_to_mask, prefix_lengths
from e2e_tts.models.speech_embedding import SpeechEmbedding

# the attribute tasks and the config fields of their loss weights
TASK_WEIGHTS = {"speaker": "speaker_weight", "emotion": "emotion_weight", "quality": "quality_weight"}
TASKS = tuple(TASK_WEIGHTS)
MISSING_LABEL = -1
MOS_RANGE = (1.0, 5.0)  # the scale of the manifests' quality labels (mean opinion score)


@dataclass
class RewardConfig:
    """Sizes and loss weights of the reward model; defaults are the ``tiny`` size (2.3M parameters for bytes).

    The speech codes' dimension and the speaker count are not settings: :class:`RewardModel` takes them from the
    tokenizer and the training data.

    Args:
        id_embedding: give each speech token id a free embedding vector besides its code's MLP embedding
            (e2e_tts.models.speech_embedding).
        encoder_dim, encoder_depth, encoder_heads: the speech encoder.
        decoder_dim, decoder_depth, decoder_heads: the attention decoder over text ids.
        ff_mult: feed-forward expansion of every block.
        dropout: dropout of encoder, decoder and pooling attention.
        ctc_weight: share of CTC in the recognition loss ``ctc_weight * ctc + (1 - ctc_weight) * attention``.
        label_smoothing: label smoothing of the attention and task cross-entropies (training loss only; the
            returned log-probabilities are never smoothed). It also makes the reward model less easy to hack.
        num_emotions: emotion classes (0 disables; 9 = the emotion2vec_plus label set).
        num_quality_classes: MOS bins (0 disables; DiffRO bins MOS into 5 classes).
        asr_weight, speaker_weight, emotion_weight, quality_weight: weights of the tasks in the total loss.
        max_text_length: the longest text (in text ids, without eos) accepted and decoded.
    """

    id_embedding: bool = False
    encoder_dim: int = 128
    encoder_depth: int = 6
    encoder_heads: int = 4
    decoder_dim: int = 128
    decoder_depth: int = 3
    decoder_heads: int = 4
    ff_mult: float = 4.0
    dropout: float = 0.1
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    num_emotions: int = 9
    num_quality_classes: int = 5
    asr_weight: float = 1.0
    speaker_weight: float = 1.0
    emotion_weight: float = 1.0
    quality_weight: float = 1.0
    max_text_length: int = 512

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder"):
            positive(self, f"{name}_dim")
            positive(self, f"{name}_heads")
            at_least(self, f"{name}_depth", 0)
            dim, heads = getattr(self, f"{name}_dim"), getattr(self, f"{name}_heads")
            if dim % heads or dim // heads % 2:
                raise FieldError(f"{name}_dim", f"{dim} must split into {name}_heads {heads} heads of even width "
                                                f"(rotary)")
        positive(self, "ff_mult")
        for name in ("dropout", "ctc_weight", "label_smoothing"):
            within(self, name, 0.0, 1.0)
        for classes in ("num_emotions", "num_quality_classes"):
            at_least(self, classes, 0)
        at_least(self, "max_text_length", 1)

PRESETS: dict[str, RewardConfig] = {
    "tiny": RewardConfig(),
    # ~0.6B with a small text vocabulary (each 1k text ids adds 2M parameters): a deep encoder carries the
    # capacity, as in SenseVoice, with a WeNet-like shallower decoder.
    "paper": RewardConfig(encoder_dim=1024, encoder_depth=36, encoder_heads=16, decoder_dim=1024, decoder_depth=8,
                          decoder_heads=16, max_text_length=1024),
}


@dataclass
class RewardOutput:
    """What :meth:`RewardModel.forward` returns. ``L`` is the text length, ``T`` the token length.

    Attributes:
        loss: weighted total loss (scalar).
        losses: per-task scalar losses: ``ctc``, ``attention`` and every enabled task head. A task without
            labels in the batch contributes 0 (still attached to the graph, so every rank touches the same
            parameters). CTC averages over the rows it can align (see :meth:`RewardModel.ctc_loss`).
        text_log_prob: ``(B,)`` log P(text | tokens) summed over the reference ids and eos (the ASR reward).
        token_log_probs: ``(B, L + 1)`` log-probability of each reference id then eos; 0 past each row's eos.
        cross_attention: ``(B, heads, L + 1, T)`` decoder cross-attention averaged over the decoder layers:
            row ``i`` is the attention of the step predicting reference id ``i`` (the last valid row predicts
            eos). Valid rows sum to 1 over valid frames; rows past each row's eos are 0.
        label_log_probs: task -> ``(B,)`` log-probability of the given label, 0 where the label is missing;
            only for tasks whose labels were passed (the multi-task DiffRO reward).
        task_logits: task -> ``(B, classes)`` for every enabled task head.
        encoded: ``(B, T, encoder_dim)`` the encoder's output (a caller that also wants the CTC reading reuses it:
            :meth:`RewardModel.greedy_ctc`).
    """

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    text_log_prob: torch.Tensor
    token_log_probs: torch.Tensor
    cross_attention: torch.Tensor
    label_log_probs: dict[str, torch.Tensor]
    task_logits: dict[str, torch.Tensor]
    encoded: torch.Tensor


def replace_tokens_randomly(ids: torch.Tensor, prob: float, vocab_size: int) -> torch.Tensor:
    """Replaces each id of ``ids (...)`` by a uniform random id in ``[0, vocab_size)`` with probability ``prob``."""
    if prob == 0.0:
        return ids
    replace = torch.rand(ids.shape, device=ids.device) < prob
    return torch.where(replace, torch.randint_like(ids, vocab_size), ids)


def mos_bins(values: Sequence[Optional[float]], num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The quality class ``(B,)`` of each MOS label: ``num_classes`` equal bins over :data:`MOS_RANGE` (DiffRO bins MOS
    into 5 classes: [1, 1.8) -> 0 ... [4.2, 5] -> 4), a label outside the range in its end bin, -1 where missing.

    Raises:
        ValueError: ``num_classes`` below 1.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    low, high = MOS_RANGE
    classes = [MISSING_LABEL if value is None else min(max(int((value - low) / (high - low) * num_classes), 0),
                                                       num_classes - 1) for value in values]
    return torch.tensor(classes, dtype=torch.long, device=device)


def expected_bin(logits: torch.Tensor) -> torch.Tensor:
    """The expected class of ordered bins scaled to [0, 1] (first bin 0, last 1): ``(B, classes)`` logits -> ``(B,)``;
    for the quality head, the expected MOS bin (the ``quality`` reward)."""
    probs = logits.float().softmax(-1)
    return probs @ (torch.arange(probs.shape[-1], device=probs.device) / max(probs.shape[-1] - 1, 1))


class PooledClassifier(nn.Module):
    """Attention pooling with one learned query, then a linear classifier: ``(B, T, dim) -> (B, classes)``."""

    def __init__(self, dim: int, heads: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.attention = Attention(dim, heads, context_dim=dim, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, encoded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: encoded ``(B, T, dim)``; mask ``(B, T)`` valid frames. Returns logits ``(B, classes)``."""
        query = self.query.expand(encoded.shape[0], -1, -1)
        pooled, _ = self.attention(query, context=encoded, key_mask=mask)
        return self.classifier(self.norm(pooled[:, 0]))


class RewardModel(nn.Module):
    """Recognises text, speaker, emotion and quality from speech tokens (see the module docstring).

    Args:
        config: sizes and loss weights.
        text_vocab_size: number of ids of the text tokenizer; ``text_vocab_size`` itself is the special id.
        codebook_dim: dimension ``Dc`` of one tokenizer code (FSQ: number of levels).
        codebook_size: the tokenizer's number of codes (needed by ``config.id_embedding``).
        num_speakers: speaker-classification classes, the training speakers (0 disables the head).
    """

    def __init__(self, config: RewardConfig, text_vocab_size: int, codebook_dim: int, codebook_size: int = 0,
                 num_speakers: int = 0):
        super().__init__()
        if text_vocab_size < 1:
            raise ValueError(f"text_vocab_size must be positive, got {text_vocab_size}")
        if num_speakers < 0:
            raise ValueError(f"num_speakers must be >= 0, got {num_speakers}")
        self.config, self.text_vocab_size, self.num_speakers = config, text_vocab_size, num_speakers
        if config.id_embedding and codebook_size < 1:
            raise ValueError("id_embedding needs the tokenizer's codebook size")
        self.speech_embedding = SpeechEmbedding(codebook_dim, config.encoder_dim,
                                                codebook_size if config.id_embedding else 0)
        self.encoder = TransformerStack(config.encoder_dim, config.encoder_depth, config.encoder_heads,
                                        config.ff_mult, config.dropout)
        self.ctc_head = nn.Linear(config.encoder_dim, text_vocab_size + 1)
        self.text_embedding = nn.Embedding(text_vocab_size + 1, config.decoder_dim)
        self.decoder = TransformerStack(config.decoder_dim, config.decoder_depth, config.decoder_heads,
                                        config.ff_mult, config.dropout, context_dim=config.encoder_dim)
        self.decoder_head = nn.Linear(config.decoder_dim, text_vocab_size + 1)
        num_classes = {"speaker": num_speakers, "emotion": config.num_emotions, "quality": config.num_quality_classes}
        self.task_heads = nn.ModuleDict({
            task: PooledClassifier(config.encoder_dim, config.encoder_heads, num_classes[task], config.dropout)
            for task in TASKS if num_classes[task] > 0})

    @property
    def blank_id(self) -> int:
        """CTC blank, in the CTC head's output."""
        return self.text_vocab_size

    @property
    def sos_id(self) -> int:
        """Start symbol, in the decoder's input embedding."""
        return self.text_vocab_size

    @property
    def eos_id(self) -> int:
        """End symbol, in the decoder's output."""
        return self.text_vocab_size

    def num_parameters(self) -> int:
        """Number of parameters (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    def encode(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor,
               token_noise: float = 0.0) -> torch.Tensor:
        """Encodes speech tokens.

        Args:
            speech: ids ``(B, T)``, probabilities ``(B, T, V)`` or codes ``(B, T, Dc)``.
            speech_mask: ``(B, T)`` bool, True on valid frames (a prefix of each row, at least one frame).
            codebook: the speech tokenizer's enumerated codebook ``(V, Dc)``.
            token_noise: in training mode, the probability of replacing each input id by a uniformly random id
                (a recogniser robust to wrong tokens); soft inputs are never perturbed.
        Returns:
            ``(B, T, encoder_dim)``; padded frames carry no information into valid ones.
        """
        _check_prefix_mask(speech_mask, speech.shape[:2], "speech_mask", allow_empty=False)
        if not speech.is_floating_point():
            vocab = codebook.shape[0]
            valid_ids = speech[speech_mask]
            if valid_ids.numel() and (int(valid_ids.min()) < 0 or int(valid_ids.max()) >= vocab):
                raise ValueError(f"speech ids out of range [0, {vocab}): min={int(valid_ids.min())} "
                                 f"max={int(valid_ids.max())}")
            speech = speech.masked_fill(~speech_mask, 0)  # padding may hold -1 (FSQ) or anything else
            if self.training:
                speech = replace_tokens_randomly(speech, token_noise, vocab)
        embedded = self.speech_embedding(speech, codebook).masked_fill(~speech_mask[..., None], 0.0)
        encoded, _ = self.encoder(embedded, speech_mask)
        return encoded

    def forward(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor,
                text_ids: torch.Tensor, text_mask: torch.Tensor, speaker: torch.Tensor | None = None,
                emotion: torch.Tensor | None = None, quality: torch.Tensor | None = None,
                token_noise: float = 0.0) -> RewardOutput:
        """Scores the reference text and labels given the speech tokens, and computes the training losses.

        Args:
            speech: ids ``(B, T)``, probabilities ``(B, T, V)`` or codes ``(B, T, Dc)``.
            speech_mask: ``(B, T)`` bool, True on valid frames (a prefix of each row).
            codebook: ``(V, Dc)`` enumerated codebook of the speech tokenizer.
            text_ids: ``(B, L)`` text tokenizer ids (any value on padding).
            text_mask: ``(B, L)`` bool, True on valid ids (a prefix of each row; may be empty).
            speaker, emotion, quality: ``(B,)`` class labels, -1 where missing, or None.
            token_noise: see :meth:`encode`.
        Returns:
            a :class:`RewardOutput`.
        """
        config = self.config
        if text_ids.is_floating_point() or text_ids.dim() != 2:
            raise ValueError(f"text_ids must be integer (B, L), got {text_ids.dtype} {tuple(text_ids.shape)}")
        _check_prefix_mask(text_mask, text_ids.shape, "text_mask", allow_empty=True)
        if text_ids.shape[0] != speech.shape[0]:
            raise ValueError(f"text batch {text_ids.shape[0]} != speech batch {speech.shape[0]}")
        if text_ids.shape[1] > config.max_text_length:
            raise ValueError(f"text length {text_ids.shape[1]} exceeds max_text_length {config.max_text_length}")
        valid_text = text_ids[text_mask]
        if valid_text.numel() and (int(valid_text.min()) < 0 or int(valid_text.max()) >= self.text_vocab_size):
            raise ValueError(f"text ids out of range [0, {self.text_vocab_size}): min={int(valid_text.min())} "
                             f"max={int(valid_text.max())}")
        text_ids = text_ids.long().masked_fill(~text_mask, 0)
        labels = {"speaker": speaker, "emotion": emotion, "quality": quality}

        encoded = self.encode(speech, speech_mask, codebook, token_noise)
        losses = {"ctc": self.ctc_loss(encoded, speech_mask, text_ids, text_mask)}
        token_logits, token_targets, token_mask, cross_attention = self._teacher_forced(
            encoded, speech_mask, text_ids, text_mask)
        token_log_probs = token_logits.float().log_softmax(-1).gather(-1, token_targets[..., None])[..., 0]
        token_log_probs = token_log_probs * token_mask
        losses["attention"] = F.cross_entropy(token_logits[token_mask].float(), token_targets[token_mask],
                                              label_smoothing=config.label_smoothing)
        loss = config.asr_weight * (config.ctc_weight * losses["ctc"]
                                    + (1.0 - config.ctc_weight) * losses["attention"])

        task_logits, label_log_probs = {}, {}
        for task, label in labels.items():
            if task not in self.task_heads:
                if label is not None and bool((label != MISSING_LABEL).any()):
                    raise ValueError(f"{task} labels were given but the {task} head is disabled (0 classes)")
                continue
            logits = self.task_heads[task](encoded, speech_mask).float()
            task_logits[task] = logits
            given = label is not None
            if not given:
                label = torch.full(logits.shape[:1], MISSING_LABEL, dtype=torch.long, device=logits.device)
            _check_labels(label, logits.shape, task)
            present = label != MISSING_LABEL
            safe_label = label.long().clamp(min=0)
            nll = F.cross_entropy(logits, safe_label, reduction="none", label_smoothing=config.label_smoothing)
            losses[task] = (nll * present).sum() / present.sum().clamp(min=1)
            loss = loss + getattr(config, TASK_WEIGHTS[task]) * losses[task]
            if given:
                label_log_probs[task] = logits.log_softmax(-1).gather(-1, safe_label[:, None])[:, 0] * present

        return RewardOutput(loss=loss, losses=losses, text_log_prob=token_log_probs.sum(-1),
                            token_log_probs=token_log_probs, cross_attention=cross_attention,
                            label_log_probs=label_log_probs, task_logits=task_logits, encoded=encoded)

    def ctc_loss(self, encoded: torch.Tensor, speech_mask: torch.Tensor, text_ids: torch.Tensor,
                 text_mask: torch.Tensor) -> torch.Tensor:
        """CTC loss per target id, averaged over the rows that CTC can align.

        CTC needs ``T >= L + (number of adjacent repeated ids)`` (a blank must separate repeats). Rows with
        fewer frames have infinite loss: they are left out of the mean (and ``zero_infinity`` keeps their
        gradient finite), so one short utterance cannot poison the batch; the attention loss still trains on
        them. A batch with no alignable row gives 0.

        Args:
            encoded: ``(B, T, encoder_dim)``; speech_mask ``(B, T)``; text_ids ``(B, L)`` (valid on padding);
            text_mask ``(B, L)``.
        Returns:
            scalar loss.
        """
        log_probs = self.ctc_head(encoded).float().log_softmax(-1)
        frames, lengths = speech_mask.sum(1), text_mask.sum(1)
        per_row = F.ctc_loss(log_probs.transpose(0, 1), text_ids, frames, lengths, blank=self.blank_id,
                             reduction="none", zero_infinity=True)
        repeats = ((text_ids[:, 1:] == text_ids[:, :-1]) & text_mask[:, 1:]).sum(1)
        alignable = frames >= lengths + repeats
        per_id = per_row / lengths.clamp(min=1)
        return (per_id * alignable).sum() / alignable.sum().clamp(min=1)

    def _decode(self, decoder_input: torch.Tensor, decoder_mask: torch.Tensor | None, encoded: torch.Tensor,
                speech_mask: torch.Tensor, return_weights: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decoder logits ``(B, S, text_vocab_size + 1)`` for inputs ``(B, S)`` (sos first), and the per-layer
        cross-attention weights ``(B, heads, S, T)`` when asked."""
        hidden, weights = self.decoder(self.text_embedding(decoder_input), decoder_mask, context=encoded,
                                       context_mask=speech_mask, causal=True, return_weights=return_weights)
        return self.decoder_head(hidden), weights

    def _teacher_forced(self, encoded: torch.Tensor, speech_mask: torch.Tensor, text_ids: torch.Tensor,
                        text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the decoder on ``sos + text``; returns logits ``(B, L+1, V+1)``, targets ``text + eos``
        ``(B, L+1)``, their mask ``(B, L+1)`` and the layer-averaged cross-attention ``(B, heads, L+1, T)``."""
        batch, length = text_ids.shape
        lengths = text_mask.sum(1)
        sos = torch.full((batch, 1), self.sos_id, dtype=text_ids.dtype, device=text_ids.device)
        decoder_input = torch.cat([sos, text_ids], dim=1)
        targets = torch.cat([text_ids, torch.zeros_like(sos)], dim=1).scatter(1, lengths[:, None], self.eos_id)
        target_mask = lengths_to_mask(lengths + 1, length + 1)  # the reference ids and eos
        logits, weights = self._decode(decoder_input, target_mask, encoded, speech_mask, return_weights=True)
        cross_attention = torch.stack(weights).mean(0) * target_mask[:, None, :, None]
        return logits, targets, target_mask, cross_attention

    @torch.no_grad()
    def transcribe_ctc(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor
                       ) -> list[list[int]]:
        """Greedy CTC decoding: best class per valid frame, repeats collapsed, blanks dropped.

        Args: as :meth:`encode`. Returns: one list of text ids per row.
        """
        return self.greedy_ctc(self.encode(speech, speech_mask, codebook), speech_mask)

    def greedy_ctc(self, encoded: torch.Tensor, speech_mask: torch.Tensor) -> list[list[int]]:
        """:meth:`transcribe_ctc` of already encoded speech ``(B, T, encoder_dim)`` with mask ``(B, T)``."""
        best = self.ctc_head(encoded).argmax(-1)
        transcripts = []
        for row, frames in zip(best.tolist(), speech_mask.sum(1).tolist()):
            row = row[:frames]
            transcripts.append([i for k, i in enumerate(row) if i != self.blank_id and (k == 0 or i != row[k - 1])])
        return transcripts

    @torch.no_grad()
    def transcribe_attention(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor,
                             max_len: int | None = None) -> list[list[int]]:
        """Greedy autoregressive decoding with the attention decoder, until eos or ``max_len`` ids.

        Args: as :meth:`encode`; max_len defaults to ``config.max_text_length``.
        Returns: one list of text ids per row (eos excluded).
        """
        max_len = self.config.max_text_length if max_len is None else max_len
        encoded = self.encode(speech, speech_mask, codebook)
        batch = encoded.shape[0]
        tokens = torch.full((batch, 1), self.sos_id, dtype=torch.long, device=encoded.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=encoded.device)
        for _ in range(max_len + 1):  # max_len ids, then one step that may only say eos
            logits, _ = self._decode(tokens, None, encoded, speech_mask)
            next_ids = logits[:, -1].argmax(-1).masked_fill(finished, self.eos_id)
            finished |= next_ids == self.eos_id
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
            if bool(finished.all()):
                break
        transcripts = []
        for row in tokens[:, 1:].tolist():
            end = row.index(self.eos_id) if self.eos_id in row else len(row)
            transcripts.append(row[:min(end, max_len)])
        return transcripts


def _check_prefix_mask(mask: torch.Tensor, shape: torch.Size, name: str, allow_empty: bool) -> None:
    """Raises unless ``mask`` is a bool ``shape`` tensor whose True values form a prefix of each row."""
    lengths = prefix_lengths(mask, name)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if not allow_empty and bool((lengths == 0).any()):
        raise ValueError(f"{name} has a row with no valid frame")


def _check_labels(label: torch.Tensor, logits_shape: torch.Size, task: str) -> None:
    """Raises unless ``label`` is ``(B,)`` integer in ``[-1, classes)``."""
    batch, classes = logits_shape
    if label.is_floating_point() or tuple(label.shape) != (batch,):
        raise ValueError(f"{task} labels must be integer ({batch},), got {label.dtype} {tuple(label.shape)}")
    if label.numel() and (int(label.min()) < MISSING_LABEL or int(label.max()) >= classes):
        raise ValueError(f"{task} labels out of range [-1, {classes}): min={int(label.min())} max={int(label.max())}")
