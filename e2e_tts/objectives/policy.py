"""What the objectives that train the LLM on its own samples share (``grpo``, ``dpo``): each text's zero-shot prompt
from the batch, sampling the rollouts as synthesis lays its rows out, their log-probabilities under an LLM, and the
frozen reference LLM.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from e2e_tts.models.llm import new_token_limits
from e2e_tts.objectives.prompting import same_speaker_partners
from e2e_tts.objectives.token_cache import FrozenTokenCache
from e2e_tts.rewards.components import RewardSet
from e2e_tts.rewards.judges import Judges, Settings
from e2e_tts.rewards.rollouts import Rollouts, llm_prompt_rows
from e2e_tts.stage import RolloutConfig, StageConfig
from e2e_tts.synth import Prompt
from e2e_tts.synthesis_config import SynthesisConfig
from e2e_tts.system import TTSSystem


def policy_rewards(system: TTSSystem, stage: StageConfig, config: Any, method: str) -> tuple[RewardSet, Settings]:
    """The checks every objective that trains the LLM on its own samples makes of its stage
    (:func:`policy_settings`), and its rewards.

    Args:
        system: the system; stage: the stage spec, whose ``stage.<method>`` holds the reward specs.
        config: the run's experiment config (its synthesis settings lay the samples out; None: defaults).
        method: the objective's name and its section of the stage spec (``grpo``, ``dpo``).
    Returns:
        the rewards, composed, and the run's settings.
    """
    settings = policy_settings(stage, config, method)
    try:
        return RewardSet(getattr(stage, method).reward_specs(), Judges(system, settings)), settings
    except ValueError as err:
        raise ValueError(f"stage {stage.name!r}: {method}.rewards: {err}") from err


def policy_settings(stage: StageConfig, config: Any, method: str) -> Settings:
    """The checks of :func:`policy_rewards` without the rewards (the LLM alone trains, no loss weights, samples the
    reward model can read), and the run's settings."""
    if list(stage.trainable) != ["llm"]:
        raise ValueError(f"stage {stage.name!r}: the {method} objective trains the LLM only, got {stage.trainable}")
    if stage.loss_weights:
        raise ValueError(f"stage {stage.name!r}: the {method} objective weighs rewards ({method}.rewards), not "
                         f"losses; got loss_weights {dict(stage.loss_weights)}")
    settings = Settings.of(config)
    if not settings.synthesis.min_len_ratio > 0:
        raise ValueError(f"stage {stage.name!r}: {method} samples need synthesis.min_len_ratio > 0 (the reward model "
                         f"reads every sample, and an empty one has nothing to read)")
    return settings


def prompt_partners(speakers: Sequence[str], prompt_speaker: str) -> list[Optional[int]]:
    """For each row, the row whose utterance prompts it, or None: the next row of its speaker (``same``) or the next
    row of the batch (``any``), cyclically."""
    if prompt_speaker == "same":
        return same_speaker_partners(speakers)
    count = len(speakers)
    return [(row + 1) % count if count > 1 else None for row in range(count)]


def batch_prompts(batch: dict[str, Any], speech_ids: torch.Tensor, speech_mask: torch.Tensor,
                  frames_per_token: int, prompt_speaker: str
                  ) -> tuple[list[Optional[Prompt]], list[Optional[np.ndarray]], list[str]]:
    """Each text's zero-shot prompt: another utterance of the batch (:func:`prompt_partners`).

    Args:
        batch: the loader's batch (``text_ids``, ``text_mask``, ``mel``, ``speaker``, ``texts``; ``wav`` and
            ``wav_lengths`` when it carries audio).
        speech_ids, speech_mask: ``(B, T)`` the frozen tokenizer's ids of the batch's utterances.
        frames_per_token: mel frames per speech token.
        prompt_speaker: see :class:`~e2e_tts.stage.RolloutConfig`.
    Returns:
        B prompts (text ids, speech ids, the mel frames of those tokens) or None, B prompt waveforms ``(N_b,)`` or
        None, and the B speakers each text should be spoken by (its prompt's, or its own without one).
    """
    partners = prompt_partners(batch["speaker"], prompt_speaker)
    prompts, audio = [], []
    for partner in partners:
        if partner is None:
            prompts.append(None)
            audio.append(None)
            continue
        tokens = speech_ids[partner][speech_mask[partner]].cpu()
        text = batch["text_ids"][partner][batch["text_mask"][partner]].cpu()
        mel = batch["mel"][partner, :len(tokens) * frames_per_token]
        prompts.append(Prompt(text_ids=text, speech_ids=tokens, mel=mel))
        audio.append(batch["wav"][partner, :int(batch["wav_lengths"][partner])].float().cpu().numpy()
                     if "wav" in batch else None)
    speakers = [batch["speaker"][row if partner is None else partner] for row, partner in enumerate(partners)]
    return prompts, audio, speakers


