"""Flow-matching acoustic decoder: speech tokens (+ prompt mel) -> mel spectrogram.

A DiT (:class:`~e2e_tts.models.layers.TransformerStack` with adaLN time conditioning) predicts the
velocity of the optimal-transport conditional flow (Lipman et al.; CosyVoice 3 / F5-TTS style)::

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,     target u = x1 - (1 - sigma_min) x0,

from a source ``x0`` at ``t = 0`` to the normalised mel ``x1`` at ``t = 1``. The source is noise
``N(0, I)`` (``source="noise"``, CosyVoice) or noise around the prior head's mel, ``N(mu, I)``
(``source="prior"``, Grad-TTS / PriorGrad): the flow then only learns the residual detail, and an
undertrained velocity field still ends near the prior instead of in noise. Its input per mel
frame is ``[x_t, prompt mel (zeros outside the prompt span), upsampled speech tokens]``.

The token condition is built once per utterance, outside the ODE: speech-token embeddings -> a
transformer token encoder at the token rate (CosyVoice's conformer encoder, 6 blocks there) -> repeat to
the mel rate -> residual convs. A linear *prior* head maps those features to the mel and is trained with
a masked MSE against it (Matcha-TTS's prior loss): the condition then carries the spectral envelope from
the first updates, instead of the DiT having to discover it through the noisy flow-matching target, which
is what a small flow on a short budget cannot do (recipes/tiny/README.md).

Zero-shot synthesis is in-context infilling: the speech tokens cover prompt + target (prompt tokens
first), the prompt's mel frames are given as condition, and the ODE fills in the frames after them.

Lengths: tokens run at ``1 / token_mel_ratio`` of the mel rate. A row with ``n`` valid tokens and
``m`` valid mel frames trains on its first ``min(m, n * ratio)`` frames (whichever side is longer is
trimmed); rows where ``|m - n * ratio| > ratio`` (more than one token apart) are rejected, because
then tokens and audio do not belong together.

CFG follows CosyVoice: ``v = v_cond + w (v_cond - v_uncond)``, where the unconditional branch sees
no tokens and no prompt (dropped together with probability ``cfg_dropout`` in training); from the
prior source it still starts at the prior mel, so guidance then amplifies what the explicit condition adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchdiffeq import odeint

from e2e_tts.audio import LOG_FLOOR
from e2e_tts.checks import FieldError, at_least, one_of, positive, within
from e2e_tts.models.layers import TransformerStack
from e2e_tts.models.masks import lengths_to_mask, prefix_lengths
from e2e_tts.models.speech_embedding import SpeechEmbedding

SCHEDULES = ("linear", "cosine", "sway")
SOURCES = ("noise", "prior")
SWAY_COEF_RANGE = (-1.0, 1.0 / (math.pi / 2 - 1))  # outside it the sway grid is not monotone


@dataclass
class FlowConfig:
    """Flow decoder size, conditioning and sampling defaults (defaults = the ``tiny`` size).

    Attributes:
        dim, depth, heads, ff_mult, dropout: the DiT.
        encoder_depth: transformer blocks of the token encoder (same width and heads); 0 = none.
        prior_weight: weight of the prior loss (MSE of the prior head's mel against the target mel, in
            normalised units) in :meth:`FlowDecoder.loss`; 0 = no prior head.
        source: where the flow starts, "noise" (N(0, I)) or "prior" (N(mu, I), mu = the prior head's mel,
            not differentiated through the flow loss); "prior" needs ``prior_weight > 0``.
        temperature: scale of the source noise in sampling (Matcha-TTS samples at 0.667).
        n_mels: mel channels (e2e_tts.audio.AudioConfig.n_mels).
        token_mel_ratio: mel frames per speech token (50 Hz mel / 25 Hz tokens = 2).
        id_embedding: give each speech token id a free embedding vector besides its code's MLP embedding
            (e2e_tts.models.speech_embedding).
        upsample_conv_layers, upsample_kernel_size: residual convs after repeating tokens to the
            mel rate, so the token condition is not piecewise constant.
        mel_mean, mel_std: the flow works on ``(mel - mel_mean) / mel_std`` so that N(0, I) noise
            matches the data scale (defaults measured on 16 kHz flite speech: -5.3 / 2.3).
        sigma_min: width of the flow at ``t = 1``.
        cfg_dropout: probability of dropping tokens and prompt together in training.
        prompt_probability: probability that a training row gets an in-context prompt prefix.
        prompt_min_fraction, prompt_max_fraction: the prompt prefix covers a uniform fraction of
            the row's frames in this range.
        solver: torchdiffeq method ("euler", "midpoint", "rk4", "dopri5", ...).
        nfe: steps of a fixed-grid solver (network calls: euler x1, midpoint x2, rk4 x4 per step).
        schedule: time grid, "linear", "cosine" (``1 - cos(pi/2 u)``) or "sway" (F5-TTS).
        sway_coef: sway sampling coefficient (-1 equals the cosine grid).
        cfg_strength: ``w`` in ``v_cond + w (v_cond - v_uncond)``; 0 disables guidance.
        ode_tolerance: rtol and atol for adaptive solvers.
    """

    dim: int = 256
    depth: int = 6
    heads: int = 4
    ff_mult: float = 2.0
    dropout: float = 0.0
    encoder_depth: int = 2
    prior_weight: float = 1.0
    source: str = "prior"
    n_mels: int = 80
    token_mel_ratio: int = 2
    id_embedding: bool = False
    upsample_conv_layers: int = 2
    upsample_kernel_size: int = 5
    mel_mean: float = -5.3
    mel_std: float = 2.3
    sigma_min: float = 1e-6
    cfg_dropout: float = 0.2
    prompt_probability: float = 0.7
    prompt_min_fraction: float = 0.0
    prompt_max_fraction: float = 0.7
    solver: str = "euler"
    nfe: int = 10
    schedule: str = "cosine"
    sway_coef: float = -1.0
    cfg_strength: float = 0.7
    temperature: float = 1.0
    ode_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        # Sizes and sampling steps; the other settings are checked where the decoder is built (FlowDecoder).
        for name in ("dim", "heads", "n_mels", "token_mel_ratio", "upsample_kernel_size", "nfe"):
            positive(self, name)
        for name in ("depth", "encoder_depth", "upsample_conv_layers"):
            at_least(self, name, 0)
        positive(self, "ff_mult")
        if self.dim % self.heads or self.dim // self.heads % 2:
            raise FieldError("dim", f"{self.dim} must split into heads {self.heads} of even width (rotary)")
        if self.upsample_kernel_size % 2 == 0:
            raise FieldError("upsample_kernel_size", f"must be odd, got {self.upsample_kernel_size}")
        one_of(self, "schedule", SCHEDULES)
        if self.schedule == "sway":
            within(self, "sway_coef", *SWAY_COEF_RANGE)
        positive(self, "ode_tolerance")


PRESETS: dict[str, FlowConfig] = {
    "tiny": FlowConfig(),
    # CosyVoice 3's DiT (dim 1024, 22 blocks, 16 heads of 64, ff_mult 2) widened to 1280 / 20 heads
    # of 64, 18 DiT blocks after CosyVoice's 6-block token encoder: 0.52B, the paper's ~0.5B flow decoder.
    # Its source is CosyVoice's plain noise; the tiny flow starts from the prior, which a short budget needs.
    "paper": FlowConfig(dim=1280, depth=18, heads=20, ff_mult=2.0, dropout=0.1, encoder_depth=6, source="noise"),
}


@dataclass
class FlowMatchingDraws:
    """The random choices of one training step (drawn by :meth:`FlowDecoder.draw`, or given by a caller
    that needs common random numbers).

    Attributes:
        noise: ``x0`` ``(B, T, n_mels)``.
        time: ``t`` ``(B,)`` in [0, 1].
        prompt_frames: ``(B,)`` long, length of the in-context prompt prefix (0 = none).
        keep_condition: ``(B,)`` bool, False where tokens and prompt are dropped (CFG).
    """

    noise: torch.Tensor
    time: torch.Tensor
    prompt_frames: torch.Tensor
    keep_condition: torch.Tensor


def time_grid(nfe: int, schedule: str, sway_coef: float = -1.0, device: torch.device | None = None) -> torch.Tensor:
    """``nfe + 1`` increasing times from 0 to 1 for the ODE solver.

    Args:
        nfe: number of intervals (>= 1).
        schedule: "linear", "cosine" (CosyVoice: ``1 - cos(pi/2 u)``, small steps near the noise) or
            "sway" (F5-TTS: ``u + s (cos(pi/2 u) - 1 + u)``).
        sway_coef: ``s`` of the sway schedule.
    Returns:
        ``(nfe + 1,)`` float32.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    u = torch.linspace(0.0, 1.0, nfe + 1, device=device)
    if schedule == "linear":
        return u
    if schedule == "cosine":
        return 1.0 - torch.cos(u * math.pi / 2)
    if schedule == "sway":
        low, high = SWAY_COEF_RANGE
        if not low <= sway_coef <= high:
            raise ValueError(f"sway_coef {sway_coef} outside [{low}, {high:.3f}]: the time grid would not be monotone")
        return u + sway_coef * (torch.cos(u * math.pi / 2) - 1.0 + u)
    raise ValueError(f"unknown schedule {schedule!r}, expected one of {SCHEDULES}")


