"""The dpo stage: direct preference optimisation of the LLM on pairs of its own samples (DiffRO's DPO baseline, and
the offline DPO and IPO the self-verification paper compares with distillation).

For each text of the batch ``dpo.num_samples`` candidates are sampled, by the frozen starting LLM (``pairs_from:
reference``: the pairs offline DPO draws from the base model, drawn afresh each time a text comes round) or by the
LLM in training (``policy``: online DPO), laid out as the run's synthesis lays out its rows
(e2e_tts.objectives.policy), and the stage's rewards score them (e2e_tts.rewards; DiffRO ranks by WER and speaker
similarity). The best candidate is chosen and the worst rejected (a candidate cut at generate()'s cap scores its
group's lowest reward); a text whose candidates all score alike gives no pair. With ``h`` the chosen sequence's
log-probability ratio to the reference minus the rejected one's, each pair's loss is ``-log sigmoid(beta h)``
(DPO) or ``(h - 1 / (2 beta))^2`` (IPO), averaged over the pairs, plus ``sft_weight`` times the chosen sequences'
negative log-likelihood per token.

A sequence's log-probability sums the log-probabilities of its tokens and of its EOS (when it emitted one) after its
prompt, and of nothing else: no text, prompt or padding position (CosyVoice's DPO inverted that mask and averaged over
the ignored positions, its issue #1449). The reference is a frozen copy of the starting LLM held outside the module
tree, so that no checkpoint or export holds it (:class:`~e2e_tts.objectives.policy.FrozenReference`). Dropout stays
off in the LLM, so that the policy and the reference score a sequence alike. Only the LLM has trainable parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from e2e_tts.objectives.grpo import penalise_truncated
from e2e_tts.objectives.policy import (FrozenReference, SamplingObjective, policy_rewards, rollout_log_probs,
                                       sample_rollouts)
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                    reference_rejected: torch.Tensor, beta: float, loss_type: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of each preference pair from its sequence log-probabilities ``(P,)`` under the policy and the
    reference.

    Args:
        policy_chosen, policy_rejected, reference_chosen, reference_rejected: ``(P,)``.
        beta: the strength of the reference.
        loss_type: ``dpo`` or ``ipo``.
    Returns:
        the losses ``(P,)`` and ``h (P,)``, the chosen log-ratio minus the rejected one (DPO's implicit reward
        margin is ``beta * h``).
    """
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2, h
    return -F.logsigmoid(beta * h), h


class DPOObjective(SamplingObjective):
    """Preference pairs of ``num_samples`` candidates per text, ranked by the rewards (see the module docstring).

    Args:
        system: the system (only its LLM trains).
        stage: the stage spec (``stage.dpo``).
        config: the run's experiment config, whose synthesis settings lay the candidates out and decode their audio
            (None: defaults).
    """

    def __init__(self, system: TTSSystem, stage: StageConfig, config: Any = None):
        super().__init__(system)
        self.rewards, settings = policy_rewards(system, stage, config, "dpo")
        if stage.kl_beta:
            raise ValueError(f"stage {stage.name!r}: the dpo objective takes no kl_beta: its reference enters "
                             f"through dpo.beta")
        self.config, self.synthesis = stage.dpo, settings.synthesis
        self.reference = FrozenReference(system.llm)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system, config = self.system, self.config
        codebook = system.codebook()
        reference = self.reference(system.llm)
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        candidates = sample_rollouts(reference if config.pairs_from == "reference" else system.llm, codebook, batch,
                                     speech_ids, speech_mask, system.tokenizer.config.frames_per_token, config,
                                     self.synthesis)
        scores = self.rewards(candidates)
        reward = penalise_truncated(scores.total.view(-1, config.num_samples),
                                    candidates.ended.view(-1, config.num_samples))
        texts = reward.shape[0]
        first = torch.arange(texts, device=reward.device) * config.num_samples
        pairs = candidates.select((first + reward.argmax(1)).tolist() + (first + reward.argmin(1)).tolist(), group=1)
        preferred = (reward.max(1).values > reward.min(1).values).float()  # texts with a pair
        count = preferred.sum().clamp(min=1)

        log_probs, own = rollout_log_probs(system.llm, codebook, pairs)
        with torch.no_grad():
            reference_log_probs, _ = rollout_log_probs(reference, codebook, pairs)
        sequence, reference_sequence = log_probs.sum(1), reference_log_probs.sum(1)
        losses, h = preference_loss(sequence[:texts], sequence[texts:], reference_sequence[:texts],
                                    reference_sequence[texts:], config.beta, config.loss_type)
        total = (losses * preferred).sum() / count
        chosen_nll = -sequence[:texts] / own[:texts].sum(1)
        if config.sft_weight:
            total = total + config.sft_weight * (chosen_nll * preferred).sum() / count

        metrics = {f"reward_{name}": value.mean().item() for name, value in scores.shaped.items()}
        metrics.update(reward=reward.mean().item(), pairs=preferred.mean().item(),
                       reward_chosen=(reward.max(1).values * preferred).sum().item() / count.item(),
                       reward_rejected=(reward.min(1).values * preferred).sum().item() / count.item(),
                       margin=(config.beta * h * preferred).sum().item() / count.item(),
                       accuracy=((h > 0).float() * preferred).sum().item() / count.item(),
                       chosen_nll=(chosen_nll * preferred).sum().item() / count.item(), loss=total.item())
        return total, metrics