@torch.no_grad()
def sample_rollouts(llm: nn.Module, codebook: torch.Tensor, batch: dict[str, Any], speech_ids: torch.Tensor,
                    speech_mask: torch.Tensor, frames_per_token: int, config: RolloutConfig,
                    synthesis: SynthesisConfig) -> Rollouts:
    """``config.num_samples`` rollouts of each text of the batch, sampled by ``llm`` with the config's temperature,
    top-k and top-p, laid out and bounded as ``synthesis`` says (the LLM continues the prompt when
    ``synthesis.llm_prompt``; EOS masked below ``min_len_ratio``, a row cut at ``max_len_ratio`` tokens per text id).

    Args:
        llm: the LLM that samples (in eval mode: no dropout); codebook: ``(V, Dc)``.
        batch, speech_ids, speech_mask, frames_per_token: see :func:`batch_prompts`.
    """
    texts = [row[:n].cpu() for row, n in zip(batch["text_ids"], batch["text_mask"].sum(1).tolist())]
    if config.prompt:
        prompts, audio, speakers = batch_prompts(batch, speech_ids, speech_mask, frames_per_token,
                                                 config.prompt_speaker)
    else:
        prompts, audio, speakers = [None] * len(texts), [None] * len(texts), list(batch["speaker"])
    group = config.num_samples

    def repeat(rows: Sequence[Any]) -> list[Any]:
        return [row for row in rows for _ in range(group)]

    text_ids, row_prompts = repeat(texts), repeat(prompts)
    prompt_text, prompt_speech = llm_prompt_rows(row_prompts, synthesis.llm_prompt)
    speech = llm.generate(text_ids, codebook, prompt_text, prompt_speech, temperature=config.temperature,
                          top_k=config.top_k, top_p=config.top_p, min_len_ratio=synthesis.min_len_ratio,
                          max_len_ratio=synthesis.max_len_ratio)
    ended = torch.tensor([len(row) < new_token_limits(len(text), synthesis.min_len_ratio, synthesis.max_len_ratio)[1]
                          for row, text in zip(speech, text_ids)], device=codebook.device)
    return Rollouts(group=group, texts=repeat(batch["texts"]), text_ids=text_ids, speech=speech, ended=ended,
                    speakers=repeat(speakers), prompts=row_prompts, prompt_audio=repeat(audio),
                    llm_prompt=synthesis.llm_prompt)


def rollout_log_probs(llm: nn.Module, codebook: torch.Tensor, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the rollouts under ``llm``, teacher-forced after the prompts they were sampled behind.

    Args:
        llm: the policy or the reference; codebook: ``(V, Dc)``.
        rollouts: N rows.
    Returns:
        per-position log-probabilities ``(N, S + 1)``, 0 outside each rollout's own positions, and the bool mask of
        those positions ``(N, S + 1)``: its tokens, then its EOS if it emitted one (a row cut at the cap did not).
    """
    prompt_text, prompt_speech = rollouts.llm_prompts()
    out, prompt_len = llm.forward_after_prompts(prompt_text, rollouts.text_ids, prompt_speech, rollouts.speech,
                                                codebook)
    prompt_len = prompt_len[:, None]
    rollout_len = torch.tensor([len(r) for r in rollouts.speech], device=prompt_len.device)[:, None]
    ended = rollouts.ended.to(prompt_len.device)[:, None]
    steps = torch.arange(out.logits.shape[1], device=prompt_len.device)[None, :]
    # Positions P..P+T-1 predict the rollout's tokens, P+T its EOS.
    own = (steps >= prompt_len) & ((steps < prompt_len + rollout_len) | ((steps == prompt_len + rollout_len) & ended))
    targets = out.targets.clamp(min=0)[..., None]
    token_log_probs = out.logits.float().log_softmax(-1).gather(-1, targets).squeeze(-1) * own
    return token_log_probs, own


def sampled_kl(token_log_probs: torch.Tensor, reference_log_probs: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) on sampled tokens, ``exp(r) - r - 1`` with ``r = log ref - log pi``
    (unbiased, never negative), averaged over the rollouts' own positions.

    Args:
        token_log_probs, reference_log_probs: ``(N, S)`` per-position log-probabilities under the policy and the
            reference (:func:`rollout_log_probs`); own: ``(N, S)`` bool, the positions that count.
    Returns:
        the scalar estimate.
    """
    log_ratio = reference_log_probs - token_log_probs
    return ((log_ratio.exp() - log_ratio - 1) * own).sum() / own.sum()


class FrozenReference:
    """A frozen copy of the starting LLM, held outside the objective's module tree: it is in no state dict, so no
    checkpoint or export holds it, and no optimizer or ZeRO partition sees it. A resumed run rebuilds it from the
    stage's ``init_from`` export, as the first run did.

    Args:
        llm: the LLM to copy, before training changes it.
    """

    def __init__(self, llm: nn.Module):
        self._llm = copy.deepcopy(llm).requires_grad_(False).eval()

    def __call__(self, policy: nn.Module) -> nn.Module:
        """The copy on the device and in the dtype of ``policy``'s weights (DeepSpeed moves and casts the objective
        after it is built), in eval mode."""
        weight = next(policy.parameters())
        return self._llm.to(device=weight.device, dtype=weight.dtype).eval()


class SamplingObjective(nn.Module):
    """What every objective that trains the LLM on its own samples (grpo, dpo, distill, w3ar) holds: the system (a
    submodule, so DeepSpeed sees its parameters), the frozen tokenizer's ids of the batch's utterances (the prompts
    its samples follow) and the update count the loop sets. In training the LLM stays in eval mode: without dropout
    the policy that samples, and that a reference is compared with, is the one scored.

    Args:
        system: the system (only its LLM trains).
    """

    def __init__(self, system: TTSSystem):
        super().__init__()
        self.system = system
        self.frozen_tokens = FrozenTokenCache(system.tokenizer)
        self.step = 0

    def train(self, mode: bool = True) -> "SamplingObjective":
        super().train(mode)
        self.system.llm.eval()
        return self