def timestep_embedding(time: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features ``(B, dim)`` of ``time (B,)`` in [0, 1] (scaled so that small steps are resolved)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=time.device, dtype=torch.float32) / half)
    angles = scale * time.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TokenUpsampler(nn.Module):
    """Repeats token embeddings to the mel rate, then smooths them with masked residual convs.

    Args:
        dim: width.
        ratio: mel frames per token.
        num_layers: residual conv layers.
        kernel_size: odd conv kernel width (in mel frames).
    """

    def __init__(self, dim: int, ratio: int, num_layers: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"upsample_kernel_size must be odd, got {kernel_size}")
        self.ratio = ratio
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers))
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
                                   for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: tokens ``(B, N, dim)``; mask ``(B, N * ratio)`` valid frames.

        Returns: ``(B, N * ratio, dim)``, zero on invalid frames.
        """
        frame_valid = mask[..., None].to(tokens.dtype)
        x = tokens.repeat_interleave(self.ratio, dim=1)
        for norm, conv in zip(self.norms, self.convs):
            # zeroing padding before each conv keeps a row's output independent of how it is padded
            h = F.gelu(norm(x)) * frame_valid
            x = x + conv(h.transpose(1, 2)).transpose(1, 2)
        return x * frame_valid


class FlowDecoder(nn.Module):
    """Conditional flow-matching mel decoder (DiT estimator, torchdiffeq sampler).

    Args:
        config: :class:`FlowConfig`.
        codebook_dim: dimension ``Dc`` of one tokenizer code (FSQ: number of levels).
        codebook_size: the tokenizer's number of codes (needed by ``config.id_embedding``).
    """

    def __init__(self, config: FlowConfig, codebook_dim: int, codebook_size: int = 0):
        super().__init__()
        if config.token_mel_ratio < 1:
            raise ValueError(f"token_mel_ratio must be >= 1, got {config.token_mel_ratio}")
        if not 0.0 <= config.prompt_min_fraction <= config.prompt_max_fraction < 1.0:
            raise ValueError("need 0 <= prompt_min_fraction <= prompt_max_fraction < 1, got "
                             f"{config.prompt_min_fraction}, {config.prompt_max_fraction}")
        for name in ("cfg_dropout", "prompt_probability"):
            if not 0.0 <= getattr(config, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(config, name)}")
        if config.mel_std <= 0:
            raise ValueError(f"mel_std must be positive, got {config.mel_std}")
        if config.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {config.source!r}")
        if config.source == "prior" and config.prior_weight <= 0:
            raise ValueError("source='prior' needs a trained prior head: set prior_weight > 0")
        if config.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {config.temperature}")
        if config.encoder_depth < 0 or config.prior_weight < 0:
            raise ValueError(f"encoder_depth and prior_weight must be >= 0, got {config.encoder_depth}, "
                             f"{config.prior_weight}")
        self.config = config
        dim, n_mels = config.dim, config.n_mels
        if config.id_embedding and codebook_size < 1:
            raise ValueError("id_embedding needs the tokenizer's codebook size")
        self.speech_embedding = SpeechEmbedding(codebook_dim, dim, codebook_size if config.id_embedding else 0)
        self.token_encoder = None
        if config.encoder_depth > 0:
            self.token_encoder = TransformerStack(dim, config.encoder_depth, config.heads, config.ff_mult,
                                                  config.dropout)
        self.token_upsampler = TokenUpsampler(dim, config.token_mel_ratio, config.upsample_conv_layers,
                                              config.upsample_kernel_size)
        self.input_proj = nn.Linear(2 * n_mels + dim, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.transformer = TransformerStack(dim, config.depth, config.heads, config.ff_mult, config.dropout,
                                            cond_dim=dim)
        self.output_proj = nn.Linear(dim, n_mels)
        # only built when trained: a parameter without a gradient would stall ZeRO's gradient reduction
        self.prior_proj = nn.Linear(dim, n_mels) if config.prior_weight > 0 else None

    def num_parameters(self) -> int:
        """Total parameter count (works on the meta device)."""
        return sum(p.numel() for p in self.parameters())

    # ---- conditioning -------------------------------------------------------------------------

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.config.mel_mean) / self.config.mel_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.config.mel_std + self.config.mel_mean

    def _token_lengths(self, speech: torch.Tensor, speech_mask: torch.Tensor) -> torch.Tensor:
        if tuple(speech_mask.shape) != tuple(speech.shape[:2]):
            raise ValueError(f"speech_mask {tuple(speech_mask.shape)} does not match speech {tuple(speech.shape[:2])}")
        return prefix_lengths(speech_mask, "speech_mask")

    def embed_tokens(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor,
                     num_frames: int) -> torch.Tensor:
        """Speech tokens at the token rate -> condition features at the mel rate.

        Args:
            speech: ids ``(B, N)``, probabilities ``(B, N, V)`` or codes ``(B, N, Dc)``.
            speech_mask: ``(B, N)`` valid tokens.
            codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
            num_frames: frames to return (``<= N * ratio``).
        Returns:
            ``(B, num_frames, dim)``, zero past each row's ``n * ratio`` frames.
        """
        ratio = self.config.token_mel_ratio
        lengths = self._token_lengths(speech, speech_mask)
        features = self.speech_embedding(speech, codebook)
        if self.token_encoder is not None:
            # padded tokens are masked keys, and the upsampler zeroes their frames before every conv
            features, _ = self.token_encoder(features, mask=lengths_to_mask(lengths, speech.shape[1]))
        token_frames = lengths_to_mask(lengths * ratio, speech.shape[1] * ratio)
        return self.token_upsampler(features, token_frames)[:, :num_frames]

    def prior(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """The prior head's mel estimate from the tokens alone (no ODE, no prompt): a diagnostic of how much
        of the mel the token condition carries.

        Args: as :meth:`embed_tokens`.
        Returns:
            log-mel ``(B, N * ratio, n_mels)`` (natural log), silence past each row's frames.
        Raises:
            ValueError: for a flow built with ``prior_weight=0`` (no prior head).
        """
        if self.prior_proj is None:
            raise ValueError("this flow has no prior head (prior_weight=0)")
        ratio = self.config.token_mel_ratio
        num_frames = speech.shape[1] * ratio
        valid = lengths_to_mask(self._token_lengths(speech, speech_mask) * ratio, num_frames)
        mel = self.denormalize(self.prior_proj(self.embed_tokens(speech, speech_mask, codebook, num_frames)))
        return mel.masked_fill(~valid[..., None], math.log(LOG_FLOOR))

    def velocity(self, x: torch.Tensor, time: torch.Tensor, tokens: torch.Tensor, prompt: torch.Tensor,
                 mask: torch.Tensor, keep_condition: torch.Tensor) -> torch.Tensor:
        """The DiT estimator.

        Args:
            x: ``x_t`` ``(B, T, n_mels)`` (normalised).
            time: ``(B,)``.
            tokens: upsampled token features ``(B, T, dim)``.
            prompt: normalised prompt mel ``(B, T, n_mels)``, zero outside the prompt span.
            mask: ``(B, T)`` valid frames.
            keep_condition: ``(B,)`` bool; False drops tokens and prompt (unconditional).
        Returns:
            velocity ``(B, T, n_mels)``.
        """
        keep = keep_condition.to(x.dtype)
        h = self.input_proj(torch.cat([x, prompt * keep[:, None, None], tokens * keep[:, None, None]], dim=-1))
        cond = self.time_mlp(timestep_embedding(time, self.config.dim).to(x.dtype))
        h, _ = self.transformer(h, mask=mask, cond=cond)
        return self.output_proj(h)

    # ---- training -----------------------------------------------------------------------------

    def aligned_frames(self, mel_mask: torch.Tensor, speech: torch.Tensor, speech_mask: torch.Tensor
                       ) -> torch.Tensor:
        """Per-row frames shared by mel and tokens, ``min(m, n * ratio)`` ``(B,)`` (see module docstring).

        Raises:
            ValueError: when a row's mel and token lengths are more than one token apart.
        """
        ratio = self.config.token_mel_ratio
        mel_lengths = prefix_lengths(mel_mask, "mel_mask")
        token_frames = self._token_lengths(speech, speech_mask) * ratio
        gap = (mel_lengths - token_frames).abs()
        if bool((gap > ratio).any()):
            row = int(gap.argmax())
            raise ValueError(f"row {row}: {int(mel_lengths[row])} mel frames vs {int(token_frames[row]) // ratio} "
                             f"tokens x {ratio} = {int(token_frames[row])} frames; more than one token apart")
        frames = torch.minimum(mel_lengths, token_frames)
        if bool((frames == 0).any()):
            raise ValueError(f"row {int(frames.argmin())} has no mel frames or no tokens")
        return frames

    def source_point(self, noise: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
        """``x0``: the noise itself, or the noise around the (detached) prior mel ``mu`` ``(B, T, n_mels)``, so
        that the flow loss trains the velocity field and only the prior loss trains the prior head."""
        if self.config.source == "noise":
            return noise
        return noise + mu.detach()

    def draw(self, frames: torch.Tensor, num_frames: int, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> FlowMatchingDraws:
        """Draws noise, time, prompt span and CFG dropout for a batch (no prompt, no dropout in eval mode).

        Args:
            frames: ``(B,)`` valid frames per row.
            num_frames: padded length ``T``.
        """
        cfg, batch, device = self.config, frames.shape[0], frames.device

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        noise = torch.randn(batch, num_frames, cfg.n_mels, generator=generator, device=device, dtype=dtype)
        time = uniform(batch)
        fraction = cfg.prompt_min_fraction + (cfg.prompt_max_fraction - cfg.prompt_min_fraction) * uniform(batch)
        has_prompt = uniform(batch) < cfg.prompt_probability
        prompt_frames = torch.where(has_prompt, (fraction * frames).long(), torch.zeros_like(frames))
        keep_condition = uniform(batch) >= cfg.cfg_dropout
        if not self.training:
            # Prompt spans and condition dropout train the flow for CFG and prompting; a frozen flow (the e2e
            # stage) scores every frame, fully conditioned, so each row gives its upstream a gradient.
            prompt_frames, keep_condition = torch.zeros_like(prompt_frames), torch.ones_like(keep_condition)
        return FlowMatchingDraws(noise, time, prompt_frames, keep_condition)

    def loss(self, mel: torch.Tensor, mel_mask: torch.Tensor, speech: torch.Tensor, speech_mask: torch.Tensor,
             codebook: torch.Tensor, *, draws: FlowMatchingDraws | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """``cfm + prior_weight * prior`` of :meth:`loss_terms` (same arguments): the scalar a trainer minimises."""
        terms = self.loss_terms(mel, mel_mask, speech, speech_mask, codebook, draws=draws, generator=generator)
        return self.weighted_loss(terms)

    def weighted_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """``cfm + prior_weight * prior`` of the terms :meth:`loss_terms` returned."""
        return terms["cfm"] + self.config.prior_weight * terms["prior"] if "prior" in terms else terms["cfm"]

    def loss_terms(self, mel: torch.Tensor, mel_mask: torch.Tensor, speech: torch.Tensor, speech_mask: torch.Tensor,
                   codebook: torch.Tensor, *, draws: FlowMatchingDraws | None = None,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked conditional flow-matching loss (MSE on valid frames after the prompt prefix) and the prior loss
        (MSE of the prior head on every valid frame; the prior head never sees the prompt mel).

        Args:
            mel: log-mel ``(B, T_mel, n_mels)`` (natural log, e2e_tts.audio.MelSpectrogram).
            mel_mask: ``(B, T_mel)`` valid frames.
            speech: ids ``(B, N)``, probabilities ``(B, N, V)`` (gradients reach the LLM) or codes
                ``(B, N, Dc)`` (gradients reach the tokenizer).
            speech_mask: ``(B, N)`` valid tokens.
            codebook: ``(V, Dc)``.
            draws: fixed random choices, shaped for ``T = max aligned frames``; drawn from
                ``generator`` when None.
        Returns:
            ``{"cfm": scalar, "prior": scalar}`` (no "prior" without a prior head), each averaged over its frames
            and mel channels of the whole batch.
        """
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise ValueError(f"mel must be (B, T, {self.config.n_mels}), got {tuple(mel.shape)}")
        if tuple(mel_mask.shape) != tuple(mel.shape[:2]) or speech.shape[0] != mel.shape[0]:
            raise ValueError(f"batch/length mismatch: mel {tuple(mel.shape)}, mel_mask {tuple(mel_mask.shape)}, "
                             f"speech {tuple(speech.shape)}")
        frames = self.aligned_frames(mel_mask, speech, speech_mask)
        num_frames = int(frames.max())
        if draws is None:
            draws = self.draw(frames, num_frames, generator, mel.dtype)
        if tuple(draws.noise.shape) != (mel.shape[0], num_frames, self.config.n_mels):
            raise ValueError(f"draws.noise must be {(mel.shape[0], num_frames, self.config.n_mels)}, "
                             f"got {tuple(draws.noise.shape)}")
        valid = lengths_to_mask(frames, num_frames)
        in_prompt = lengths_to_mask(draws.prompt_frames, num_frames)
        x1 = self.normalize(mel[:, :num_frames]) * valid[..., None]
        prompt = x1 * in_prompt[..., None]
        t = draws.time.to(mel.dtype)[:, None, None]
        tokens = self.embed_tokens(speech, speech_mask, codebook, num_frames)
        mu = self.prior_proj(tokens) if self.prior_proj is not None else None
        x0, sigma = self.source_point(draws.noise, mu), self.config.sigma_min
        x_t = (1 - (1 - sigma) * t) * x0 + t * x1
        target = x1 - (1 - sigma) * x0
        predicted = self.velocity(x_t, draws.time, tokens, prompt, valid, draws.keep_condition)
        scored = (valid & ~in_prompt)[..., None].to(mel.dtype)
        squared_error = (predicted - target).square() * scored
        terms = {"cfm": squared_error.sum() / (scored.sum() * self.config.n_mels).clamp(min=1)}
        if mu is not None:
            prior_error = (mu - x1).square() * valid[..., None].to(mel.dtype)
            terms["prior"] = prior_error.sum() / (valid.sum() * self.config.n_mels).clamp(min=1)
        return terms

    # ---- sampling -----------------------------------------------------------------------------

    def sample(self, speech: torch.Tensor, speech_mask: torch.Tensor, codebook: torch.Tensor,
               prompt_mel: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None, *,
               solver: str | None = None, nfe: int | None = None, schedule: str | None = None,
               sway_coef: float | None = None, cfg_strength: float | None = None, temperature: float | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generates the mel frames that follow the prompt (zero-shot in-context synthesis).

        Runs with autograd as the caller sets it: wrap in ``torch.no_grad()`` for inference.

        Args:
            speech: tokens of prompt + target, prompt first: ids ``(B, N)``, probabilities
                ``(B, N, V)`` or codes ``(B, N, Dc)``.
            speech_mask: ``(B, N)`` valid tokens; row ``b`` decodes to ``n_b * ratio`` frames in all.
            codebook: ``(V, Dc)``.
            prompt_mel: the prompt's log-mel ``(B, P, n_mels)``; it occupies the first ``p_b`` frames,
                which are not returned. None = no prompt.
            prompt_mask: ``(B, P)`` valid prompt frames (None = all valid).
            solver: torchdiffeq method. Fixed-grid solvers take exactly ``nfe`` steps; adaptive ones
                (dopri5, ...) choose their own steps within ``ode_tolerance``, so ``nfe`` only sets
                the output grid there and the call count is not ``nfe``.
            nfe, schedule, sway_coef, cfg_strength, temperature: see :class:`FlowConfig` (None = config default).
            generator: source of the initial noise.
        Returns:
            mel ``(B, T_out, n_mels)`` (natural-log, silence on padding) and its mask ``(B, T_out)``,
            ``T_out = max_b(n_b * ratio - p_b)``.
        """
        cfg = self.config
        solver = cfg.solver if solver is None else solver
        nfe = cfg.nfe if nfe is None else nfe
        schedule = cfg.schedule if schedule is None else schedule
        sway_coef = cfg.sway_coef if sway_coef is None else sway_coef
        cfg_strength = cfg.cfg_strength if cfg_strength is None else cfg_strength
        temperature = cfg.temperature if temperature is None else temperature
        batch, device, dtype = speech.shape[0], codebook.device, self.output_proj.weight.dtype
        total = self._token_lengths(speech, speech_mask) * cfg.token_mel_ratio
        if bool((total == 0).any()):
            raise ValueError(f"row {int(total.argmin())} has no speech tokens")
        num_frames = int(total.max())
        valid = lengths_to_mask(total, num_frames)

        prompt = torch.zeros(batch, num_frames, cfg.n_mels, device=device, dtype=dtype)
        prompt_frames = torch.zeros_like(total)
        if prompt_mel is not None:
            if prompt_mel.dim() != 3 or prompt_mel.shape[0] != batch or prompt_mel.shape[-1] != cfg.n_mels:
                raise ValueError(f"prompt_mel must be ({batch}, P, {cfg.n_mels}), got {tuple(prompt_mel.shape)}")
            if prompt_mask is None:
                prompt_mask = torch.ones(prompt_mel.shape[:2], dtype=torch.bool, device=prompt_mel.device)
            if tuple(prompt_mask.shape) != tuple(prompt_mel.shape[:2]):
                raise ValueError(f"prompt_mask {tuple(prompt_mask.shape)} does not match prompt_mel "
                                 f"{tuple(prompt_mel.shape[:2])}")
            prompt_frames = prefix_lengths(prompt_mask, "prompt_mask")
            if bool((prompt_frames >= total).any()):
                row = int((prompt_frames - total).argmax())
                raise ValueError(f"row {row}: prompt has {int(prompt_frames[row])} frames but the tokens decode to "
                                 f"only {int(total[row])}; the tokens must cover prompt + target")
            length = min(prompt_mel.shape[1], num_frames)
            prompt[:, :length] = self.normalize(prompt_mel[:, :length].to(dtype)) * prompt_mask[:, :length, None]
        elif prompt_mask is not None:
            raise ValueError("prompt_mask given without prompt_mel")

        tokens = self.embed_tokens(speech, speech_mask, codebook, num_frames)
        guided = cfg_strength != 0
        # conditional and unconditional rows go through the network as one batch of 2B
        copies = 2 if guided else 1
        keep = torch.ones(copies * batch, dtype=torch.bool, device=device)
        keep[batch:] = False
        tokens2, prompt2, valid2 = (torch.cat([a] * copies) for a in (tokens, prompt, valid))

        def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            time = t.expand(copies * batch)
            v = self.velocity(torch.cat([x] * copies), time, tokens2, prompt2, valid2, keep)
            if guided:
                v_cond, v_uncond = v.chunk(2)
                v = v_cond + cfg_strength * (v_cond - v_uncond)
            # padded frames stay at their noise, so they cannot steer an adaptive solver's step size
            return v * valid[..., None].to(v.dtype)

        noise = temperature * torch.randn(batch, num_frames, cfg.n_mels, generator=generator, device=device,
                                          dtype=dtype)
        x0 = self.source_point(noise, self.prior_proj(tokens) if self.prior_proj is not None else None)
        grid = time_grid(nfe, schedule, sway_coef, device).to(dtype)
        x1 = odeint(field, x0, grid, method=solver, rtol=cfg.ode_tolerance, atol=cfg.ode_tolerance)[-1]

        out_lengths = total - prompt_frames
        out_frames = int(out_lengths.max())
        out_mask = lengths_to_mask(out_lengths, out_frames)
        index = (prompt_frames[:, None] + torch.arange(out_frames, device=device)[None, :]).clamp(max=num_frames - 1)
        mel = self.denormalize(x1.gather(1, index[..., None].expand(-1, -1, cfg.n_mels)))
        mel = mel.masked_fill(~out_mask[..., None], math.log(LOG_FLOOR))
        return mel, out_mask
