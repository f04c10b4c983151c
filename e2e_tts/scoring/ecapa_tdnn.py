"""Seed-TTS-Eval's speaker-verification model: ECAPA-TDNN over a layer-weighted sum of WavLM-large hidden states.

This is UniSpeech's ``ECAPA_TDNN_SMALL(feat_dim=1024, feat_type='wavlm_large')`` (thirdparty/UniSpeech/downstreams/
speaker_verification/models/ecapa_tdnn.py in BytedanceSpeech/seed-tts-eval) with the s3prl WavLM upstream it wraps
(s3prl/upstream/wavlm/{expert,WavLM,modules}.py), written anew for inference only. Module and attribute names follow
the originals exactly (``Conv1dReluBn1``, ``SE_Connect``, ``feature_extract.model.encoder.layers.0.self_attn.grep_a``,
...) because they are the key layout of the official ``wavlm_large_finetune.pth``, which loads strictly::

    checkpoint["model"]: 711 tensors =
        feature_extract.model.*  488  WavLM-large (s3prl UpstreamExpert.model)
        feature_weight, layer1..4, conv, pooling, bn, linear  222  the ECAPA head
        loss_calculator.projection.weight  1  AAM-softmax classifier (training only, dropped on load)

Forward, per waveform ``(N,)`` at 16 kHz (as ``verification.py`` calls it, one utterance at a time):

1. ``layer_norm(wav)`` over the whole utterance (WavLM-large's ``cfg.normalize``);
2. 7 conv blocks (conv -> layer norm over channels -> GELU), 320x downsampling, -> ``(T, 512)``;
   layer norm, projection to ``(T, D)``;
3. ``x + GELU(weight-normed grouped conv)`` positional embedding, then pre-norm transformer layers with gated
   relative position bias (buckets computed once in layer 0, gated per layer by the layer's query input);
4. hidden states as s3prl hooks collect them: the input of every layer, then the encoder output after its final
   layer norm (``L + 1`` states);
5. softmax(``feature_weight``)-weighted sum, ``+ 1e-6``, instance norm, ECAPA-TDNN, attentive statistics pooling,
   batch norm, linear -> embedding ``(emb_dim,)``.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride) of WavLM's convolutional feature extractor: "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2".
CONV_LAYERS = ((10, 5),) + ((3, 2),) * 4 + ((2, 2),) * 2
TRAINING_ONLY_PREFIXES = ("loss_calculator.",)  # the speaker classifier of the fine-tuning loss
UPSTREAM_PREFIX = "feature_extract.model."


@dataclass
class SpeakerVerifierConfig:
    """Sizes of WavLM + ECAPA-TDNN; defaults are the ``tiny`` test size, ``PRESETS["paper"]`` the official model.

    Args:
        conv_dim: channels of the convolutional feature extractor.
        conv_bias: whether its convolutions have biases (False for WavLM-large).
        embed_dim, ffn_dim, num_layers, num_heads: the transformer encoder.
        conv_pos, conv_pos_groups: kernel and groups of the positional convolution.
        num_buckets, max_distance: relative position buckets (bidirectional) and the distance of the last one.
        normalize_waveform: layer-normalise each waveform before the extractor (WavLM-large: True).
        channels: ECAPA-TDNN channels (divisible by ``res2_scale``).
        aggregation_channels: channels of the multi-layer aggregation conv (1536 in the original).
        emb_dim: speaker embedding size.
        res2_scale, se_bottleneck_dim, attention_channels: Res2Net scale, squeeze-excitation and pooling widths.
    """

    conv_dim: int = 16
    conv_bias: bool = False
    embed_dim: int = 32
    ffn_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    conv_pos: int = 16
    conv_pos_groups: int = 4
    num_buckets: int = 32
    max_distance: int = 800
    normalize_waveform: bool = True
    channels: int = 16
    aggregation_channels: int = 48
    emb_dim: int = 8
    res2_scale: int = 8
    se_bottleneck_dim: int = 8
    attention_channels: int = 8

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.res2_scale < 2 or self.channels % self.res2_scale:
            raise ValueError(f"channels {self.channels} must split into res2_scale {self.res2_scale} >= 2 groups")
        if self.num_buckets < 4:
            raise ValueError(f"num_buckets {self.num_buckets} must be >= 4 (two directions, exact and log-spaced)")


PRESETS: dict[str, SpeakerVerifierConfig] = {
    "tiny": SpeakerVerifierConfig(),
    # WavLM-large (s3prl cfg: extractor_mode layer_norm, layer_norm_first, normalize, relative_position_embedding,
    # gru_rel_pos, num_buckets 320, max_distance 800) + ECAPA_TDNN_SMALL(feat_dim=1024) with emb_dim 256.
    "paper": SpeakerVerifierConfig(conv_dim=512, embed_dim=1024, ffn_dim=4096, num_layers=24, num_heads=16,
                                   conv_pos=128, conv_pos_groups=16, num_buckets=320, channels=512,
                                   aggregation_channels=1536, emb_dim=256, se_bottleneck_dim=128,
                                   attention_channels=128),
}


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.float()).type_as(x)


class TransposeLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-2, -1)


class WeightNormConv1d(nn.Module):
    """Conv1d with ``weight = weight_v * weight_g / ||weight_v||`` (norm over all dims but the kernel dim, 2).

    The parameter names are those of the deprecated ``torch.nn.utils.weight_norm(conv, dim=2)`` the checkpoint was
    saved with.
    """

    def __init__(self, dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel_size // 2, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.randn(dim, dim // groups, kernel_size) * 0.02)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drops the extra trailing frame an even kernel with ``padding = kernel // 2`` produces."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-self.remove] if self.remove else x


class GatedRelativeAttention(nn.Module):
    """WavLM self-attention with gated relative position bias (keys ``self_attn.*``).

    Only the first layer owns the bucket embedding ``relative_attention_bias``; its bias ``(H, T, T)`` is passed on
    to every later layer, which rescales it per head and query frame with its own gate.
    """

    def __init__(self, config: SpeakerVerifierConfig, has_relative_attention_bias: bool):
        super().__init__()
        dim, self.num_heads = config.embed_dim, config.num_heads
        self.head_dim = dim // self.num_heads
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.grep_linear = nn.Linear(self.head_dim, 8)
        self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.num_heads)

    def _buckets(self, relative: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        buckets = (relative > 0).long() * half
        distance = relative.abs()
        max_exact = half // 2
        # log-spaced buckets beyond max_exact (log(0) at distance 0 is masked out by the where below)
        far = max_exact + (torch.log(distance.float() / max_exact) / math.log(self.max_distance / max_exact)
                           * (half - max_exact)).long()
        far = torch.clamp(far, max=half - 1)
        return buckets + torch.where(distance < max_exact, distance, far)

    def position_bias(self, length: int) -> torch.Tensor:
        """Bias ``(H, T, T)`` of key position minus query position."""
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = self._buckets(positions[None, :] - positions[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        """``x (B, T, D)``, ``position_bias (H, T, T)`` -> ``(B, T, D)``."""
        batch, length, dim = x.shape
        heads = x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # the gate reads the raw input
        gate_a, gate_b = torch.sigmoid(self.grep_linear(heads).view(batch, self.num_heads, length, 2, 4).sum(-1)
                                       ).chunk(2, dim=-1)
        bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * position_bias[None]

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, dim))


class WavLMLayer(nn.Module):
    """Pre-norm transformer layer (WavLM-large's ``layer_norm_first``)."""

    def __init__(self, config: SpeakerVerifierConfig, has_relative_attention_bias: bool):
        super().__init__()
        self.self_attn = GatedRelativeAttention(config, has_relative_attention_bias)
        self.self_attn_layer_norm = nn.LayerNorm(config.embed_dim)
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.final_layer_norm = nn.LayerNorm(config.embed_dim)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias)
        return x + self.fc2(_gelu(self.fc1(self.final_layer_norm(x))))


