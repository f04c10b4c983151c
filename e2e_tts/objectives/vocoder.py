"""The vocoder stage: reconstruction + adversarial losses on random crops of ground-truth audio.

Generator and discriminators share one DeepSpeed engine and one optimizer step. The two GAN losses are
kept from leaking into each other by detaching, not by alternating optimizers:

* the discriminator loss sees ``wav_hat.detach()``, so it cannot move the generator;
* the generator's adversarial and feature-matching terms run the discriminators with detached parameters
  (``torch.func.functional_call``), so they cannot move the discriminators.

One backward of the sum therefore gives each network exactly its own GAN gradient (a simultaneous update).
Requires ZeRO stage 0-2: under ZeRO-3 the discriminators' parameters are partitioned outside their forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from e2e_tts.models.vocoder import VocoderDiscriminators, discriminator_step_loss, generator_step_losses
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


class _FrozenView(nn.Module):
    """Calls a module with its parameters detached (gradients flow to the input only)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.target = [module]  # a list, so the view does not register the module twice

    def forward(self, *args: Any) -> Any:
        module = self.target[0]
        params = {name: p.detach() for name, p in module.named_parameters()}
        return torch.func.functional_call(module, params, args)


def random_crops(wav: torch.Tensor, lengths: torch.Tensor, samples: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Equal-length crops ``(B, samples)`` from the valid part of each padded row of ``wav (B, N)``.

    Rows shorter than ``samples`` are zero-padded at the end (silence is a valid training target).
    """
    crops = wav.new_zeros(wav.shape[0], samples)
    for row, length in enumerate(lengths.tolist()):
        start = int(torch.randint(0, max(1, length - samples + 1), (1,), generator=generator))
        piece = wav[row, start:min(length, start + samples)]
        crops[row, :piece.shape[0]] = piece
    return crops


class VocoderObjective(nn.Module):
    """Vocos-style generator losses (mel L1 x45, feature matching x2, adversarial x1) + LSGAN discriminators.

    ``loss_weights`` of the stage are unused: the vocoder config carries its loss weights.
    """

    def __init__(self, system: TTSSystem, stage: StageConfig, crop_frames: int = 48):
        super().__init__()
        if list(stage.trainable) != ["vocoder"]:
            raise ValueError(f"stage {stage.name!r}: the vocoder objective trains the vocoder only, "
                             f"got {stage.trainable}")
        self.system = system
        self.discriminators = VocoderDiscriminators(system.vocoder.config)
        self.crop_samples = crop_frames * system.vocoder.config.hop_length
        self.step = 0

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        if "wav" not in batch:
            raise ValueError("the vocoder stage needs waveforms: set data.return_wav=true")
        vocoder = self.system.vocoder
        wav = random_crops(batch["wav"], batch["wav_lengths"], self.crop_samples)
        mel = vocoder.mel_spectrogram(wav)
        wav_hat = vocoder(mel)
        adversarial = vocoder.config.adversarial_at(self.step)
        losses = generator_step_losses(vocoder, _FrozenView(self.discriminators) if adversarial else None,
                                       mel, wav, wav_hat)
        total = losses["total"]
        metrics = {f"vocoder_{k}": v.item() for k, v in losses.items()}
        if adversarial:
            disc = discriminator_step_loss(self.discriminators, wav, wav_hat)
            total = total + disc
            metrics["discriminator"] = disc.item()
        else:
            # Keep every trainable parameter in the graph (DeepSpeed reduces all of them each step).
            total = total + 0.0 * sum(p.sum() for p in self.discriminators.parameters())
        metrics["loss"] = total.item()
        return total, metrics
