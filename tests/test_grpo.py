"""The grpo objective: advantages and loss normalisations on hand-computed groups, rollouts laid out as synthesis lays
out its rows, what trains and what stays frozen, and rewards on tokens and audio composed in one stage config."""

import dataclasses
from pathlib import Path

import pytest
import torch

from e2e_tts.config import load_config, to_object
from e2e_tts.objectives import grpo as grpo_module
from e2e_tts.objectives.grpo import GRPOObjective, group_advantages, penalise_truncated, policy_loss
from e2e_tts.objectives.policy import rollout_log_probs, sample_rollouts
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.rewards.spec import RewardSpec
from e2e_tts.stage import GRPOConfig, StageConfig
from e2e_tts.synth import Prompt
from post_training import (FAR_CAP, SPEAKERS, lower_half_reward, micro_config, micro_system, system, text_batch,
                           train_on_reward)

REPO = Path(__file__).resolve().parents[1]


def grpo_stage(**grpo) -> StageConfig:
    # Untruncated sampling: an untrained LLM's EOS is seldom in the top k.
    settings = {"num_samples": 4, "reward_weights": {"cer": 1.0, "asr": 1.0, "speaker": 1.0}, "top_k": 0,
                "top_p": 1.0, "temperature": 1.0, **grpo}
    return StageConfig(name="grpo", objective="grpo", trainable=["llm"], grpo=GRPOConfig(**settings))


# A cap far enough that an untrained LLM's rollouts end with EOS (a rollout cut at the cap scores its group's lowest
# reward, so a batch of them all teaches nothing).


def grads_of(module):
    return [p.grad for p in module.parameters() if p.requires_grad]