class WavLMEncoder(nn.Module):
    def __init__(self, config: SpeakerVerifierConfig):
        super().__init__()
        self.pos_conv = nn.Sequential(WeightNormConv1d(config.embed_dim, config.conv_pos, config.conv_pos_groups),
                                      SamePad(config.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(WavLMLayer(config, has_relative_attention_bias=i == 0)
                                    for i in range(config.num_layers))
        self.layer_norm = nn.LayerNorm(config.embed_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, T, D)`` -> the ``L + 1`` hidden states s3prl collects, each ``(B, T, D)``."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        position_bias = self.layers[0].self_attn.position_bias(x.shape[1])
        hidden = []
        for layer in self.layers:
            hidden.append(x)
            x = layer(x, position_bias)
        hidden.append(self.layer_norm(x))
        return hidden


class WavLM(nn.Module):
    """WavLM (layer-norm feature extractor, pre-norm encoder) as far as inference needs (keys ``model.*``)."""

    def __init__(self, config: SpeakerVerifierConfig):
        super().__init__()
        layers, in_dim = [], 1
        for kernel, stride in CONV_LAYERS:
            # indices 0 and 2.1 are the checkpoint layout of fairseq's block (conv, dropout, (T, LayerNorm, T), GELU)
            layers.append(nn.Sequential(
                nn.Conv1d(in_dim, config.conv_dim, kernel, stride=stride, bias=config.conv_bias), nn.Identity(),
                nn.Sequential(TransposeLast(), nn.LayerNorm(config.conv_dim), TransposeLast()), nn.GELU()))
            in_dim = config.conv_dim
        self.feature_extractor = nn.Module()
        self.feature_extractor.conv_layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(config.conv_dim)
        self.post_extract_proj = nn.Linear(config.conv_dim, config.embed_dim)
        self.mask_emb = nn.Parameter(torch.zeros(config.embed_dim))  # pre-training mask embedding: loaded, unused
        self.encoder = WavLMEncoder(config)

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        """``(B, N)`` -> ``L + 1`` hidden states ``(B, T, D)``, ``T`` about ``N / 320``."""
        x = wav[:, None]
        for block in self.feature_extractor.conv_layers:
            x = block(x)
        return self.encoder(self.post_extract_proj(self.layer_norm(x.transpose(1, 2))))


class WavLMUpstream(nn.Module):
    """s3prl's ``UpstreamExpert`` for WavLM: input normalisation around the model (keys ``feature_extract.*``)."""

    def __init__(self, config: SpeakerVerifierConfig):
        super().__init__()
        self.normalize_waveform = config.normalize_waveform
        self.model = WavLM(config)

    def forward(self, wav: torch.Tensor) -> list[torch.Tensor]:
        if self.normalize_waveform:
            wav = F.layer_norm(wav, wav.shape[-1:])
        return self.model(wav)


class ConvReluBn(nn.Module):
    """``bn(relu(conv(x)))`` (UniSpeech ``Conv1dReluBn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2ConvReluBn(nn.Module):
    """Res2Net block: ``scale`` channel groups, each but the last convolved after adding the previous output."""

    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int):
        super().__init__()
        self.width = channels // scale
        self.convs = nn.ModuleList(nn.Conv1d(self.width, self.width, kernel_size, padding=padding, dilation=dilation)
                                   for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x, self.width, dim=1)
        out, current = [], None
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            current = pieces[i] if i == 0 else current + pieces[i]
            current = bn(F.relu(conv(current)))
            out.append(current)
        return torch.cat(out + [pieces[-1]], dim=1)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * scale[:, :, None]


class SERes2Block(nn.Module):
    """ECAPA's SE-Res2 block with a residual connection (in and out channels equal, so no shortcut conv)."""

    def __init__(self, channels: int, dilation: int, scale: int, se_bottleneck_dim: int):
        super().__init__()
        self.Conv1dReluBn1 = ConvReluBn(channels, channels)
        self.Res2Conv1dReluBn = Res2ConvReluBn(channels, 3, padding=dilation, dilation=dilation, scale=scale)
        self.Conv1dReluBn2 = ConvReluBn(channels, channels)
        self.SE_Connect = SqueezeExcitation(channels, se_bottleneck_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))


class AttentiveStatsPool(nn.Module):
    """Attention-weighted mean and standard deviation over time: ``(B, C, T)`` -> ``(B, 2C)``."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.linear1 = nn.Conv1d(channels, attention_channels, kernel_size=1)
        self.linear2 = nn.Conv1d(attention_channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x))), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        variance = torch.sum(alpha * x ** 2, dim=2) - mean ** 2
        return torch.cat([mean, torch.sqrt(variance.clamp(min=1e-9))], dim=1)


class EcapaTdnnWavLM(nn.Module):
    """The whole speaker-verification model (UniSpeech ``ECAPA_TDNN`` with a WavLM upstream)."""

    def __init__(self, config: SpeakerVerifierConfig):
        super().__init__()
        self.config = config
        self.feature_extract = WavLMUpstream(config)
        self.feature_weight = nn.Parameter(torch.zeros(config.num_layers + 1))
        self.instance_norm = nn.InstanceNorm1d(config.embed_dim)
        self.layer1 = ConvReluBn(config.embed_dim, config.channels, kernel_size=5, padding=2)
        self.layer2, self.layer3, self.layer4 = (SERes2Block(config.channels, dilation, config.res2_scale,
                                                             config.se_bottleneck_dim) for dilation in (2, 3, 4))
        self.conv = nn.Conv1d(config.channels * 3, config.aggregation_channels, kernel_size=1)
        self.pooling = AttentiveStatsPool(config.aggregation_channels, config.attention_channels)
        self.bn = nn.BatchNorm1d(config.aggregation_channels * 2)
        self.linear = nn.Linear(config.aggregation_channels * 2, config.emb_dim)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` 16 kHz waveforms (no padding: call with one utterance, as the official script does)
        -> embeddings ``(B, emb_dim)``."""
        hidden = torch.stack(self.feature_extract(wav), dim=0)
        weights = F.softmax(self.feature_weight, dim=-1)[:, None, None, None]
        x = self.instance_norm((weights * hidden).sum(dim=0).transpose(1, 2) + 1e-6)
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(out)))


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> SpeakerVerifierConfig:
    """Reads every size from tensor shapes of an official-layout state dict (``max_distance`` and waveform
    normalisation cannot be seen in shapes and keep the WavLM-large values).

    Raises:
        ValueError: naming the first key the layout needs but the state lacks.
    """
    def shape(key: str) -> torch.Size:
        if key not in state:
            raise ValueError(f"not an ECAPA-TDNN/WavLM state dict: missing key {key!r}")
        return state[key].shape

    up = UPSTREAM_PREFIX
    num_layers = sum(1 for key in state if key.startswith(f"{up}encoder.layers.") and key.endswith(".fc1.weight"))
    conv_pos_v = shape(f"{up}encoder.pos_conv.0.weight_v")
    embed_dim = shape(f"{up}post_extract_proj.weight")[0]
    ffn_dim = shape(f"{up}encoder.layers.0.fc1.weight")[0]
    num_buckets, num_heads = shape(f"{up}encoder.layers.0.self_attn.relative_attention_bias.weight")
    channels = shape("layer1.conv.weight")[0]
    aggregation_channels = shape("conv.weight")[0]
    return replace(
        PRESETS["paper"],
        conv_dim=shape(f"{up}feature_extractor.conv_layers.0.0.weight")[0],
        conv_bias=f"{up}feature_extractor.conv_layers.0.0.bias" in state,
        embed_dim=embed_dim, ffn_dim=ffn_dim, num_layers=num_layers, num_heads=num_heads,
        conv_pos=conv_pos_v[2], conv_pos_groups=embed_dim // conv_pos_v[1], num_buckets=num_buckets,
        channels=channels, aggregation_channels=aggregation_channels, emb_dim=shape("linear.weight")[0],
        res2_scale=sum(1 for key in state if key.startswith("layer2.Res2Conv1dReluBn.convs.")
                       and key.endswith(".weight")) + 1,
        se_bottleneck_dim=shape("layer2.SE_Connect.linear1.weight")[0],
        attention_channels=shape("pooling.linear1.weight")[0],
    )


def load_speaker_verifier(path: str | Path, map_location: str = "cpu") -> EcapaTdnnWavLM:
    """Builds the model from an official-layout checkpoint (``{"model": state_dict, ...}``) and loads it strictly.

    Only the training-only classifier keys (:data:`TRAINING_ONLY_PREFIXES`) are dropped; any other missing or
    unexpected key is an error (the official ``verification.py`` loads with ``strict=False``, which would hide a
    layout mismatch as a randomly initialised layer).

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file is not such a checkpoint or its keys/shapes do not match the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"speaker-verification checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
        # torch's unpickling message advises weights_only=False, which would run code from a file that is already odd
        detail = "" if isinstance(err, pickle.UnpicklingError) else f": {str(err).splitlines()[0]}"
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or not a .pth "
                         f"file){detail}") from err
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict (wavlm_large_finetune.pth layout)")
    state = {key: value for key, value in checkpoint["model"].items() if not key.startswith(TRAINING_ONLY_PREFIXES)}
    model = EcapaTdnnWavLM(config_from_state_dict(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: checkpoint does not match the ECAPA-TDNN/WavLM layout: {err}") from err
    return model.eval()
