"""The distill stage: best-of-N self-verification distilled into single-shot sampling (Reliable Neural-Codec TTS by ASR
Self-Verification and Distillation, ../shared/METHODS.md section 5).

Codec-LM failures (dropout, early stop, looping, hallucinated content) are stochastic: of N samples of a text one is
usually right, and a verifier finds it. This stage teaches the LLM to produce that one at the first try. For each
text of the batch ``distill.num_samples`` candidates (N, 8) are sampled, by the frozen starting LLM (``candidates_from:
reference``: offline distillation of the base model's best-of-N, drawn afresh each time a text comes round) or by the
LLM in training (``policy``: the online iterative variant, regenerate -> verify -> retrain at every update), laid out
as the run's synthesis lays out its rows (e2e_tts.objectives.policy), and the stage's rewards judge them: they are the
verifier. The paper's verifier is Whisper's WER of the audio; the stage's default is the frozen reward model reading
the tokens (reward ``cer``: 1 - its CTC read-back's id error rate), which decodes nothing and is not the evaluation's
recogniser, behind the ``length`` gate.

A candidate is a dropout when a gate zeroes it (too few or too many speech tokens for its text) or generate() cut it at
its cap without EOS (looping); a dropout never wins. Each text's winner is its best-rewarded non-dropout, ties to the
earlier candidate (the rule of best-of-N at synthesis, e2e_tts.best_of_n, on rewards), kept as a target when it
passes the verifier (reward >= ``pass_reward``): the paper's verified winners. With ``only_failed``, only the texts
whose single-shot sample (the first candidate) fails the verifier keep theirs (the paper's option of the prompts the
base model fails). The loss is the kept winners' teacher-forced cross-entropy per position: minus the mean
log-probability of their tokens and EOS behind the prompt they were sampled behind (rollout_log_probs).

The paper fine-tunes Llasa-1B with LoRA on its verified winners (hard-set single-shot failure rate 0.199 -> 0.096,
about half of best-of-N's gain); its learning rate and N are not published. N = 8 here, past the N = 4 at which the
paper's hard set stops failing. Dropout stays off in the LLM, so that the loss is minus the winners' logged
log-probability and the online variant samples with the policy it trains. Only the LLM has trainable parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from e2e_tts.objectives.policy import (FrozenReference, SamplingObjective, policy_rewards, rollout_log_probs,
                                       sample_rollouts)
from e2e_tts.rewards.components import RewardScores
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


def select_winners(reward: torch.Tensor, usable: torch.Tensor, pass_reward: float,
                   only_failed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text's winner among its candidates, and whether it is kept as a target.

    Args:
        reward: ``(G, K)`` the rewards of G texts' K candidates, in sampling order.
        usable: ``(G, K)`` bool: False for a dropout.
        pass_reward: a candidate passes the verifier when its reward is at least this.
        only_failed: keep a winner only where the text's first candidate fails (a dropout, or below ``pass_reward``).
    Returns:
        the winners ``(G,)``: each text's best usable candidate, the earliest of equal rewards (0 when none is usable),
        and kept ``(G,)`` bool: the text has a usable winner that passes (and, with ``only_failed``, a failing first
        candidate).
    """
    masked = reward.masked_fill(~usable, float("-inf"))
    winners = masked.argmax(1)  # the first of equal maxima
    kept = masked.gather(1, winners[:, None]).squeeze(1) >= pass_reward  # -inf where no candidate is usable
    if only_failed:
        kept = kept & ~(usable[:, 0] & (reward[:, 0] >= pass_reward))
    return winners, kept


class DistillObjective(SamplingObjective):
    """Cross-entropy on each text's verified best of ``num_samples`` candidates (see the module docstring).

    Args:
        system: the system (only its LLM trains).
        stage: the stage spec (``stage.distill``).
        config: the run's experiment config, whose synthesis settings lay the candidates out and decode their audio
            (None: defaults).
    Raises:
        ValueError: for a kl_beta, or rewards without a gate (a dropout could win).
    """

    def __init__(self, system: TTSSystem, stage: StageConfig, config: Any = None):
        super().__init__(system)
        self.rewards, settings = policy_rewards(system, stage, config, "distill")
        if stage.kl_beta:
            raise ValueError(f"stage {stage.name!r}: the distill objective takes no kl_beta: it trains on samples of "
                             f"the LLM, which keep it near itself")
        self.gates = [component.name for component in self.rewards.components if component.gate]
        if not self.gates:
            raise ValueError(f"stage {stage.name!r}: distill.rewards needs a gate (length: {{}}), so that a dropout "
                             f"never wins")
        self.config, self.synthesis = stage.distill, settings.synthesis
        self.reference = FrozenReference(system.llm) if stage.distill.candidates_from == "reference" else None


    def usable(self, scores: RewardScores, ended: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: the candidate ended with EOS and every gate let it through."""
        return ended & torch.stack([scores.shaped[name] > 0 for name in self.gates]).all(0)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system, config = self.system, self.config
        codebook = system.codebook()
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        sampler = system.llm if self.reference is None else self.reference(system.llm)
        candidates = sample_rollouts(sampler, codebook, batch, speech_ids, speech_mask,
                                     system.tokenizer.config.frames_per_token, config, self.synthesis)
        scores = self.rewards(candidates)
        group = config.num_samples
        reward = scores.total.view(-1, group)
        usable = self.usable(scores, candidates.ended.to(reward.device)).view(-1, group)
        winners, kept = select_winners(reward, usable, config.pass_reward, config.only_failed)
        texts = len(winners)
        chosen = candidates.select((torch.arange(texts, device=winners.device) * group + winners).tolist(), group=1)

        # Every text's winner is scored, so that a batch without a kept one still gives a loss in the graph (zero).
        log_probs, own = rollout_log_probs(system.llm, codebook, chosen)
        targets = own & kept[:, None].to(own.device)
        total = -(log_probs * targets).sum() / targets.sum().clamp(min=1)

        count = max(int(kept.sum()), 1)
        first_passed = usable[:, 0] & (reward[:, 0] >= config.pass_reward)
        metrics = {f"reward_{name}": value.mean().item() for name, value in scores.shaped.items()}
        metrics.update(reward=reward.mean().item(), reward_first=reward[:, 0].mean().item(),
                       reward_winner=(reward.gather(1, winners[:, None]).squeeze(1) * kept).sum().item() / count,
                       kept=kept.float().mean().item(), kept_texts=float(kept.sum()),
                       first_failed=1 - first_passed.float().mean().item(),
                       dropouts=1 - usable.float().mean().item(),
                       rollout_tokens=sum(len(row) for row in candidates.speech) / len(candidates),
                       rollout_eos=candidates.ended.float().mean().item(),
                       winner_tokens=sum(len(chosen.speech[t]) for t in range(texts) if kept[t]) / count,
                       loss=total.item())
        return total, metrics
