"""The grpo stage: group-relative policy optimisation of the LLM on its own samples (Align2Speak).

The e2e stage relaxes the LLM's teacher-forced distributions; synthesis runs the LLM free. Here, for each
text of the batch, the LLM samples ``K`` token sequences the way synthesis does (zero-shot prompted with
another utterance of the same speaker, KV cache, top-k/top-p), and the frozen reward model scores each:

    r = w_cer * (1 - CER of its greedy CTC read-back) + w_asr * mean log P(text | tokens) + w_speaker * P(speaker)

A rollout cut at generate()'s cap without EOS scores its group's lowest reward. The advantage of a sample is
its reward minus its group's mean (divided by the group's standard deviation with ``scale_rewards``). The loss
is ``-A * log-probability`` of each sampled token (and EOS), averaged over all tokens of the batch (DAPO's
token-level mean): one on-policy update per rollout, so PPO's ratio is 1 and its clip never binds.
``kl_beta > 0`` adds the k3 estimate of KL(policy || reference) on the sampled tokens (Align2Speak drops it).

Why token-level and the cap penalty: GRPO's per-rollout mean divides a long rollout's penalty among more tokens
(Dr. GRPO), and a rollout cut at the cap has no EOS to be penalised. Neither is enough alone, though: on the tiny
recipe, without KL, the LLM stops saying EOS and its samples flatten (mean log-probability -2 -> -5) within 30
updates at lr 2e-4 and within 140 at lr 1e-4; with ``kl_beta`` 0.1 it trains 300 updates at lr 2e-4 without a
sign of it (recipes/tiny/README.md). Align2Speak drops the KL at lr 2e-7.

Dropout stays off in the LLM, so the policy that samples is the policy that is scored (as NeMo advises).
Only the LLM has trainable parameters.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from e2e_tts.models.llm import MAX_LEN_RATIO, MIN_LEN_RATIO, new_token_limits
from e2e_tts.models.masks import pad_rows
from e2e_tts.objectives.prompting import same_speaker_partners
from e2e_tts.objectives.token_cache import FrozenTokenCache
from e2e_tts.scoring.wer import id_error_rates
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem

REWARDS = ("cer", "asr", "speaker")


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


class GRPOObjective(nn.Module):
    """``-sum_i,t A_i log pi(y_i,t) / sum_i |y_i| + beta * KL_k3(pi || reference)``, K rollouts per text."""

    def __init__(self, system: TTSSystem, stage: StageConfig):
        super().__init__()
        if list(stage.trainable) != ["llm"]:
            raise ValueError(f"stage {stage.name!r}: the grpo objective trains the LLM only, got {stage.trainable}")
        config = stage.grpo
        unknown = set(config.reward_weights) - set(REWARDS)
        if unknown:
            raise ValueError(f"stage {stage.name!r}: unknown reward weight(s) {sorted(unknown)}; known: {REWARDS}")
        self.weights = {k: float(w) for k, w in config.reward_weights.items() if w != 0}
        if not self.weights:
            raise ValueError(f"stage {stage.name!r}: grpo.reward_weights names no non-zero reward; known: {REWARDS}")
        if stage.loss_weights:
            raise ValueError(f"stage {stage.name!r}: the grpo objective weights rewards (grpo.reward_weights), "
                             f"not losses; got loss_weights {dict(stage.loss_weights)}")
        if config.num_samples < 2:
            raise ValueError(f"stage {stage.name!r}: grpo.num_samples must be >= 2, got {config.num_samples}")
        if "speaker" in self.weights and system.reward.num_speakers == 0:
            raise ValueError(f"stage {stage.name!r}: a speaker reward needs the reward model's speaker head, which "
                             f"this system has not (no training speakers)")
        self.system, self.config, self.kl_beta = system, config, stage.kl_beta
        self.reference = copy.deepcopy(system.llm).requires_grad_(False).eval() if stage.kl_beta > 0 else None
        self.frozen_tokens = FrozenTokenCache(system.tokenizer)
        self.step = 0

    def train(self, mode: bool = True) -> "GRPOObjective":
        super().train(mode)
        self.system.llm.eval()  # no dropout: the sampling policy is the scored one
        if self.reference is not None:
            self.reference.eval()
        return self

    def rewards(self, samples: torch.Tensor, sample_mask: torch.Tensor, text_ids: torch.Tensor,
                text_mask: torch.Tensor, speakers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The weighted reward terms of rollouts, from the frozen reward model.

        Args:
            samples: speech ids ``(N, T)``, zero at padding; ``sample_mask`` ``(N, T)``, no empty row.
            text_ids, text_mask: the texts ``(N, L)`` the rollouts speak.
            speakers: N speaker names.
        Returns:
            reward name -> ``(N,)`` for each weighted reward.
        """
        reward_model, codebook = self.system.reward, self.system.codebook()
        terms: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            encoded = None
            if "asr" in self.weights or "speaker" in self.weights:
                speaker = self.system.speaker_ids(speakers, samples.device)
                out = reward_model(samples, sample_mask, codebook, text_ids, text_mask, speaker=speaker)
                encoded = out.encoded
                if "asr" in self.weights:
                    terms["asr"] = out.text_log_prob.float() / (text_mask.sum(1) + 1)  # reference ids plus eos
                if "speaker" in self.weights:
                    terms["speaker"] = out.label_log_probs["speaker"].float().exp() * (speaker >= 0)
            if "cer" in self.weights:
                if encoded is None:
                    encoded = reward_model.encode(samples, sample_mask, codebook)
                readings = reward_model.greedy_ctc(encoded, sample_mask)
                references = [row[:n] for row, n in zip(text_ids.tolist(), text_mask.sum(1).tolist())]
                rates = id_error_rates(references, readings)["per"]
                terms["cer"] = 1.0 - torch.tensor(rates, device=samples.device).div(100.0).clamp(max=1.0)
        return {name: terms[name] for name in self.weights}

    def rollout_log_probs(self, llm: nn.Module, prompt_text: Sequence[torch.Tensor], texts: Sequence[torch.Tensor],
                          prompt_speech: Sequence[torch.Tensor], rollouts: Sequence[torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities of rollouts under ``llm``, teacher-forced after the prompts they were sampled with.

        Args:
            llm: the policy or the reference.
            prompt_text, texts, prompt_speech, rollouts: N 1-D id rows each (prompts may be empty).
        Returns:
            per-position log-probabilities ``(N, S + 1)`` (0 outside the rollout), the bool mask of each
            rollout's own positions ``(N, S + 1)``: its tokens, then its EOS if it emitted one, and whether it
            did ``(N,)`` (a rollout cut at generate()'s cap did not).
        """
        codebook = self.system.codebook()
        device = codebook.device
        out, prompt_len = llm.forward_after_prompts(prompt_text, texts, prompt_speech, rollouts, codebook)
        prompt_len = prompt_len[:, None]
        rollout_len = torch.tensor([len(r) for r in rollouts], device=device)[:, None]
        ended = torch.tensor([len(r) < new_token_limits(len(t), MIN_LEN_RATIO, MAX_LEN_RATIO)[1]
                              for r, t in zip(rollouts, texts)], device=device)
        steps = torch.arange(out.logits.shape[1], device=device)[None, :]
        # Positions Q..Q+T-1 predict the rollout's tokens, Q+T its EOS.
        own = (steps >= prompt_len) & ((steps < prompt_len + rollout_len)
                                       | ((steps == prompt_len + rollout_len) & ended[:, None]))
        targets = out.targets.clamp(min=0)[..., None]
        token_log_probs = out.logits.float().log_softmax(-1).gather(-1, targets).squeeze(-1) * own
        return token_log_probs, own, ended

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        system, config = self.system, self.config
        codebook, device = system.codebook(), batch["text_ids"].device
        speech_ids, speech_mask = self.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
        texts = [row[:n] for row, n in zip(batch["text_ids"], batch["text_mask"].sum(1).tolist())]
        true_speech = [row[:n] for row, n in zip(speech_ids, speech_mask.sum(1).tolist())]
        partners = same_speaker_partners(batch["speaker"]) if config.prompt else [None] * len(texts)
        empty = texts[0].new_zeros(0)
        group = config.num_samples

        def repeat(rows: Sequence[Any]) -> list[Any]:
            return [row for row in rows for _ in range(group)]

        prompt_text = repeat([empty if p is None else texts[p] for p in partners])
        prompt_speech = repeat([empty if p is None else true_speech[p] for p in partners])
        rollout_texts, speakers = repeat(texts), repeat(batch["speaker"])
        rollouts = system.llm.generate(rollout_texts, codebook, prompt_text, prompt_speech,
                                       temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                                       min_len_ratio=MIN_LEN_RATIO, max_len_ratio=MAX_LEN_RATIO)

        samples, sample_mask = pad_rows(rollouts, device)
        text_ids, text_mask = pad_rows(rollout_texts, device)
        terms = self.rewards(samples, sample_mask, text_ids, text_mask, speakers)
        token_log_probs, own, ended = self.rollout_log_probs(system.llm, prompt_text, rollout_texts, prompt_speech,
                                                             rollouts)
        reward = penalise_truncated(sum(self.weights[k] * v for k, v in terms.items()).view(-1, group),
                                    ended.view(-1, group))
        advantages = group_advantages(reward, config.scale_rewards).flatten()
        num_tokens = own.sum()
        total = -(advantages[:, None] * token_log_probs).sum() / num_tokens

        metrics = {f"reward_{k}": v.mean().item() for k, v in terms.items()}
        metrics.update(reward=reward.mean().item(), reward_group_std=reward.std(1).mean().item(),
                       rollout_tokens=sample_mask.sum(1).float().mean().item(),
                       rollout_eos=ended.float().mean().item(),
                       log_prob=(token_log_probs.sum() / num_tokens).item())
        if self.reference is not None:
            with torch.no_grad():
                reference_log_probs, _, _ = self.rollout_log_probs(self.reference, prompt_text, rollout_texts,
                                                                   prompt_speech, rollouts)
            log_ratio = reference_log_probs - token_log_probs
            kl = ((log_ratio.exp() - log_ratio - 1) * own).sum() / num_tokens
            total = total + self.kl_beta * kl
            metrics["kl"] = kl.item()
        metrics["loss"] = total.item()
        return total, metrics