def test_group_advantages_on_hand_computed_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.9, 0.5], [2.0, 2.0, 2.0, 2.0]])
    centred = torch.tensor([[0.5, -0.5, -0.5, 0.5], [-0.3, -0.1, 0.4, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards, scale=False), centred)
    # divided by each group's (unbiased) standard deviation + 1e-4: sqrt(1/3) and sqrt(0.26/3)
    stds = torch.tensor([[(1 / 3) ** 0.5], [(0.26 / 3) ** 0.5], [0.0]])
    torch.testing.assert_close(group_advantages(rewards, scale=True), centred / (stds + 1e-4))
    assert torch.equal(group_advantages(rewards, scale=True)[2], torch.zeros(4))  # one reward for all: no signal
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(rewards[:, :1], scale=True)


def test_rollouts_cut_at_the_cap_score_their_groups_lowest_reward():
    rewards = torch.tensor([[0.9, 0.2, 0.5], [0.4, 0.6, 0.8]])
    ended = torch.tensor([[False, True, True], [True, True, False]])
    assert torch.equal(penalise_truncated(rewards, ended), torch.tensor([[0.2, 0.2, 0.5], [0.4, 0.6, 0.4]]))


def test_policy_loss_normalisations_on_hand_computed_rollouts():
    """Rollout 0 (A = 1) has 2 positions of log-probability -1 and -2, rollout 1 (A = -0.5) 4 positions: its terms
    -A log p are -0.25, -0.25, -0.5, -1. grpo: mean(3 / 2, -2 / 4) = 0.5; token: (3 - 2) / 6; dr_grpo with 5
    possible positions: (3 - 2) / (2 * 5)."""
    advantages = torch.tensor([1.0, -0.5])
    log_probs = torch.tensor([[-1.0, -2.0, 0.0, 0.0, 0.0], [-0.5, -0.5, -1.0, -2.0, 0.0]])
    own = log_probs != 0
    assert policy_loss(advantages, log_probs, own, "grpo", 5).item() == pytest.approx(0.5)
    assert policy_loss(advantages, log_probs, own, "token", 5).item() == pytest.approx(1 / 6)
    assert policy_loss(advantages, log_probs, own, "dr_grpo", 5).item() == pytest.approx(0.1)
    log_probs.requires_grad_()
    policy_loss(advantages, log_probs, own, "grpo", 5).backward()  # each position weighs -A / (|y| * N)
    expected = torch.tensor([[-0.25, -0.25, 0, 0, 0], [1 / 16, 1 / 16, 1 / 16, 1 / 16, 0]])
    torch.testing.assert_close(log_probs.grad, expected)


def test_rollout_log_probs_score_each_rollout_alone_after_its_own_prompt(system):
    """Batched log-probabilities equal one-row ones (padding of prompts and rollouts changes nothing), and only
    the rollout's own positions count: its tokens, plus its EOS unless it was cut at generate()'s cap."""
    gen = torch.Generator().manual_seed(1)
    prompts = [None] + [random_prompt(n_text, n_speech, gen) for n_text, n_speech in ((3, 6), (5, 2))]
    rollouts = Rollouts(group=1, texts=["a", "b", "c"],
                        text_ids=[torch.randint(0, 256, (n,), generator=gen) for n in (2, 4, 3)],
                        speech=[torch.randint(0, 125, (n,), generator=gen) for n in (7, 5, 12)],
                        ended=torch.tensor([True, True, False]), speakers=["a"] * 3, prompts=prompts,
                        prompt_audio=[None] * 3, llm_prompt=True)
    with torch.no_grad():
        tokens, own = rollout_log_probs(system.llm, system.codebook(), rollouts)
        for row in range(3):
            alone, _ = rollout_log_probs(system.llm, system.codebook(), rollouts.select([row], 1))
            torch.testing.assert_close(alone.sum(), tokens[row].sum(), rtol=1e-4, atol=1e-5)
    assert own.sum(1).tolist() == [8, 6, 12]
    assert own[1].nonzero().flatten().tolist() == list(range(6, 12))  # after the 6 prompt tokens
    assert bool((tokens[~own] == 0).all()) and bool((tokens[own] < 0).all())
    # The LLM reading its text alone: the same rows, no prompt positions.
    _, alone_own = rollout_log_probs(system.llm, system.codebook(), dataclasses.replace(rollouts, llm_prompt=False))
    assert alone_own[1].nonzero().flatten().tolist() == list(range(0, 6))


def random_prompt(n_text, n_speech, gen):
    return Prompt(text_ids=torch.randint(0, 256, (n_text,), generator=gen),
                  speech_ids=torch.randint(0, 125, (n_speech,), generator=gen), mel=torch.zeros(2 * n_speech, 80))


@pytest.mark.parametrize("llm_prompt", [True, False])
@pytest.mark.parametrize("prompt_speaker", ["same", "any"])
def test_rollouts_are_laid_out_as_synthesis_lays_out_its_rows(system, monkeypatch, llm_prompt, prompt_speaker):
    """Each text's prompt is another utterance of the batch (of its speaker, or the next one whoever speaks it):
    the LLM continues its text and true tokens when synthesis.llm_prompt, else reads its text alone; the flow
    always hears its mel (the frames of its tokens), sim gets its audio, and the rollout should sound like its
    speaker."""
    seen = {}
    generate = system.llm.generate
    monkeypatch.setattr(system.llm, "generate", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs)
                        or generate(*args, **kwargs))
    batch = text_batch()
    with torch.no_grad():
        tokens = system.tokenizer.eval()(batch["mel"], batch["mel_mask"])
    speech_ids, speech_mask = tokens.ids, tokens.mask
    config = GRPOConfig(num_samples=2, prompt_speaker=prompt_speaker)
    synthesis = dataclasses.replace(to_object(FAR_CAP.synthesis), llm_prompt=llm_prompt)
    rollouts = sample_rollouts(system.llm, system.codebook(), batch, speech_ids, speech_mask, 2, config, synthesis)
    partners = [2, None, 0] if prompt_speaker == "same" else [1, 2, 0]
    assert rollouts.speakers == [SPEAKERS[t if p is None else p] for t, p in enumerate(partners) for _ in range(2)]
    _, _, prompt_text, prompt_speech = seen["args"]
    for row in range(6):
        partner = partners[row // 2]
        prompt, audio = rollouts.prompts[row], rollouts.prompt_audio[row]
        assert torch.equal(rollouts.text_ids[row], batch["text_ids"][row // 2][batch["text_mask"][row // 2]])
        if partner is None:
            assert prompt is None and audio is None and len(prompt_text[row]) == len(prompt_speech[row]) == 0
            continue
        tokens = speech_ids[partner][speech_mask[partner]]
        assert torch.equal(prompt.speech_ids, tokens)
        assert torch.equal(prompt.mel, batch["mel"][partner, :2 * len(tokens)])
        assert torch.equal(torch.as_tensor(audio), batch["wav"][partner, :int(batch["wav_lengths"][partner])])
        if llm_prompt:
            assert torch.equal(prompt_text[row], prompt.text_ids) and torch.equal(prompt_speech[row], tokens)
        else:
            assert len(prompt_text[row]) == len(prompt_speech[row]) == 0
    assert seen["kwargs"]["max_len_ratio"] == 40.0 and seen["kwargs"]["min_len_ratio"] == 0.5


def test_grpo_trains_only_the_llm_without_dropout(system):
    objective = GRPOObjective(system, grpo_stage(), FAR_CAP).train()
    frozen_before = {name: [p.detach().clone() for p in getattr(system, name).parameters()]
                     for name in ("tokenizer", "flow", "reward")}
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    loss.backward()
    assert not system.llm.training  # the policy that samples is the one scored
    assert sum(float(g.abs().sum()) for g in grads_of(system.llm) if g is not None) > 0, metrics
    for name in ("tokenizer", "flow", "reward"):
        module = getattr(system, name)
        assert all(p.grad is None for p in module.parameters())
        assert all(torch.equal(a, b) for a, b in zip(frozen_before[name], module.parameters()))
    assert 0.0 <= metrics["reward_cer"] <= 1.0 and metrics["reward_asr"] < 0 and 0 < metrics["reward_speaker"] < 1


def test_grpo_raises_the_reward_it_is_given(system, monkeypatch):
    """A sign or masking bug would lower the reward: here, the share of rollout tokens in the codebook's lower
    half (a reward the policy can reach by itself) climbs within a few updates. Sharp sampling makes it quick;
    an untrained LLM then runs to the cap, so the cap's penalty is off."""
    monkeypatch.setattr(grpo_module, "penalise_truncated", lambda rewards, ended: rewards)
    stage = grpo_stage(num_samples=6, reward_weights={"cer": 1.0}, prompt=False, top_k=25, top_p=0.8)
    objective = GRPOObjective(system, stage, FAR_CAP).train()
    monkeypatch.setattr(objective, "rewards", lower_half_reward(system))
    history = train_on_reward(objective, 12, "reward")
    assert sum(history[-3:]) / 3 > sum(history[:3]) / 3 + 0.2, history


def test_grpo_kl_is_zero_at_the_start_and_its_reference_is_in_no_state_dict(system):
    objective = GRPOObjective(system, dataclasses.replace(grpo_stage(), kl_beta=0.05), FAR_CAP).train()
    torch.manual_seed(0)
    _, metrics = objective(text_batch())
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference starts as a copy of the policy
    assert all(key.startswith("system.") for key in objective.state_dict())
    assert [p for p in objective.parameters() if p.requires_grad] == list(system.llm.parameters())
    assert GRPOObjective(system, grpo_stage(), FAR_CAP).reference is None  # no KL by default


@pytest.mark.parametrize("change, match", [
    ({"trainable": ["llm", "flow"]}, "LLM only"),
    ({"grpo": GRPOConfig(reward_weights={"cer": 0.0})}, "no reward with a non-zero weight"),
    ({"grpo": GRPOConfig(rewards={"length": RewardSpec()})}, "gates alone reward nothing"),
    ({"loss_weights": {"asr": 1.0}}, "not losses"),
])
def test_grpo_refuses_inconsistent_stage_specs(system, change, match):
    with pytest.raises(ValueError, match=match):
        GRPOObjective(system, dataclasses.replace(grpo_stage(), **change))


def test_stage_defaults_are_the_methods():
    """Align2Speak: K 12 at temperature 0.7, no KL; the stage spec and the schema agree."""
    spec = to_object(load_config([REPO / "stages" / "grpo.yaml"]).stage)
    assert spec.kl_beta == StageConfig().kl_beta == 0.0
    assert spec.grpo.num_samples == GRPOConfig().num_samples == 12 and spec.grpo.temperature == 0.7
    with pytest.raises(ValueError, match="num_samples"):
        GRPOConfig(num_samples=1)


def test_rewards_on_tokens_and_audio_compose_in_one_grpo_stage(monkeypatch):
    """The reward model's read-back, pocketsphinx's WER of the decoded audio, resemblyzer's similarity to the
    prompt's audio, the quality head and the length gate in one stage config: the stage trains the LLM on them.
    Short rollouts keep pocketsphinx quick (about a second per second of this audio); they run to the cap, whose
    penalty is off, so that the rewards differ within each group."""
    monkeypatch.setattr(grpo_module, "penalise_truncated", lambda rewards, ended: rewards)
    config = micro_config(
        "stage.grpo.num_samples=2", "stage.grpo.rewards.cer.weight=0.2", "stage.grpo.rewards.wer.weight=0.3",
        "stage.grpo.rewards.sim.weight=0.3", "stage.grpo.rewards.quality.weight=0.2",
        "stage.grpo.rewards.length={min_ratio: 0.5, max_ratio: 1}", "data.return_wav=true",
        "synthesis.max_len_ratio=1", "synthesis.griffin_lim_iters=4", files=[REPO / "stages" / "grpo.yaml"])
    system = micro_system(config)
    system.set_trainable(["llm"])
    objective = GRPOObjective(system, to_object(config.stage), config).train()
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    loss.backward()
    assert {"reward_cer", "reward_wer", "reward_sim", "reward_quality", "reward_length"} <= set(metrics)
    assert 0 <= metrics["reward_wer"] <= 1 and 0 < metrics["reward_sim"] <= 1 and 0 < metrics["reward_quality"] < 1
    assert metrics["reward_length"] == 1.0 and metrics["reward_group_std"] > 0
    assert torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in grads_of(system.llm))
