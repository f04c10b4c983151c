"""Mel-to-waveform: a Vocos-style iSTFT vocoder, its GAN discriminators and losses, and a Griffin-Lim fallback.

The vocoder maps a log-mel ``(B, T, n_mels)`` (the framing of :class:`e2e_tts.audio.MelSpectrogram`) to a waveform
``(B, T * hop)``: ConvNeXt blocks over frames predict, per frame, a log-magnitude and a phase angle of an STFT with
the analysis ``n_fft``/``hop``, which an inverse STFT turns into samples. There is no upsampling network, so it is
cheap (Siuzdak, "Vocos", 2023).

Alignment: the mel analysis reflect-pads ``n_fft // 2`` samples on each side, so its frame ``t`` is centred on sample
``t * hop``, and keeps ``N // hop`` frames. :func:`istft` inverts exactly that framing (frame ``t`` centred on sample
``t * hop``, ``n_fft // 2`` samples trimmed at the start, ``T * hop`` samples kept; it equals
``torch.istft(center=True, length=T * hop)``), so ``istft(stft(wav)) == wav`` and ``mel(vocoder(mel))`` has ``T``
frames, frame ``t`` analysing the samples that predicted frame ``t`` synthesised. Requires ``hop <= n_fft // 2`` so
that the last ``hop`` samples are covered by the last frame.

Training: per batch of equal-length crops ``wav (B, N)`` with ``mel = mel_fn(wav)``, the generator losses
(:func:`generator_step_losses`) and, from ``config.adversarial_at(step)`` on, the discriminator loss
(:func:`discriminator_step_loss`). Used alone they fit the classic two-optimizer loop; the project's vocoder
stage (e2e_tts/objectives/vocoder.py) instead takes both in one optimizer step, keeping each network's GAN
gradient apart by detaching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from e2e_tts.audio import LOG_FLOOR, AudioConfig, MelSpectrogram, mel_filterbank, stft
from e2e_tts.checks import FieldError, at_least, positive


@dataclass
class VocoderConfig:
    """Vocoder, discriminator and loss sizes; defaults are the ``tiny`` preset (~1.7M generator parameters).

    Attributes:
        sample_rate, n_fft, hop_length, n_mels: must equal the :class:`AudioConfig` the mels come from.
        dim: ConvNeXt width. intermediate_dim: ConvNeXt feed-forward width. num_blocks: ConvNeXt blocks.
        kernel_size: depthwise convolution width (frames) of the embedding and of every block.
        max_magnitude: predicted STFT magnitudes are clipped here (Vocos: 100) so that exp cannot overflow.
        mpd_periods: periods of the multi-period discriminator (HiFi-GAN).
        mpd_channels: channels of each period discriminator's strided convolutions.
        stft_resolutions: ``[n_fft, hop, win]`` triples of the multi-resolution STFT discriminator and of the
            optional multi-resolution STFT loss.
        mrd_channels: channels of each resolution discriminator.
        mel_loss_weight, feature_matching_weight, adversarial_weight: HiFi-GAN / Vocos weights (45, 2, 1).
        stft_loss_weight: weight of the multi-resolution STFT loss (spectral convergence + log-magnitude L1);
            0 disables it.
        mel_loss_only_steps: optimizer steps trained with reconstruction losses only before the GAN starts.
        reconstruction_only: never train adversarially (discriminators are not needed).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 80
    dim: int = 192
    intermediate_dim: int = 576
    num_blocks: int = 6
    kernel_size: int = 7
    max_magnitude: float = 100.0
    mpd_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    mpd_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 64])
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [[512, 128, 512], [1024, 256, 1024],
                                                                       [2048, 512, 2048]])
    mrd_channels: int = 8
    mel_loss_weight: float = 45.0
    feature_matching_weight: float = 2.0
    adversarial_weight: float = 1.0
    stft_loss_weight: float = 0.0
    mel_loss_only_steps: int = 0
    reconstruction_only: bool = False

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "dim", "intermediate_dim", "num_blocks",
                     "kernel_size", "mrd_channels"):
            positive(self, name)
        if self.n_fft % 2:
            raise FieldError("n_fft", f"must be even, got {self.n_fft}")
        if self.hop_length > self.n_fft // 2:
            raise FieldError("hop_length", f"too long: needs hop_length <= n_fft // 2 (the last frame must cover the "
                                           f"last hop), got hop_length={self.hop_length}, n_fft={self.n_fft}")
        if self.kernel_size % 2 == 0:
            raise FieldError("kernel_size", f"must be odd to keep frames aligned, got {self.kernel_size}")
        if not self.mpd_periods or min(self.mpd_periods) < 2:
            raise FieldError("mpd_periods", f"must be a non-empty list of periods >= 2, got {list(self.mpd_periods)}")
        if not self.mpd_channels or min(self.mpd_channels) < 1:
            raise FieldError("mpd_channels", f"must be a non-empty list of positive widths, got "
                                             f"{list(self.mpd_channels)}")
        for resolution in self.stft_resolutions:
            if len(resolution) != 3 or not 0 < resolution[1] <= resolution[2] <= resolution[0]:
                raise FieldError("stft_resolutions", f"entries must be [n_fft, hop, win] with 0 < hop <= win <= n_fft, "
                                                     f"got {list(resolution)}")
        for name in ("mel_loss_weight", "feature_matching_weight", "adversarial_weight", "stft_loss_weight",
                     "mel_loss_only_steps", "max_magnitude"):
            at_least(self, name, 0)

    def check_audio_config(self, audio: AudioConfig) -> None:
        """Raises ValueError naming every field that differs from the mel analysis the vocoder is fed."""
        mismatched = [f"{name}: vocoder {getattr(self, name)} != audio {getattr(audio, name)}"
                      for name in ("sample_rate", "n_fft", "hop_length", "n_mels")
                      if getattr(self, name) != getattr(audio, name)]
        if mismatched:
            raise ValueError("VocoderConfig disagrees with AudioConfig: " + "; ".join(mismatched))

    def adversarial_at(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) trains with the discriminators."""
        return not self.reconstruction_only and step >= self.mel_loss_only_steps


PRESETS: dict[str, VocoderConfig] = {
    "tiny": VocoderConfig(),
    # Vocos-base generator (dim 512, 1536, 8 blocks) on our 80-mel / n_fft 1024 analysis: 13.46M parameters.
    # Discriminators as in HiFi-GAN (MPD) and UnivNet/Vocos (MRD).
    "paper": VocoderConfig(dim=512, intermediate_dim=1536, num_blocks=8, mpd_channels=[32, 128, 512, 1024, 1024],
                           mrd_channels=32),
}


def istft(spec: torch.Tensor, hop_length: int, window: torch.Tensor, frame_mask: torch.Tensor | None = None
          ) -> torch.Tensor:
    """Inverse of :func:`stft`: ``(B, n_fft // 2 + 1, T)`` complex -> ``(B, T * hop)``.

    Least-squares overlap-add (``torch.istft(center=True, length=T * hop)``), written out so that padded frames can
    be left out of the window normalisation too: each item then equals its own unpadded inverse, whatever it was
    batched with.

    Args:
        spec: complex spectrogram ``(B, F, T)``.
        window: synthesis window ``(n_fft,)``.
        frame_mask: ``(B, T)`` True for frames to synthesise; other frames add nothing and samples no kept frame
            covers are zero.
    """
    n_fft, frames = window.shape[-1], spec.shape[-1]
    kept = (torch.ones(1, 1, frames, device=window.device, dtype=window.dtype) if frame_mask is None
            else frame_mask[:, None, :].to(window.dtype))
    segments = torch.fft.irfft(spec, n=n_fft, dim=1) * (window[None, :, None] * kept)

    def overlap_add(x: torch.Tensor) -> torch.Tensor:  # (B, n_fft, T) -> (B, n_fft + hop * (T - 1))
        return F.fold(x, (1, n_fft + hop_length * (frames - 1)), (1, n_fft), stride=(1, hop_length))[:, 0, 0]

    start = n_fft // 2
    wav = overlap_add(segments)[:, start:start + frames * hop_length]
    envelope = overlap_add(window[None, :, None] ** 2 * kept)[:, start:start + frames * hop_length]
    covered = envelope > 1e-11
    return torch.where(covered, wav / torch.where(covered, envelope, 1.0), 0.0)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over frames, LayerNorm, pointwise MLP, layer-scaled residual: ``(B, dim, T)`` -> same."""

    def __init__(self, dim: int, intermediate_dim: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, intermediate_dim)
        self.down = nn.Linear(intermediate_dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.depthwise(x).transpose(1, 2))
        h = self.down(F.gelu(self.up(h))) * self.scale
        return x + h.transpose(1, 2)


class Vocoder(nn.Module):
    """Vocos-style generator: log-mel ``(B, T, n_mels)`` -> waveform ``(B, T * hop)``.

    Args:
        config: sizes; checked against ``audio_config``.
        audio_config: the mel analysis of the inputs; also used for the mel reconstruction loss.
    """

    def __init__(self, config: VocoderConfig, audio_config: AudioConfig | None = None):
        super().__init__()
        audio_config = audio_config or AudioConfig()
        config.check_audio_config(audio_config)
        self.config = config
        self.mel_spectrogram = MelSpectrogram(audio_config)  # no parameters: the loss's view of the waveform
        self.embed = nn.Conv1d(config.n_mels, config.dim, config.kernel_size, padding=config.kernel_size // 2)
        self.embed_norm = nn.LayerNorm(config.dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(config.dim, config.intermediate_dim, config.kernel_size,
                                                  1.0 / config.num_blocks) for _ in range(config.num_blocks))
        self.final_norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.n_fft + 2)  # log-magnitude and phase of n_fft // 2 + 1 bins
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def spectrogram(self, mel: torch.Tensor, mel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted complex STFT ``(B, n_fft // 2 + 1, T)`` (float32) of ``mel (B, T, n_mels)``.

        Padded frames are zeroed before every convolution, so valid frames see exactly the zero padding they
        would see unbatched.
        """
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise ValueError(f"mel must be (B, T, {self.config.n_mels}), got {tuple(mel.shape)}")
        mel = mel.to(self.embed.weight.dtype)  # a float32 analysis into bf16 weights (DeepSpeed's bf16)
        keep = None
        if mel_mask is not None:
            if mel_mask.shape != mel.shape[:2] or mel_mask.dtype != torch.bool:
                raise ValueError(f"mel_mask must be bool {tuple(mel.shape[:2])}, got {mel_mask.dtype} "
                                 f"{tuple(mel_mask.shape)}")
            keep = mel_mask[:, None, :].to(mel.dtype)
            mel = mel * mel_mask[..., None]
        x = self.embed(mel.transpose(1, 2))
        x = self.embed_norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x if keep is None else x * keep)
        x = self.head(self.final_norm(x.transpose(1, 2))).float()  # exp/trig/FFT in float32 under bf16
        log_magnitude, angle = x.transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(torch.clamp(log_magnitude, max=math.log(self.config.max_magnitude)))
        return torch.polar(magnitude, angle)

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Synthesises ``(B, T * hop)`` from ``mel (B, T, n_mels)``.

        Args:
            mel_mask: ``(B, T)`` True on valid frames. Samples from ``length * hop`` on are exactly zero and
                ``wav[b, :length_b * hop]`` equals ``forward(mel[b:b+1, :length_b])``.
        """
        spec = self.spectrogram(mel, mel_mask)
        wav = istft(spec, self.config.hop_length, torch.hann_window(self.config.n_fft, device=spec.device), mel_mask)
        if mel_mask is not None:
            wav = wav * mel_mask.repeat_interleave(self.config.hop_length, dim=1)
        return wav


def conv_stack(x: torch.Tensor, convs: nn.ModuleList, post: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv layers then the output conv: returns flattened logits ``(B, L)`` and every feature map."""
    x = x.to(post.bias.dtype)  # a float32 waveform or STFT magnitude into bf16 weights (DeepSpeed's bf16)
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), 0.1)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """HiFi-GAN sub-discriminator on the waveform folded by ``period``: ``(B, N)`` -> logits and feature maps."""

    def __init__(self, period: int, channels: list[int]):
        super().__init__()
        self.period = period
        widths = [1, *channels]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(c_in, c_out, (5, 1), (3 if i < len(channels) - 1 else 1, 1), padding=(2, 0)))
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])))
        self.post = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        remainder = wav.shape[-1] % self.period
        if remainder:
            wav = F.pad(wav[:, None], (0, self.period - remainder), mode="reflect")[:, 0]
        x = wav.reshape(wav.shape[0], 1, -1, self.period)
        return conv_stack(x, self.convs, self.post)


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`PeriodDiscriminator` per period; ``(B, N)`` -> per-period logits and feature maps."""

    def __init__(self, periods: list[int], channels: list[int]):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, channels) for p in periods)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [d(wav) for d in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]


class ResolutionDiscriminator(nn.Module):
    """UnivNet/Vocos sub-discriminator on a linear STFT magnitude ``(B, 1, frames, bins)``, strided in frequency."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4))),
            *(weight_norm(nn.Conv2d(channels, channels, (3, 9), (1, 2), padding=(1, 4))) for _ in range(3)),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        window = torch.hann_window(self.win_length, device=wav.device)
        x = stft(wav, self.n_fft, self.hop_length, window).abs().transpose(1, 2)[:, None]
        return conv_stack(x, self.convs, self.post)


class MultiResolutionDiscriminator(nn.Module):
    """One :class:`ResolutionDiscriminator` per ``[n_fft, hop, win]``; ``(B, N)`` -> logits and feature maps."""

    def __init__(self, resolutions: list[list[int]], channels: int):
        super().__init__()
        self.discriminators = nn.ModuleList(ResolutionDiscriminator(*r, channels) for r in resolutions)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [d(wav) for d in self.discriminators]
        return [logits for logits, _ in outputs], [features for _, features in outputs]


class VocoderDiscriminators(nn.Module):
    """The multi-period and multi-resolution discriminators together: ``(B, N)`` -> all logits and feature maps."""

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(config.mpd_periods, config.mpd_channels)
        self.mrd = MultiResolutionDiscriminator(config.stft_resolutions, config.mrd_channels)
        self.min_samples = max(n_fft for n_fft, _, _ in config.stft_resolutions) // 2 + 1  # reflect padding

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Returns one ``(B, L_i)`` logit map and one list of feature maps per sub-discriminator of ``wav (B, N)``."""
        if wav.dim() != 2 or wav.shape[-1] < self.min_samples:
            raise ValueError(f"discriminators need wav (B, N) with N >= {self.min_samples} (largest STFT resolution), "
                             f"got {tuple(wav.shape)}")
        period_logits, period_features = self.mpd(wav)
        resolution_logits, resolution_features = self.mrd(wav)
        return period_logits + resolution_logits, period_features + resolution_features


def discriminator_loss(real_outputs: list[torch.Tensor], fake_outputs: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN (HiFi-GAN): sum over sub-discriminators of ``mean((1 - D(real))^2) + mean(D(fake)^2)``."""
    return sum(torch.mean((1 - real) ** 2) + torch.mean(fake ** 2) for real, fake in zip(real_outputs, fake_outputs))


def generator_adversarial_loss(fake_outputs: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: sum over sub-discriminators of ``mean((1 - D(fake))^2)``."""
    return sum(torch.mean((1 - fake) ** 2) for fake in fake_outputs)


def feature_matching_loss(real_features: list[list[torch.Tensor]], fake_features: list[list[torch.Tensor]]
                          ) -> torch.Tensor:
    """Sum over sub-discriminators and layers of the mean absolute feature difference (real side detached)."""
    return sum(torch.mean(torch.abs(real.detach() - fake))
               for reals, fakes in zip(real_features, fake_features) for real, fake in zip(reals, fakes))


def mel_reconstruction_loss(wav_hat: torch.Tensor, wav: torch.Tensor, mel_fn: nn.Module) -> torch.Tensor:
    """L1 between the log-mels of ``wav_hat`` and ``wav`` ``(B, N)``."""
    return F.l1_loss(mel_fn(wav_hat), mel_fn(wav))


def multi_resolution_stft_loss(wav_hat: torch.Tensor, wav: torch.Tensor, resolutions: list[list[int]]
                               ) -> torch.Tensor:
    """Mean over ``[n_fft, hop, win]`` resolutions of spectral convergence + log-magnitude L1 (Parallel WaveGAN)."""
    total = 0.0
    for n_fft, hop_length, win_length in resolutions:
        window = torch.hann_window(win_length, device=wav.device)
        magnitude_hat = stft(wav_hat, n_fft, hop_length, window).abs().clamp(min=LOG_FLOOR)
        magnitude = stft(wav, n_fft, hop_length, window).abs().clamp(min=LOG_FLOOR)
        convergence = torch.linalg.norm(magnitude - magnitude_hat) / torch.linalg.norm(magnitude)
        total = total + convergence + F.l1_loss(torch.log(magnitude_hat), torch.log(magnitude))
    return total / len(resolutions)


def discriminator_step_loss(discriminators: VocoderDiscriminators, wav: torch.Tensor, wav_hat: torch.Tensor
                            ) -> torch.Tensor:
    """Discriminator loss on real ``wav`` and generated ``wav_hat`` ``(B, N)``; no gradient reaches the vocoder."""
    real_logits, _ = discriminators(wav)
    fake_logits, _ = discriminators(wav_hat.detach())
    return discriminator_loss(real_logits, fake_logits)


def generator_step_losses(vocoder: Vocoder, discriminators: VocoderDiscriminators | None, mel: torch.Tensor,
                          wav: torch.Tensor, wav_hat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Weighted generator losses for one batch of equal-length crops.

    Args:
        discriminators: None trains with reconstruction losses only (see :meth:`VocoderConfig.adversarial_at`).
        mel: ``(B, T, n_mels)``, the analysis of ``wav (B, T * hop)``.
        wav_hat: ``vocoder(mel)`` when the caller already has it (e.g. from the discriminator step).

    Returns:
        unweighted scalar losses ``mel`` (and ``stft``, ``adversarial``, ``feature_matching`` when used) and their
        weighted sum ``total``.
    """
    config = vocoder.config
    if wav.shape[-1] != mel.shape[1] * config.hop_length:
        raise ValueError(f"wav has {wav.shape[-1]} samples but mel has {mel.shape[1]} frames x hop "
                         f"{config.hop_length}")
    if wav_hat is None:
        wav_hat = vocoder(mel)
    losses = {"mel": mel_reconstruction_loss(wav_hat, wav, vocoder.mel_spectrogram)}
    total = config.mel_loss_weight * losses["mel"]
    if config.stft_loss_weight > 0:
        losses["stft"] = multi_resolution_stft_loss(wav_hat, wav, config.stft_resolutions)
        total = total + config.stft_loss_weight * losses["stft"]
    if discriminators is not None:
        with torch.no_grad():
            _, real_features = discriminators(wav)
        fake_logits, fake_features = discriminators(wav_hat)
        losses["adversarial"] = generator_adversarial_loss(fake_logits)
        losses["feature_matching"] = feature_matching_loss(real_features, fake_features)
        total = (total + config.adversarial_weight * losses["adversarial"]
                 + config.feature_matching_weight * losses["feature_matching"])
    losses["total"] = total
    return losses


def griffin_lim(mel: torch.Tensor, audio_config: AudioConfig, n_iter: int = 32, momentum: float = 0.99,
                nnls_iter: int = 10) -> torch.Tensor:
    """Training-free inversion of a log-mel ``(B, T, n_mels)`` to ``(B, T * hop)`` (fast Griffin-Lim).

    The linear magnitude is the non-negative least-squares solution of ``magnitude @ filters.T = exp(mel)``: the
    clamped pseudo-inverse refined by multiplicative (Lee-Seung) updates, which keep it non-negative. Phases then
    alternate between the magnitude constraint and STFT consistency, with Perraudin et al.'s (2013) momentum;
    ``n_iter=0`` is the random-phase baseline. Framing is that of :class:`MelSpectrogram`.
    """
    cfg = audio_config
    if mel.dim() != 3 or mel.shape[-1] != cfg.n_mels:
        raise ValueError(f"mel must be (B, T, {cfg.n_mels}), got {tuple(mel.shape)}")
    if mel.shape[1] * cfg.hop_length <= cfg.n_fft // 2:
        raise ValueError(f"Griffin-Lim needs more than {cfg.n_fft // 2} samples (reflect padding), "
                         f"got {mel.shape[1]} frames")
    mel = mel.float()
    filters = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max).to(mel.device)
    target = torch.exp(mel)  # (B, T, M)
    magnitude = torch.clamp(target @ torch.linalg.pinv(filters).T, min=LOG_FLOOR)  # (B, T, F)
    projected_target = target @ filters
    for _ in range(nnls_iter):
        magnitude = magnitude * projected_target / (magnitude @ filters.T @ filters).clamp(min=1e-12)
    magnitude = magnitude.transpose(1, 2)  # (B, F, T)

    window = torch.hann_window(cfg.win_length, device=mel.device)
    synthesis_window = F.pad(window, ((cfg.n_fft - cfg.win_length) // 2, (cfg.n_fft - cfg.win_length + 1) // 2))
    phase = torch.polar(torch.ones_like(magnitude), 2 * math.pi * torch.rand_like(magnitude))
    previous = torch.zeros_like(phase)
    for _ in range(n_iter):
        wav = istft(magnitude * phase, cfg.hop_length, synthesis_window)
        consistent = stft(wav, cfg.n_fft, cfg.hop_length, window)
        accelerated = consistent + momentum * (consistent - previous)
        previous = consistent
        phase = accelerated / accelerated.abs().clamp(min=1e-12)
    return istft(magnitude * phase, cfg.hop_length, synthesis_window)
