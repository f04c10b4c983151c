"""The w3ar stage: policy gradient with word-level advantages read from a recogniser's attention (W3AR, Wang and Sun,
AAAI 2026, arXiv 2511.17555; ../shared/METHODS.md section 4).

GRPO gives every token of a rollout one advantage, so a rollout that says nine words well and stutters on the tenth
pushes all ten the same way. W3AR scores each word: the frozen reward model's attention decoder, teacher-forced on
the text over the rollout's speech tokens, should attend to few frames for each word (purity) and move forward from
word to word (monotonicity); ``R_w = 0.5 P_w + 0.5 M_w`` with the paper's window W = 6 and slope beta = 0.1
(e2e_tts.rewards.w3ar). For each text of the batch the LLM samples ``N`` rollouts (``w3ar.num_samples``, the paper's
8), laid out as the run's synthesis lays out its rows (e2e_tts.objectives.policy); a word's advantage in rollout
``n`` is ``R_w^(n)`` minus the mean of ``R_w`` over the text's ``N`` rollouts (no division by the std, as the paper).

From words to speech tokens (the paper does not say how; this is our design): each speech token takes the advantage
of the word whose attention on it is the largest (:func:`~e2e_tts.rewards.w3ar.token_owners`). A token that no word
attends to more than uniformly (a silence, a babble no word reads) and the EOS take the rollout's sequence advantage,
the mean of its word advantages, which is also the group-centred mean word reward: giving them 0 would leave a
babble after the last word, which is exactly what the reward should punish, unpunished. A rollout cut at
generate()'s cap without EOS gets its group's lowest reward for every word, as grpo's get the lowest sequence
reward.

The loss (the paper's ``L_train + L_RL + gamma KL``)::

    ce_weight * CE(LLM | the batch's utterances, teacher-forced)     (as the separate stage's LLM loss)
    - mean over the sampled tokens and EOS of A_token * log pi(token)  (one on-policy update: PPO's ratio is 1)
    + kl_beta * KL_k3(pi || reference) on the sampled tokens          (as grpo's; the paper's gamma = 0.1)

The paper trains CosyVoice at lr 2e-5 (AdamW, cosine, 2,000 warm-up steps). Dropout stays off in the LLM, so the
policy that samples is the policy that is scored; only the LLM trains.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from e2e_tts.objectives.grpo import group_advantages, penalise_truncated, policy_loss
from e2e_tts.objectives.policy import (FrozenReference, SamplingObjective, policy_settings, rollout_log_probs,
                                       sample_rollouts, sampled_kl)
from e2e_tts.rewards.judges import Judges, Judging
from e2e_tts.rewards.w3ar import WordScores, rollout_word_scores, token_owners
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem
from e2e_tts.text import word_index


def word_advantages(scores: Sequence[WordScores], ended: torch.Tensor, group: int) -> list[torch.Tensor]:
    """Each word's group-relative advantage.

    Args:
        scores: ``N = G * group`` rollouts' word scores, ``group`` per text (a text's rollouts share its words).
        ended: ``(N,)`` bool: the rollout emitted EOS (one that did not scores its group's lowest reward per word).
        group: rollouts per text.
    Returns:
        N ``(W_n,)`` advantages: ``R_w`` minus its mean over the text's rollouts.
    """
    advantages = []
    for start in range(0, len(scores), group):
        rewards = torch.stack([words.reward for words in scores[start:start + group]]).T  # (W, group)
        rewards = penalise_truncated(rewards, ended[start:start + group][None].expand_as(rewards))
        advantages.extend(group_advantages(rewards, scale=False).T)
    return advantages


def token_advantages(words: WordScores, advantages: torch.Tensor) -> torch.Tensor:
    """``(T + 1,)`` the advantage of each of a rollout's ``T`` speech tokens, then of its EOS: the advantage of the
    word that attends to the token most, or the sequence advantage (the words' mean) where no word reads it, and at
    EOS.

    Args:
        words: the rollout's word scores (its words' attention ``(W, T)``); advantages: ``(W,)`` its words'.
    """
    owners = token_owners(words.attention)
    sequence = advantages.mean()
    per_token = torch.where(owners >= 0, advantages[owners.clamp(min=0)], sequence)
    return torch.cat([per_token, sequence[None]])


class W3ARObjective(SamplingObjective):
    """``ce_weight * CE + policy_loss(A_token, log pi) + kl_beta * KL_k3(pi || reference)``, N rollouts per text.

    Args:
        system: the system (only its LLM trains).
        stage: the stage spec (``stage.w3ar``, ``stage.kl_beta``).
        config: the run's experiment config, whose synthesis settings lay the rollouts out (None: defaults).
    """

    def __init__(self, system: TTSSystem, stage: StageConfig, config: Any = None):
        super().__init__(system)
        settings = policy_settings(stage, config, "w3ar")
        try:
            word_index(system.text_tokenizer, "a b")
        except ValueError as err:
            raise ValueError(f"stage {stage.name!r}: the w3ar objective scores words: {err}") from err
        self.config, self.synthesis, self.kl_beta = stage.w3ar, settings.synthesis, stage.kl_beta
        self.judges = Judges(system, settings)
        self.reference = FrozenReference(system.llm) if stage.kl_beta > 0 else None

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system, config, llm = self.system, self.config, self.system.llm
        codebook = system.codebook()
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        rollouts = sample_rollouts(llm, codebook, batch, speech_ids, speech_mask,
                                   system.tokenizer.config.frames_per_token, config, self.synthesis)
        with torch.no_grad():
            scores = rollout_word_scores(Judging(rollouts, self.judges, reward_forward=True), config.word)
        token_log_probs, own = rollout_log_probs(llm, codebook, rollouts)
        advantages = torch.zeros_like(token_log_probs)
        # A rollout's own positions are its tokens then its EOS, in order; one cut at the cap has no EOS.
        advantages[own] = torch.cat([token_advantages(words, word_advantage)[:int(count)]
                                     for words, word_advantage, count in zip(
                                         scores, word_advantages(scores, rollouts.ended, config.num_samples),
                                         own.sum(1))]).to(advantages.dtype)
        policy = policy_loss(advantages, token_log_probs, own, "token", max_positions=1)  # token: no max needed
        total = policy
        metrics = {"policy_loss": policy.item()}
        if config.ce_weight > 0:
            own_utterances = llm(batch["text_ids"], batch["text_mask"], speech_ids, speech_mask, codebook)
            ce = llm.loss(own_utterances)
            total = total + config.ce_weight * ce
            metrics["llm_nll"] = ce.item()

        claimed = torch.cat([token_owners(words.attention) >= 0 for words in scores]).float().mean()
        mean_of = {name: torch.stack([getattr(words, name).mean() for words in scores]).mean().item()
                   for name in ("reward", "purity", "monotonicity")}  # per rollout, as the w3ar reward kind
        metrics.update(**mean_of,
                       claimed_tokens=claimed.item(),
                       rollout_tokens=sum(len(row) for row in rollouts.speech) / len(rollouts),
                       rollout_eos=rollouts.ended.float().mean().item(),
                       log_prob=(token_log_probs.sum() / own.sum()).item())
        if self.reference is not None:
            with torch.no_grad():
                reference_log_probs, _ = rollout_log_probs(self.reference(llm), codebook, rollouts)
            kl = sampled_kl(token_log_probs, reference_log_probs, own)
            total = total + self.kl_beta * kl
            metrics["kl"] = kl.item()
        metrics["loss"] = total.item()
        return total, metrics
