"""The dpo objective: sequence log-probabilities against a row-by-row computation (the mask test), DPO and IPO losses
on hand-computed pairs, best-versus-worst pairs, a margin that rises, and a reference that stays frozen and is saved
nowhere."""

import dataclasses
from pathlib import Path

import pytest
import torch

from e2e_tts.objectives import dpo as dpo_module
from e2e_tts.objectives.dpo import DPOObjective, preference_loss
from e2e_tts.objectives.policy import rollout_log_probs
from e2e_tts.rewards.components import RewardScores
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.stage import DPOConfig, StageConfig
from e2e_tts.synth import Prompt
from e2e_tts.train import train
from post_training import (FAR_CAP, check_exact_resume, lower_half_reward, micro_config, stage_start, system,
                           text_batch, train_on_reward)

REPO = Path(__file__).resolve().parents[1]


def dpo_stage(**dpo) -> StageConfig:
    settings = {"num_samples": 3, "reward_weights": {"cer": 1.0}, "top_k": 0, "top_p": 1.0, **dpo}
    return StageConfig(name="dpo", objective="dpo", trainable=["llm"], dpo=DPOConfig(**settings))


def test_sequence_log_probability_sums_exactly_each_sequences_tokens_and_eos(system):
    """The DPO mask test: batched (prompts, texts and sequences of different lengths, padded) against each sequence
    alone, its log-probabilities read off the LLM's logits position by position: every token after the prompt, then
    EOS (id V) when the sequence ended; nothing of the text, the prompt or the padding."""
    gen = torch.Generator().manual_seed(3)
    prompts = [None, Prompt(torch.randint(0, 256, (4,), generator=gen), torch.randint(0, 125, (6,), generator=gen),
                            torch.zeros(12, 80)), None,
               Prompt(torch.randint(0, 256, (2,), generator=gen), torch.randint(0, 125, (3,), generator=gen),
                      torch.zeros(6, 80))]
    rollouts = Rollouts(group=1, texts=["t"] * 4, text_ids=[torch.randint(0, 256, (n,), generator=gen)
                                                            for n in (5, 2, 9, 3)],
                        speech=[torch.randint(0, 125, (n,), generator=gen) for n in (4, 11, 1, 7)],
                        ended=torch.tensor([True, False, True, True]), speakers=["a"] * 4, prompts=prompts,
                        prompt_audio=[None] * 4, llm_prompt=True)
    codebook, eos = system.codebook(), system.codebook().shape[0]
    with torch.no_grad():
        token_log_probs, own = rollout_log_probs(system.llm, codebook, rollouts)
        for row, prompt in enumerate(prompts):
            prompt_text = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.text_ids
            prompt_speech = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.speech_ids
            text = torch.cat([prompt_text, rollouts.text_ids[row]])[None]
            speech = torch.cat([prompt_speech, rollouts.speech[row]])[None]
            logits = system.llm(text, torch.ones_like(text, dtype=torch.bool), speech,
                                torch.ones_like(speech, dtype=torch.bool), codebook).logits[0]
            log_probs = logits.log_softmax(-1)
            start = len(prompt_speech)
            expected = sum(log_probs[start + t, token].item() for t, token in enumerate(rollouts.speech[row].tolist()))
            if rollouts.ended[row]:
                expected += log_probs[start + len(rollouts.speech[row]), eos].item()
            assert token_log_probs[row].sum().item() == pytest.approx(expected, rel=1e-4, abs=1e-4), row
    assert own.sum(1).tolist() == [5, 11, 2, 8]  # tokens, plus EOS where the sequence ended


def test_dpo_and_ipo_losses_on_hand_computed_pairs():
    """Pair 0: h = (-10 + 11) - (-12 + 11) = 2; pair 1: h = (-9 + 8) - (-8 + 8) = -1. With beta 0.5, DPO is
    log(1 + exp(-beta h)) and IPO (h - 1 / (2 beta))^2."""
    policy_chosen, policy_rejected = torch.tensor([-10.0, -9.0]), torch.tensor([-12.0, -8.0])
    reference_chosen, reference_rejected = torch.tensor([-11.0, -8.0]), torch.tensor([-11.0, -8.0])
    losses, h = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.5, "dpo")
    torch.testing.assert_close(h, torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(losses, torch.log1p(torch.exp(torch.tensor([-1.0, 0.5]))))
    losses, _ = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, 0.5, "ipo")
    torch.testing.assert_close(losses, torch.tensor([1.0, 4.0]))


