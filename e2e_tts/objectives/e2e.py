"""The e2e stage: the LLM learns through the frozen flow decoder and reward model (DiffRO-style).

Teacher-forced on the ground-truth token context, the LLM's next-token distributions over the speech
codebook are relaxed by Gumbel-softmax (straight-through when ``hard``) and fed, as soft tokens, to the
frozen flow decoder (reconstruction of the utterance's own mel, which is aligned because the context is
the ground truth) and the frozen reward model (``asr``: mean negative log P(text | tokens) per text token;
``speaker``: negative log-probability of the speaker label). A per-position KL to a frozen copy of the
starting LLM, analytic over ``[codebook, EOS]``, keeps the policy near its reference (beta 0.1). The reference
is held outside the module tree (:class:`~e2e_tts.objectives.policy.FrozenReference`), so that no checkpoint or
export holds a second LLM.

Only the LLM has trainable parameters; the flow and reward modules pass gradients to their soft input
and stay bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from e2e_tts.objectives.policy import FrozenReference
from e2e_tts.objectives.token_cache import FrozenTokenCache
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem

LOSSES = ("flow", "asr", "speaker")


class EndToEndObjective(nn.Module):
    """``w_flow * flow + w_asr * asr + w_speaker * speaker + beta * KL(policy || reference)``."""

    def __init__(self, system: TTSSystem, stage: StageConfig):
        super().__init__()
        if list(stage.trainable) != ["llm"]:
            raise ValueError(f"stage {stage.name!r}: the e2e objective trains the LLM only, got {stage.trainable}")
        unknown = set(stage.loss_weights) - set(LOSSES)
        if unknown:
            raise ValueError(f"stage {stage.name!r}: unknown loss weight(s) {sorted(unknown)}; known: {LOSSES}")
        self.system = system
        self.weights = {k: float(w) for k, w in stage.loss_weights.items() if w != 0}
        if "speaker" in self.weights and system.reward.num_speakers == 0:
            raise ValueError(f"stage {stage.name!r}: a speaker loss needs the reward model's speaker head, which "
                             f"this system has not (no training speakers)")
        self.kl_beta = stage.kl_beta
        self.gumbel = stage.gumbel
        self.frozen_tokens = FrozenTokenCache(system.tokenizer)
        self.reference = FrozenReference(system.llm) if stage.kl_beta > 0 else None
        self.step = 0

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system = self.system
        codebook = system.codebook()
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        # The alignment was trained in the earlier stages: no guided-attention loss here.
        out = system.llm(batch["text_ids"], batch["text_mask"], speech_ids, speech_mask, codebook)
        num_tokens = speech_ids.shape[1]
        vocab = codebook.shape[0]
        # Positions 0..S-1 predict the speech tokens; EOS (last column) is not a codebook point.
        logits = out.logits[:, :num_tokens, :vocab].float()
        tau = self.gumbel.temperature(self.step)
        soft = F.gumbel_softmax(logits, tau=tau, hard=self.gumbel.hard, dim=-1)
        soft = soft * speech_mask[..., None]

        losses: dict[str, torch.Tensor] = {}
        if "flow" in self.weights:
            losses["flow"] = system.flow.loss(batch["mel"], batch["mel_mask"], soft, speech_mask, codebook)
        if "asr" in self.weights or "speaker" in self.weights:
            speaker = system.speaker_ids(batch["speaker"], soft.device)
            rm = system.reward(soft, speech_mask, codebook, batch["text_ids"], batch["text_mask"], speaker=speaker)
            if "asr" in self.weights:
                text_tokens = batch["text_mask"].sum(1) + 1  # reference ids plus eos
                losses["asr"] = -(rm.text_log_prob / text_tokens).mean()
            if "speaker" in self.weights:
                known = speaker >= 0
                spk_lp = rm.label_log_probs["speaker"]
                losses["speaker"] = -(spk_lp * known).sum() / known.sum().clamp(min=1)
        total = sum(self.weights[k] * v for k, v in losses.items())
        metrics = {k: v.item() for k, v in losses.items()}
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference(system.llm)(batch["text_ids"], batch["text_mask"], speech_ids, speech_mask,
                                                 codebook)
            log_p = out.logits.float().log_softmax(-1)
            log_q = ref.logits.float().log_softmax(-1)
            kl_per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
            kl = (kl_per_position * out.mask).sum() / out.mask.sum()
            total = total + self.kl_beta * kl
            metrics["kl"] = kl.item()
        metrics.update(loss=total.item(), tau=tau, llm_nll=system.llm.loss(out).item())
        return total, metrics
