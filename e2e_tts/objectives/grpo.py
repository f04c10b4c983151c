"""The grpo stage: group-relative policy optimisation of the LLM on its own samples (Align2Speak).

The e2e stage relaxes the LLM's teacher-forced distributions; synthesis runs the LLM free. Here, for each
text of the batch, the LLM samples ``K`` token sequences (``grpo.num_samples``, 12) at the stage's temperature, laid
out as the run's synthesis lays out its rows (e2e_tts.objectives.policy: behind a zero-shot prompt from another
utterance of the batch, or reading its text alone while only the flow hears the prompt), and the stage's rewards
(e2e_tts.rewards: the frozen reward model on the tokens, recognisers and speaker similarity on the decoded audio,
weighted, shaped and gated) score each.

A rollout cut at generate()'s cap without EOS scores its group's lowest reward. The advantage of a sample is
its reward minus its group's mean (divided by the group's standard deviation with ``scale_rewards``). The loss
is ``-A * log-probability`` of each sampled token (and EOS), averaged as ``loss_type`` says (:func:`policy_loss`):
one on-policy update per rollout, so PPO's ratio is 1 and its clip never binds. ``kl_beta > 0`` adds the k3
estimate of KL(policy || reference) on the sampled tokens; Align2Speak drops it, and so does the stage unless told.

Why token-level and the cap penalty: GRPO's per-rollout mean divides a long rollout's penalty among more tokens
(Dr. GRPO), and a rollout cut at the cap has no EOS to be penalised. Neither is enough alone, though: on the tiny
recipe, without KL, the LLM stops saying EOS and its samples flatten (mean log-probability -2 -> -5) within 30
updates at lr 2e-4 and within 140 at lr 1e-4; with ``kl_beta`` 0.1 it trains 300 updates at lr 2e-4 without a
sign of it (recipes/tiny/README.md). Align2Speak drops the KL at lr 2e-7.

Align2Speak also samples half its rollouts with classifier-free guidance; this LLM has no unconditional mode to
guide with (it never trains without its text), so no rollout is guided.

Dropout stays off in the LLM, so the policy that samples is the policy that is scored (as NeMo advises).
Only the LLM has trainable parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from e2e_tts.models.llm import new_token_limits
from e2e_tts.objectives.policy import (FrozenReference, SamplingObjective, policy_rewards, rollout_log_probs,
                                       sample_rollouts, sampled_kl)
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


def group_advantages(rewards: torch.Tensor, scale: bool, eps: float = 1e-4) -> torch.Tensor:
    """Centres ``rewards (G, K)`` within each group (row), divided by the group's std when ``scale``.

    A group whose samples all score the same gets zero advantages: it carries no signal.
    """
    if rewards.shape[1] < 2:
        raise ValueError(f"a group needs at least 2 samples, got {rewards.shape[1]}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred


def penalise_truncated(rewards: torch.Tensor, ended: torch.Tensor) -> torch.Tensor:
    """Rewards ``(G, K)`` where each rollout that did not end (``ended`` False) gets its group's lowest reward."""
    lowest = rewards.min(dim=1, keepdim=True).values.expand_as(rewards)
    return torch.where(ended, rewards, lowest)


def policy_loss(advantages: torch.Tensor, token_log_probs: torch.Tensor, own: torch.Tensor, loss_type: str,
                max_positions: int) -> torch.Tensor:
    """The policy-gradient loss ``-A_i log pi(y_i,t)`` over the rollouts' own positions, averaged as ``loss_type``
    says (:class:`~e2e_tts.stage.GRPOConfig`).

    Args:
        advantages: ``(N,)`` per rollout, or ``(N, S)`` per position (W3AR's word advantages); token_log_probs:
            ``(N, S)``, 0 outside each rollout's positions; own: ``(N, S)`` those positions (tokens and EOS).
        loss_type: ``grpo`` (mean over each rollout's positions, then over rollouts), ``dr_grpo`` (sum over the
            batch / (N * ``max_positions``)) or ``token`` (mean over all the batch's positions).
        max_positions: the most positions a rollout of the batch could have had (dr_grpo's constant).
    Returns:
        the scalar loss.
    """
    terms = -(advantages if advantages.dim() == 2 else advantages[:, None]) * token_log_probs * own
    if loss_type == "grpo":
        return (terms.sum(1) / own.sum(1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return terms.sum() / (len(advantages) * max_positions)
    return terms.sum() / own.sum().clamp(min=1)


class GRPOObjective(SamplingObjective):
    """``policy_loss(A, log pi) + beta * KL_k3(pi || reference)``, K rollouts per text.

    Args:
        system: the system (only its LLM trains).
        stage: the stage spec (``stage.grpo``, ``stage.kl_beta``).
        config: the run's experiment config, whose synthesis settings lay the rollouts out and decode their audio
            (None: defaults).
    """

    def __init__(self, system: TTSSystem, stage: StageConfig, config: Any = None):
        super().__init__(system)
        self.rewards, settings = policy_rewards(system, stage, config, "grpo")
        self.config, self.synthesis, self.kl_beta = stage.grpo, settings.synthesis, stage.kl_beta
        self.reference = FrozenReference(system.llm) if stage.kl_beta > 0 else None

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system, config, synthesis = self.system, self.config, self.synthesis
        codebook = system.codebook()
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        rollouts = sample_rollouts(system.llm, codebook, batch, speech_ids, speech_mask,
                                   system.tokenizer.config.frames_per_token, config, synthesis)
        scores = self.rewards(rollouts)
        token_log_probs, own = rollout_log_probs(system.llm, codebook, rollouts)
        group = config.num_samples
        reward = penalise_truncated(scores.total.view(-1, group), rollouts.ended.view(-1, group))
        advantages = group_advantages(reward, config.scale_rewards).flatten()
        max_positions = 1 + max(new_token_limits(len(text), synthesis.min_len_ratio, synthesis.max_len_ratio)[1]
                                for text in rollouts.text_ids)  # its tokens and EOS
        total = policy_loss(advantages, token_log_probs, own, config.loss_type, max_positions)

        num_tokens = own.sum()
        metrics = {f"reward_{name}": value.mean().item() for name, value in scores.shaped.items()}
        metrics.update(reward=reward.mean().item(), reward_group_std=reward.std(1).mean().item(),
                       rollout_tokens=sum(len(row) for row in rollouts.speech) / len(rollouts),
                       rollout_eos=rollouts.ended.float().mean().item(),
                       log_prob=(token_log_probs.sum() / num_tokens).item())
        if self.reference is not None:
            with torch.no_grad():
                reference_log_probs, _ = rollout_log_probs(self.reference(system.llm), codebook, rollouts)
            kl = sampled_kl(token_log_probs, reference_log_probs, own)
            total = total + self.kl_beta * kl
            metrics["kl"] = kl.item()
        metrics["loss"] = total.item()
        return total, metrics