def test_pairs_are_each_texts_best_and_worst_candidates(system, monkeypatch):
    """Three texts of three candidates with rewards (0.1, 0.9, 0.5), (0.3, 0.3, 0.3) and (0.7, 0.2, 0.2): text 0
    pairs its candidate 1 over 0, text 1 gives no pair, text 2 pairs 0 over 1. At the start the policy is the
    reference: h = 0, the DPO loss is log 2."""
    monkeypatch.setattr(dpo_module, "penalise_truncated", lambda rewards, ended: rewards)
    objective = DPOObjective(system, dpo_stage(), FAR_CAP).train()
    totals = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.3, 0.3, 0.7, 0.2, 0.2])
    candidates, scored = [], []
    monkeypatch.setattr(objective, "rewards", lambda rollouts: candidates.append(rollouts) or RewardScores(
        total=totals, shaped={"cer": totals}, raw={"cer": totals}))
    log_probs = dpo_module.rollout_log_probs
    monkeypatch.setattr(dpo_module, "rollout_log_probs", lambda llm, codebook, pairs: scored.append(pairs)
                        or log_probs(llm, codebook, pairs))
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    pairs = scored[0]
    assert pairs.speech == [candidates[0].speech[row] for row in (1, 3, 6, 0, 3, 7)]  # chosen, then rejected
    assert pairs.texts == ["Set an alarm.", "Call me.", "It is windy."] * 2
    assert metrics["pairs"] == pytest.approx(2 / 3)
    assert metrics["reward_chosen"] == pytest.approx(0.8) and metrics["reward_rejected"] == pytest.approx(0.15)
    assert metrics["margin"] == pytest.approx(0.0, abs=1e-6) and metrics["accuracy"] == 0.0
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)


def test_dpo_raises_the_margin_of_the_reward_it_is_given(system, monkeypatch):
    """A sign or pairing bug would lower it: with candidates ranked by their share of tokens in the codebook's
    lower half, the policy's log-ratio of chosen over rejected climbs above the reference's within a few updates,
    while the reference, which samples the candidates, stays as it was."""
    monkeypatch.setattr(dpo_module, "penalise_truncated", lambda rewards, ended: rewards)
    objective = DPOObjective(system, dpo_stage(num_samples=4, beta=0.5), FAR_CAP).train()
    monkeypatch.setattr(objective, "rewards", lower_half_reward(system))
    reference = [p.detach().clone() for p in objective.reference(system.llm).parameters()]
    margins = train_on_reward(objective, 8, "margin")
    assert margins[0] == pytest.approx(0.0, abs=1e-6) and sum(margins[-3:]) / 3 > 0.5, margins
    assert all(torch.equal(a, b) for a, b in zip(reference, objective.reference(system.llm).parameters()))


def test_the_reference_is_frozen_and_in_no_state_dict(system):
    objective = DPOObjective(system, dpo_stage(), FAR_CAP)
    assert all(key.startswith("system.") for key in objective.state_dict())
    assert [p for p in objective.parameters() if p.requires_grad] == list(system.llm.parameters())
    reference = objective.reference(system.llm)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(reference.parameters(), system.llm.parameters()))


@pytest.mark.parametrize("change, match", [
    ({"trainable": ["llm", "flow"]}, "LLM only"),
    ({"kl_beta": 0.1}, "takes no kl_beta"),
    ({"loss_weights": {"llm": 1.0}}, "not losses"),
    ({"dpo": DPOConfig(reward_weights={"cer": 0.0})}, "no reward with a non-zero weight"),
])
def test_dpo_refuses_inconsistent_stage_specs(system, change, match):
    with pytest.raises(ValueError, match=match):
        DPOObjective(system, dataclasses.replace(dpo_stage(), **change))


def test_the_dpo_stage_resumes_exactly_and_no_checkpoint_or_export_holds_the_reference(tmp_path):
    """``e2e-tts train -c stages/dpo.yaml`` from an export: 2 updates straight equal 1 + a new process state (resume
    from the checkpoint) + 1, and the checkpoints hold the system's weights only. Ranked by the reward model on the
    tokens (cheap); the rewards on audio are tested in tests/test_rewards.py."""
    data, export = stage_start(tmp_path)

    def run(out, steps):
        return train(micro_config(
            *data, f"output_dir={out}", f"stage.init_from={export}", f"stage.max_steps={steps}", "stage.optim.lr=1e-3",
            "stage.dpo.num_samples=2", "stage.dpo.rewards.wer.weight=0", "stage.dpo.rewards.sim.weight=0",
            "stage.dpo.rewards.cer.weight=1", "engine.log_every=1", "engine.progress_bar=false",
            "engine.tensorboard=false", files=[REPO / "stages" / "dpo.yaml"]))

    straight, _ = check_exact_resume(tmp_path, export, run)
    assert sorted(p.name for p in straight.glob("*.safetensors")) == sorted(
        p.name for p in export.glob("*.safetensors"))
