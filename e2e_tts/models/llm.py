"""The autoregressive LLM over speech tokens: a transformers Qwen2/Qwen3 decoder with soft speech inputs.

One row is ``SOS text... TASK speech... EOS`` in the :class:`~e2e_tts.vocab.TokenLayout` id space
(CosyVoice 2's ``Qwen2LM`` layout). Text positions use the decoder's own input embedding; speech positions
use a :class:`~e2e_tts.models.speech_embedding.SpeechEmbedding` of the tokenizer's codebook, so speech may
arrive as ids, probabilities (the Gumbel-softmax path) or quantized codes (the joint stage, where the
next-token loss reaches the tokenizer).

The model only ever predicts speech: the output head is restricted to the rows of the ``V`` speech ids plus
EOS, so logits live on a ``V + 1`` space where index ``V`` is EOS. Generation and the Gumbel relaxation
both work there, which also makes every non-speech id impossible to emit by construction.

A decoder-only model learns to continue speech long before it learns to follow the text; until its attention
runs monotonically along the text, its tokens for a new sentence are speech, but other words. On a short
budget an optional *guided attention* loss (Tachibana et al., DC-TTS) shortens that: a few heads of some layers
are pulled towards the diagonal band of the text (:func:`diagonal_guide_loss`, set by :class:`GuideConfig`, which
the training objective passes to :meth:`SpeechLLM.forward`). It acts in training only; generation is unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from e2e_tts.checks import FieldError, at_least, one_of, positive
from e2e_tts.models.layers import gathered_collectively
from e2e_tts.models.masks import lengths_to_mask, pad_rows, prefix_lengths
from e2e_tts.models.sampling import sample_next_token
from e2e_tts.models.speech_embedding import SpeechEmbedding
from e2e_tts.vocab import EOS_ID, PAD_ID, SOS_ID, TASK_ID, TokenLayout

IGNORE_INDEX = -100  # target of padded positions (F.cross_entropy's default ignore_index)
ARCHITECTURES = ("qwen2", "qwen3")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # transformers' fused kernels, or the plain softmax that returns weights
_QWEN3_AVAILABLE = hasattr(transformers, "Qwen3ForCausalLM")  # added in transformers 4.51


@dataclass
class LLMConfig:
    """Decoder shape and settings (defaults = the ``tiny`` size, ~4 M parameters with a small text vocabulary).

    Attributes:
        architecture: ``"qwen2"`` or ``"qwen3"`` (transformers model family).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: decoder shape.
        head_dim: attention head width (None = ``hidden_size // num_heads``); Qwen3-0.6B uses 128.
        id_embedding: give each speech token id a free embedding vector besides its code's MLP embedding
            (e2e_tts.models.speech_embedding).
        attn_implementation: transformers' attention path, ``"sdpa"`` (fused kernels) or ``"eager"`` (the plain
            softmax, which returns the attention weights; a training objective that guides attention switches to
            it). The two agree to float rounding, not bit for bit.
        attention_dropout: dropout on attention weights.
        rope_theta: rotary base.
        max_position_embeddings: longest ``SOS text TASK speech`` row the model is meant for.
        rms_norm_eps: RMSNorm epsilon.
        tie_word_embeddings: share input embedding and output head (Qwen3-0.6B does).
        initializer_range: std of fresh weights (also the rows added to a pretrained checkpoint).
        pretrained_path: local Hugging Face checkpoint directory to start from (never downloaded). When set,
            the checkpoint defines the shape and the shape fields above are not used.

    The speech codes' dimension is the tokenizer's (:class:`SpeechLLM` takes it), and what training does to the
    model (guided attention, input noise, prompt pairs) is the stage's (:class:`e2e_tts.stage.MultiTaskConfig`).
    """

    architecture: str = "qwen2"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 768
    head_dim: Optional[int] = None
    id_embedding: bool = False
    attn_implementation: str = "sdpa"
    attention_dropout: float = 0.0
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    pretrained_path: Optional[str] = None

    def __post_init__(self) -> None:
        one_of(self, "architecture", ARCHITECTURES)
        one_of(self, "attn_implementation", ATTENTION_IMPLEMENTATIONS)
        for name in ("hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "max_position_embeddings"):
            positive(self, name)
        at_least(self, "num_layers", 0)
        if self.head_dim is not None:
            positive(self, "head_dim")
        if self.num_heads % self.num_kv_heads:
            raise FieldError("num_heads", f"{self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise FieldError("hidden_size", f"{self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                                            f"set head_dim")


PRESETS: dict[str, LLMConfig] = {
    "tiny": LLMConfig(),
    # Qwen3-0.6B's shape. With Qwen3's 151,936-row text vocabulary plus 6,561 speech codes and tied embeddings
    # this is ~0.60 B parameters (0.44 B without the embedding). Older transformers without Qwen3 get the same
    # shape as Qwen2 (which honours head_dim).
    "paper": LLMConfig(architecture="qwen3" if _QWEN3_AVAILABLE else "qwen2", hidden_size=1024, num_layers=28,
                       num_heads=16, num_kv_heads=8, intermediate_size=3072, head_dim=128,
                       rope_theta=1_000_000.0, max_position_embeddings=40960, tie_word_embeddings=True),
}


@dataclass
class GuideConfig:
    """Guided attention: a loss that pulls some of the LLM's heads towards the text's diagonal band in training
    (:func:`diagonal_guide_loss`; DC-TTS).

    Attributes:
        weight: weight of the loss (0 = none).
        layers: decoder layers whose first ``heads`` heads are guided.
        heads: guided heads per guided layer.
        sigma: width of the diagonal band, in fractions of the text and speech lengths (DC-TTS: 0.2).
    """

    weight: float = 0.0
    layers: list[int] = field(default_factory=list)
    heads: int = 2
    sigma: float = 0.2

    def __post_init__(self) -> None:
        at_least(self, "weight", 0)
        positive(self, "sigma")
        if self.weight > 0 and (not self.layers or self.heads < 1):
            raise FieldError("weight", "> 0 needs layers and heads >= 1")


@dataclass
class LLMOutput(transformers.utils.ModelOutput):
    """What :meth:`SpeechLLM.forward` returns, on the prediction positions ``0 .. S``.

    A ``ModelOutput`` (a dict underneath) so that DeepSpeed ZeRO-3 finds the tensors and fires the LLM's
    backward hooks; a plain dataclass hides them and the output head's weight stays partitioned.

    Attributes:
        logits: ``(B, S + 1, V + 1)``; position ``s < S_b`` predicts speech token ``s``, position ``S_b``
            predicts EOS (index ``V``). Positions past ``S_b`` hold meaningless values (see ``mask``).
        mask: ``(B, S + 1)`` True on the ``S_b + 1`` valid positions of each row.
        targets: ``(B, S + 1)`` speech ids, then ``V`` (EOS), then ``IGNORE_INDEX``; None when the speech
            input was soft and no ids were given.
        hidden: ``(B, S + 1, H)`` final hidden states that produced the logits.
        guide_loss: scalar guided-attention loss (unweighted), in training when the caller passed a guide of
            positive weight; else None.
        attentions: per decoder layer the softmax weights ``(B, heads, N, N)`` over the packed rows
            (``SOS text TASK speech``), when asked for with ``return_attentions``; else None.
    """

    logits: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    hidden: Optional[torch.Tensor] = None
    guide_loss: Optional[torch.Tensor] = None
    attentions: Optional[tuple[torch.Tensor, ...]] = None


def diagonal_guide_loss(attention: torch.Tensor, text_lengths: torch.Tensor, speech_lengths: torch.Tensor,
                        sigma: float) -> torch.Tensor:
    """Share of attention outside the text's diagonal band, averaged over heads and prediction positions.

    Rows are ``SOS text TASK speech``; the position predicting speech step ``s`` (``s = 0 .. S_b``, the last one
    predicts EOS) should attend to text position ``j`` (``1 .. L_b``) near ``(j - 0.5) / L_b = s / S_b``. Its
    band weight is ``exp(-(that difference)^2 / (2 sigma^2))`` on text keys and 0 elsewhere (speech history,
    specials), and the loss is ``1 - sum_j attention * band`` (DC-TTS's guided attention, as a mass).

    Args:
        attention: ``(B, H, N, N)`` softmax weights of the guided heads over one packed batch.
        text_lengths, speech_lengths: ``(B,)``.
        sigma: band width in fractions of the lengths.
    Returns:
        a scalar in [0, 1].
    """
    batch, heads, length, _ = attention.shape
    steps = torch.arange(int(speech_lengths.max()) + 1, device=attention.device)
    source = (text_lengths[:, None] + 1 + steps[None, :]).clamp(max=length - 1)  # (B, S + 1)
    rows = attention.gather(2, source[:, None, :, None].expand(batch, heads, -1, length))  # (B, H, S + 1, N)
    keys = torch.arange(length, device=attention.device)
    text_position = (keys[None, :] - 0.5) / text_lengths[:, None]  # (B, N)
    is_text = (keys[None, :] >= 1) & (keys[None, :] <= text_lengths[:, None])
    progress = steps[None, :] / speech_lengths[:, None].clamp(min=1)  # (B, S + 1)
    band = torch.exp(-(text_position[:, None, :] - progress[:, :, None]) ** 2 / (2 * sigma ** 2))
    band = band * is_text[:, None, :]  # (B, S + 1, N)
    outside = 1.0 - (rows.float() * band[:, None]).sum(-1)  # (B, H, S + 1)
    valid = (steps[None, :] <= speech_lengths[:, None]).float()  # (B, S + 1)
    return (outside * valid[:, None]).sum() / (valid.sum() * heads)


def _hf_classes(architecture: str) -> tuple[type, type]:
    if architecture == "qwen3":
        if not _QWEN3_AVAILABLE:
            raise ImportError(f"architecture 'qwen3' needs transformers >= 4.51, installed: {transformers.__version__}")
        return transformers.Qwen3Config, transformers.Qwen3ForCausalLM
    return transformers.Qwen2Config, transformers.Qwen2ForCausalLM


def _build_decoder(config: LLMConfig, vocab_size: int) -> nn.Module:
    config_class, model_class = _hf_classes(config.architecture)
    shape = dict(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                 num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                 intermediate_size=config.intermediate_size)
    if config.head_dim is not None:
        shape["head_dim"] = config.head_dim
    hf_config = config_class(vocab_size=vocab_size, max_position_embeddings=config.max_position_embeddings,
                             rms_norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
                             attention_dropout=config.attention_dropout,
                             tie_word_embeddings=config.tie_word_embeddings,
                             initializer_range=config.initializer_range, use_cache=False,
                             pad_token_id=PAD_ID, bos_token_id=SOS_ID, eos_token_id=EOS_ID, **shape)
    return model_class(hf_config)


def _decoder_from_config(config: LLMConfig, layout: TokenLayout, decoder_config: dict[str, Any]) -> nn.Module:
    """A fresh decoder in the shape a recorded transformers config describes (see :class:`SpeechLLM`)."""
    config_class, model_class = _hf_classes(config.architecture)
    hf_config = config_class.from_dict(decoder_config)
    if hf_config.model_type != config.architecture or hf_config.vocab_size != layout.vocab_size:
        raise ValueError(f"the recorded decoder is a {hf_config.model_type!r} model of {hf_config.vocab_size} ids; "
                         f"LLMConfig.architecture is {config.architecture!r} and the token layout has "
                         f"{layout.vocab_size} ids")
    return model_class(hf_config).to(torch.float32)


# Official checkpoints pad their embedding past the tokenizer's ids to a hardware-friendly row count: Qwen2.5's and
# Qwen3's 151,936 rows hold 151,665 and 151,669 ids. More unused rows than this means another tokenizer.
MAX_PADDING_ROWS = 1024


def _load_decoder(config: LLMConfig, layout: TokenLayout) -> nn.Module:
    """Loads a local checkpoint and moves its text rows to ``layout.text_offset + i``.

    The checkpoint's rows past the text vocabulary (its padding, at most ``MAX_PADDING_ROWS``) are dropped; the
    special and speech rows of the input embedding and output head are freshly initialised.
    """
    path = config.pretrained_path
    hf_config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if hf_config.model_type != config.architecture:
        raise ValueError(f"checkpoint {path} is a {hf_config.model_type!r} model, LLMConfig.architecture is "
                         f"{config.architecture!r}")
    text_rows = layout.text_vocab_size
    if not 0 <= hf_config.vocab_size - text_rows <= MAX_PADDING_ROWS:
        raise ValueError(f"checkpoint {path} has vocab_size {hf_config.vocab_size}, the token layout's text "
                         f"vocabulary has {text_rows}: they must be the same tokenizer (the checkpoint may pad its "
                         f"rows by at most {MAX_PADDING_ROWS})")
    _, model_class = _hf_classes(config.architecture)
    # One dtype for the whole SpeechLLM; the engine casts to bf16 where it trains in bf16.
    decoder = model_class.from_pretrained(path, local_files_only=True).to(torch.float32)
    old_rows = [decoder.get_input_embeddings().weight[:text_rows].detach().clone()]
    tied = decoder.get_output_embeddings().weight is decoder.get_input_embeddings().weight
    if not tied:
        old_rows.append(decoder.get_output_embeddings().weight[:text_rows].detach().clone())
    decoder.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    new_weights = [decoder.get_input_embeddings().weight]
    if not tied:
        new_weights.append(decoder.get_output_embeddings().weight)
    with torch.no_grad():
        for weight, old in zip(new_weights, old_rows):
            weight.normal_(0.0, decoder.config.initializer_range)
            weight[layout.text_offset:layout.speech_offset] = old
    for name, value in (("pad_token_id", PAD_ID), ("bos_token_id", SOS_ID), ("eos_token_id", EOS_ID)):
        setattr(decoder.config, name, value)
    decoder.config.use_cache = False
    return decoder


# Recent transformers 5 releases renamed the KV cache's argument and output field from past_key_values to cache
# (the old name warns, and goes in 5.40); 4.x knows only the old one.
_CACHE_NAME = "cache" if "cache" in inspect.signature(transformers.Qwen2Model.forward).parameters else "past_key_values"


# Speech tokens per text id that generate() allows by default: EOS is masked below the first, a row stops without EOS
# at the second. Synthesis and GRPO's rollouts use the same bounds.
MIN_LEN_RATIO, MAX_LEN_RATIO = 0.5, 6.0


def new_token_limits(text_length: int, min_len_ratio: float, max_len_ratio: float) -> tuple[int, int]:
    """The fewest new speech tokens before EOS is allowed and the most :meth:`SpeechLLM.generate` emits for a
    text of ``text_length`` ids; a row stopped at the second did so without EOS. A positive ``min_len_ratio``
    asks for at least one token even of a one-id text (an empty utterance is never wanted)."""
    most = int(text_length * max_len_ratio)
    fewest = max(int(text_length * min_len_ratio), 1 if min_len_ratio > 0 else 0)
    return min(fewest, most), most


def _across_ranks(value: int, op: torch.distributed.ReduceOp, device: torch.device) -> int:
    """``value`` reduced by ``op`` over all ranks (each rank passes its own)."""
    tensor = torch.tensor([value], device=device)
    torch.distributed.all_reduce(tensor, op=op)
    return int(tensor.item())


class SpeechLLM(nn.Module):
    """Text-to-speech-token language model.

    Args:
        config: decoder shape and settings.
        layout: the token-id contract (text and speech vocabulary sizes, specials).
        codebook_dim: dimension ``Dc`` of one speech-tokenizer code (FSQ: number of levels).
        decoder_config: the transformers config (``to_dict()``) of a decoder whose weights are loaded afterwards,
            as an export records it (:meth:`e2e_tts.system.TTSSystem.export`): the decoder is built in that shape,
            freshly initialised, and ``config.pretrained_path`` is not read (the export holds every weight, and the
            checkpoint it started from need not exist where it is loaded).
    """

    def __init__(self, config: LLMConfig, layout: TokenLayout, codebook_dim: int,
                 decoder_config: Optional[dict[str, Any]] = None):
        super().__init__()
        self.config, self.layout = config, layout
        if decoder_config is not None:
            self.decoder = _decoder_from_config(config, layout, decoder_config)
        elif config.pretrained_path is None:
            self.decoder = _build_decoder(config, layout.vocab_size)
        else:
            self.decoder = _load_decoder(config, layout)
        self.hidden_size = self.decoder.config.hidden_size
        self.speech_embedding = SpeechEmbedding(codebook_dim, self.hidden_size,
                                                layout.speech_vocab_size if config.id_embedding else 0)
        self.decoder.set_attn_implementation(config.attn_implementation)

    def enable_guide(self, guide: GuideConfig) -> None:
        """Prepares training with ``guide``: refuses layers or heads this decoder has not, and switches attention
        to the eager path (the fused kernels return no attention weights for the loss to read)."""
        shape = self.decoder.config
        bad = [k for k in guide.layers if not 0 <= k < shape.num_hidden_layers]
        if bad or guide.heads > shape.num_attention_heads:
            raise ValueError(f"guided layers {list(guide.layers)} / heads {guide.heads} outside a decoder of "
                             f"{shape.num_hidden_layers} layers and {shape.num_attention_heads} heads")
        self.decoder.set_attn_implementation("eager")

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def speech_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Projects hidden states ``(..., H)`` onto the ``V`` speech ids and EOS: ``(..., V + 1)``.

        Uses the rows of the decoder's output head, so the model stays a plain Hugging Face causal LM.
        Under ZeRO-3 the head weight is used outside its own module: register it with
        ``deepspeed.zero.register_external_parameter``.
        """
        head = self.decoder.get_output_embeddings()
        rows = torch.cat([head.weight[self.layout.speech_offset:], head.weight[EOS_ID:EOS_ID + 1]])
        bias = None if head.bias is None else torch.cat([head.bias[self.layout.speech_offset:],
                                                         head.bias[EOS_ID:EOS_ID + 1]])
        return F.linear(hidden, rows, bias)

    def _check_codebook(self, codebook: torch.Tensor) -> None:
        if codebook.dim() != 2 or codebook.shape[0] != self.layout.speech_vocab_size:
            raise ValueError(f"codebook must be ({self.layout.speech_vocab_size}, Dc) for the layout's speech "
                             f"vocabulary, got {tuple(codebook.shape)}")

    def _pack(self, text_ids: torch.Tensor, text_lengths: torch.Tensor, speech: torch.Tensor,
              speech_lengths: torch.Tensor, codebook: torch.Tensor, input_noise: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds and packs each row as ``SOS text TASK speech``, right-padded.

        Args:
            text_ids: text-tokenizer ids ``(B, L)``, already zero at padding.
            text_lengths: ``(B,)``.
            speech: speech ids ``(B, S)`` (zero at padding), probabilities ``(B, S, V)`` or codes ``(B, S, Dc)``.
            speech_lengths: ``(B,)``.
            codebook: ``(V, Dc)``.
            input_noise: the fraction of the speech positions that get a random code's embedding.
        Returns:
            input embeddings ``(B, N, H)`` (zero at padding) and their boolean mask ``(B, N)``.
        """
        batch, text_len = text_ids.shape
        device = text_ids.device
        rows = torch.arange(batch, device=device)[:, None]
        prefix_ids = torch.full((batch, text_len + 2), PAD_ID, dtype=torch.long, device=device)
        prefix_ids[:, 0] = SOS_ID
        text_mask = lengths_to_mask(text_lengths, text_len)
        prefix_ids[:, 1:-1] = torch.where(text_mask, self.layout.text_to_llm(text_ids), PAD_ID)
        prefix_ids[rows[:, 0], text_lengths + 1] = TASK_ID
        prefix = self.decoder.get_input_embeddings()(prefix_ids)  # (B, L + 2, H)
        speech_embeds = self.speech_embedding(speech, codebook)  # (B, S, H)
        if input_noise > 0:
            replace = torch.rand(speech_embeds.shape[:2], device=device) < input_noise
            random_ids = torch.randint(codebook.shape[0], speech_embeds.shape[:2], device=device)
            speech_embeds = torch.where(replace[..., None], self.speech_embedding(random_ids, codebook),
                                        speech_embeds)

        prefix_lengths = text_lengths + 2
        total = int((prefix_lengths + speech_lengths).max())
        positions = torch.arange(total, device=device)[None, :]
        in_prefix = positions < prefix_lengths[:, None]
        speech_index = positions - prefix_lengths[:, None]
        in_speech = (speech_index >= 0) & (speech_index < speech_lengths[:, None])
        embeds = torch.where(in_prefix[..., None], prefix[rows, positions.clamp(max=text_len + 1)], 0.0)
        if speech_embeds.shape[1] > 0:
            gathered = speech_embeds[rows, speech_index.clamp(0, speech_embeds.shape[1] - 1)]
            embeds = torch.where(in_speech[..., None], gathered, embeds)
        return embeds, in_prefix | in_speech

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor, speech: torch.Tensor,
                speech_mask: torch.Tensor, codebook: torch.Tensor,
                speech_ids: Optional[torch.Tensor] = None, guide: Optional[GuideConfig] = None,
                input_noise: float = 0.0, return_attentions: bool = False) -> LLMOutput:
        """Teacher-forced next-token logits over ``[V speech codes, EOS]``.

        Args:
            text_ids: text-tokenizer ids ``(B, L)`` (not yet offset into the LLM vocabulary).
            text_mask: ``(B, L)`` bool, right-padded.
            speech: ids ``(B, S)``, probabilities ``(B, S, V)`` or quantized codes ``(B, S, Dc)``.
            speech_mask: ``(B, S)`` bool, right-padded.
            codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
            speech_ids: ``(B, S)`` target ids when ``speech`` is soft (defaults to ``speech`` when it is ids).
            guide: in training, compute the guided-attention loss of these heads (when its weight is positive;
                :meth:`enable_guide` first). An objective that does not train the alignment passes none and saves
                keeping every layer's attention.
            input_noise: in training, the fraction of the speech inputs replaced by random codes (targets
                unchanged): the model learns to continue after a wrong token, as it must when it samples its own.
                Only maximum-likelihood training asks for it: an objective that scores given sequences (GRPO) must
                not.
            return_attentions: also return every layer's attention weights (needs the eager attention path).
        Returns:
            :class:`LLMOutput` with logits ``(B, S + 1, V + 1)``.
        """
        self._check_codebook(codebook)
        if text_ids.shape != text_mask.shape or speech.shape[:2] != speech_mask.shape:
            raise ValueError(f"mask shapes must match their inputs: text {tuple(text_ids.shape)} vs "
                             f"{tuple(text_mask.shape)}, speech {tuple(speech.shape)} vs {tuple(speech_mask.shape)}")
        if text_ids.shape[0] != speech.shape[0]:
            raise ValueError(f"text batch {text_ids.shape[0]} != speech batch {speech.shape[0]}")
        text_lengths = prefix_lengths(text_mask, "text_mask")
        speech_lengths = prefix_lengths(speech_mask, "speech_mask")
        text_ids = text_ids.masked_fill(~text_mask, 0)
        if speech.is_floating_point():
            # Zeroed so that garbage (even NaN) in padded soft rows cannot reach the embedding's gradient.
            speech = speech.masked_fill(~speech_mask[..., None], 0.0)
        else:
            speech = speech.masked_fill(~speech_mask, 0)
            speech_ids = speech
        if speech_ids is not None:
            speech_ids = speech_ids.masked_fill(~speech_mask, 0)
            self.layout.speech_to_llm(speech_ids)  # validates the id range

        guided = guide is not None and guide.weight > 0 and self.training
        if (return_attentions or guided) and self.decoder.config._attn_implementation != "eager":
            raise ValueError("attention weights need the eager attention path (the fused kernels return none): "
                             "call enable_guide or decoder.set_attn_implementation('eager') first")
        embeds, attention_mask = self._pack(text_ids, text_lengths, speech, speech_lengths, codebook,
                                            input_noise if self.training else 0.0)
        positions = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
        decoded = self.decoder.model(inputs_embeds=embeds, attention_mask=attention_mask.long(),
                                     position_ids=positions, use_cache=False,
                                     output_attentions=guided or return_attentions)
        hidden = decoded.last_hidden_state
        guide_loss = None
        if guided:
            guide_loss = torch.stack([
                diagonal_guide_loss(decoded.attentions[k][:, :guide.heads], text_lengths, speech_lengths, guide.sigma)
                for k in guide.layers]).mean()

        # The hidden state at TASK predicts speech token 0; the one at speech token s predicts token s + 1.
        num_steps = speech.shape[1] + 1
        steps = torch.arange(num_steps, device=embeds.device)[None, :]
        rows = torch.arange(embeds.shape[0], device=embeds.device)[:, None]
        source = (text_lengths[:, None] + 1 + steps).clamp(max=embeds.shape[1] - 1)
        prediction_hidden = hidden[rows, source]
        mask = steps <= speech_lengths[:, None]

        targets = None
        if speech_ids is not None:
            targets = F.pad(speech_ids, (0, 1), value=IGNORE_INDEX).masked_fill(steps > speech_lengths[:, None],
                                                                                IGNORE_INDEX)
            targets[rows[:, 0], speech_lengths] = self.layout.speech_vocab_size
        return LLMOutput(logits=self.speech_logits(prediction_hidden), mask=mask, targets=targets,
                         hidden=prediction_hidden, guide_loss=guide_loss,
                         attentions=decoded.attentions if return_attentions else None)

    def forward_after_prompts(self, prompt_text_ids: Sequence[torch.Tensor], text_ids: Sequence[torch.Tensor],
                              prompt_speech_ids: Sequence[torch.Tensor], speech_ids: Sequence[torch.Tensor],
                              codebook: torch.Tensor, **kwargs) -> tuple[LLMOutput, torch.Tensor]:
        """Teacher-forced logits of rows laid out as zero-shot synthesis lays them out:
        ``SOS prompt_text text TASK prompt_speech speech``.

        Args:
            prompt_text_ids, text_ids, prompt_speech_ids, speech_ids: B 1-D id tensors each (prompts may be empty).
            codebook: ``(V, Dc)``.
            kwargs: passed to :meth:`forward` (``guide``, ``input_noise``).
        Returns:
            the :class:`LLMOutput` of the right-padded rows, and the prompts' speech lengths ``P`` ``(B,)``:
            position ``P[b] + s`` predicts ``speech_ids[b][s]``, position ``P[b] + len(speech_ids[b])`` its EOS.
        """
        device = codebook.device
        text, text_mask = pad_rows([torch.cat([p.to(device), t.to(device)])
                                    for p, t in zip(prompt_text_ids, text_ids)], device)
        speech, speech_mask = pad_rows([torch.cat([p.to(device), s.to(device)])
                                        for p, s in zip(prompt_speech_ids, speech_ids)], device)
        out = self(text, text_mask, speech, speech_mask, codebook, **kwargs)
        return out, torch.tensor([len(p) for p in prompt_speech_ids], device=device)

    @staticmethod
    def loss(output: LLMOutput) -> torch.Tensor:
        """Next-token cross-entropy averaged over the valid targets (speech tokens and EOS)."""
        if output.targets is None:
            raise ValueError("no targets: pass speech_ids to forward when the speech input is soft")
        return F.cross_entropy(output.logits.flatten(0, 1).float(), output.targets.flatten(),
                               ignore_index=IGNORE_INDEX)

    @staticmethod
    def accuracy(output: LLMOutput) -> torch.Tensor:
        """Fraction of valid targets whose argmax prediction is right."""
        if output.targets is None:
            raise ValueError("no targets: pass speech_ids to forward when the speech input is soft")
        valid = output.targets != IGNORE_INDEX
        return (output.logits.argmax(dim=-1) == output.targets)[valid].float().mean()

    @torch.no_grad()
    def generate(self, text_ids: Sequence[torch.Tensor], codebook: torch.Tensor,
                 prompt_text_ids: Optional[Sequence[torch.Tensor]] = None,
                 prompt_speech_ids: Optional[Sequence[torch.Tensor]] = None, *, temperature: float = 1.0,
                 top_k: int = 25, top_p: float = 0.8, repetition_aware: bool = True,
                 min_len_ratio: float = MIN_LEN_RATIO, max_len_ratio: float = MAX_LEN_RATIO,
                 generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        """Samples speech ids for a batch of texts, with a KV cache.

        Rows are left-padded into one batch. With a zero-shot prompt, the row is
        ``SOS prompt_text text TASK prompt_speech`` and only the tokens after the prompt speech are returned.
        EOS is masked until a row has ``min_len_ratio * len(text)`` new tokens; a row stops without EOS at
        ``max_len_ratio * len(text)``. The prompt's text does not count. Call ``eval()`` first to disable dropout.

        Defaults of the length ratios suit our character-level front-ends (phonemes, chars, bytes) at 25 Hz
        tokens: read speech runs at ~12-15 symbols/s, i.e. ~1.7-2 speech tokens per text token; 0.5 and 6.0
        leave the same ~3x margin on each side as CosyVoice's 2 and 20 do for BPE text (~6 tokens each).

        Args:
            text_ids: B text-tokenizer id rows, each ``(L_b,)``.
            codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
            prompt_text_ids: B rows ``(P_b,)`` of the prompt's transcript, or None.
            prompt_speech_ids: B rows ``(Q_b,)`` of the prompt's speech ids, or None.
            temperature: 0 = greedy, otherwise divides the logits.
            top_k, top_p, repetition_aware: see :func:`e2e_tts.models.sampling.sample_next_token`.
            min_len_ratio, max_len_ratio: speech tokens per text token (see above).
            generator: random source for sampling.
        Returns:
            B speech-id tensors ``(T_b,)`` (EOS not included).
        """
        self._check_codebook(codebook)
        batch = len(text_ids)
        if batch == 0:
            return []
        if not 0 <= min_len_ratio <= max_len_ratio:
            raise ValueError(f"need 0 <= min_len_ratio <= max_len_ratio, got {min_len_ratio} and {max_len_ratio}")
        for name, rows in (("prompt_text_ids", prompt_text_ids), ("prompt_speech_ids", prompt_speech_ids)):
            if rows is not None and len(rows) != batch:
                raise ValueError(f"{name} has {len(rows)} rows for {batch} texts")
        device = codebook.device
        empty = torch.zeros(0, dtype=torch.long)
        prompt_text_ids = [empty] * batch if prompt_text_ids is None else prompt_text_ids
        prompt_speech_ids = [empty] * batch if prompt_speech_ids is None else prompt_speech_ids
        full_text, text_mask = pad_rows([torch.cat([p.cpu(), t.cpu()]) for p, t in zip(prompt_text_ids, text_ids)],
                                         device)
        prompt_speech, speech_mask = pad_rows(prompt_speech_ids, device)
        self.layout.speech_to_llm(prompt_speech)  # validates the id range
        embeds, valid = self._pack(full_text, text_mask.sum(1), prompt_speech, speech_mask.sum(1), codebook)

        # Right padding -> left padding, so that every row's next token goes in the same (last) column.
        lengths = valid.sum(dim=1)
        total = embeds.shape[1]
        columns = torch.arange(total, device=device)[None, :]
        shift = (total - lengths)[:, None]
        valid = columns >= shift
        rows = torch.arange(batch, device=device)[:, None]
        embeds = torch.where(valid[..., None], embeds[rows, (columns - shift).clamp(min=0)], 0.0)
        attention_mask = valid.long()
        out = self.decoder.model(inputs_embeds=embeds, attention_mask=attention_mask,
                                 position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        cache, hidden = getattr(out, _CACHE_NAME), out.last_hidden_state[:, -1]
        next_position = lengths

        limits = [new_token_limits(len(t), min_len_ratio, max_len_ratio) for t in text_ids]
        min_len = torch.tensor([low for low, _ in limits], device=device)
        max_len = torch.tensor([high for _, high in limits], device=device)
        eos = self.layout.speech_vocab_size
        tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)
        out_lengths = torch.zeros(batch, dtype=torch.long, device=device)
        done = max_len == 0
        steps = int(max_len.max())
        # Under ZeRO-3 every forward gathers the weights from all ranks: each rank runs as many steps as the
        # longest of them (its finished rows run on, unread), as transformers' generate(synced_gpus=True) does.
        lockstep = gathered_collectively(self)
        if lockstep:
            steps = _across_ranks(steps, torch.distributed.ReduceOp.MAX, device)
        for step in range(steps):
            logits = self.speech_logits(hidden).float()
            logits[:, eos] = logits[:, eos].masked_fill(step < min_len, float("-inf"))
            next_token = sample_next_token(logits, tokens, temperature, top_k, top_p, repetition_aware, generator)
            emitted = ~done & (next_token != eos)
            out_lengths = out_lengths + emitted.long()
            done = done | (next_token == eos) | (out_lengths >= max_len)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished = bool(done.all())
            if lockstep:
                finished = bool(_across_ranks(int(finished), torch.distributed.ReduceOp.MIN, device))
            if finished:
                break
            # Finished rows keep running with a valid dummy id; their outputs are never read.
            step_input = self.speech_embedding(next_token.clamp(max=eos - 1)[:, None], codebook)
            attention_mask = F.pad(attention_mask, (0, 1), value=1)
            out = self.decoder.model(inputs_embeds=step_input, attention_mask=attention_mask,
                                     position_ids=next_position[:, None], use_cache=True, **{_CACHE_NAME: cache})
            cache, hidden = getattr(out, _CACHE_NAME), out.last_hidden_state[:, -1]
            next_position = next_position + 1
        return [tokens[b, :int(out_lengths[b])].cpu() for b in range(batch)]
