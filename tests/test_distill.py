"""The distill objective: the winner of each text's candidates on hand-made rewards (dropouts excluded, ties to the
earlier, a failing winner not kept, only_failed), the cross-entropy on exactly the kept winners, a micro training that
raises the winners' log-probability and carries their reward to single-shot samples, and an exact resume."""

import dataclasses
from pathlib import Path

import pytest
import torch

from e2e_tts.config import load_config, to_object
from e2e_tts.objectives import distill as distill_module
from e2e_tts.objectives.distill import DistillObjective, select_winners
from e2e_tts.objectives.policy import sample_rollouts
from e2e_tts.rewards.components import RewardScores
from e2e_tts.rewards.spec import RewardSpec
from e2e_tts.stage import DistillConfig, StageConfig
from e2e_tts.train import train
from post_training import (FAR_CAP, check_exact_resume, lower_half_reward, micro_config, stage_start, system,
                           text_batch, train_on_reward)

REPO = Path(__file__).resolve().parents[1]


def distill_stage(**distill) -> StageConfig:
    settings = {"num_samples": 3, "rewards": {"cer": RewardSpec(), "length": RewardSpec()}, "top_k": 0,
                "top_p": 1.0, "temperature": 1.0, **distill}
    return StageConfig(name="distill", objective="distill", trainable=["llm"], distill=DistillConfig(**settings))


def gated(total: torch.Tensor, gate: torch.Tensor) -> RewardScores:
    """Scores as the rewards give them: the length gate's 0 or 1 beside the composed total."""
    return RewardScores(total=total * gate, shaped={"cer": total, "length": gate}, raw={"cer": total, "length": gate})


def test_winners_on_hand_made_rewards():
    """Text 0: a tie of 0.9 goes to the earlier candidate. Text 1: the best reward is a dropout; the next best wins.
    Text 2: the best (0.4) fails the verifier: not kept. Text 3: all dropouts. Text 4: its first candidate passes, so
    only_failed drops it; text 0's (0.2) and text 1's (a dropout) failed, so they stay."""
    reward = torch.tensor([[0.2, 0.9, 0.9], [0.95, 0.6, 0.1], [0.3, 0.4, 0.2], [0.7, 0.7, 0.8], [0.8, 0.9, 0.1]])
    usable = torch.ones(5, 3, dtype=torch.bool)
    usable[1, 0] = False
    usable[3] = False
    winners, kept = select_winners(reward, usable, 0.5, only_failed=False)
    assert winners.tolist() == [1, 1, 1, 0, 1]
    assert kept.tolist() == [True, True, False, False, True]
    winners_failed, kept_failed = select_winners(reward, usable, 0.5, only_failed=True)
    assert torch.equal(winners_failed, winners) and kept_failed.tolist() == [True, True, False, False, False]
    _, kept_low = select_winners(reward, usable, 0.0, only_failed=False)  # any usable winner passes 0
    assert kept_low.tolist() == [True, True, True, False, True]


@pytest.mark.parametrize("only_failed", [False, True])
def test_the_loss_is_the_cross_entropy_of_exactly_the_kept_winners(system, monkeypatch, only_failed):
    """Three texts of three candidates. Text 0: rewards (0.3, 0.8, 0.8), candidate 1 wins on the tie. Text 1: (0.9,
    0.6, 0.7) with candidate 0 cut at the cap and candidate 2 gated: candidate 1 wins, its first failed. Text 2: (0.9,
    0.2, 0.1): candidate 0 wins, but with only_failed its first passes and it is not kept. The loss is minus the mean
    log-probability over the kept winners' tokens and EOS, each behind its own prompt."""
    totals = torch.tensor([0.3, 0.8, 0.8, 0.9, 0.6, 0.7, 0.9, 0.2, 0.1])
    gate = torch.tensor([1.0, 1, 1, 1, 1, 0, 1, 1, 1])
    objective = DistillObjective(system, distill_stage(only_failed=only_failed), FAR_CAP).train()
    sampled = []

    def sample(*args):
        rollouts = sample_rollouts(*args)
        rollouts.ended = torch.ones(len(rollouts), dtype=torch.bool)
        rollouts.ended[3] = False
        sampled.append(rollouts)
        return rollouts

    monkeypatch.setattr(distill_module, "sample_rollouts", sample)
    monkeypatch.setattr(objective, "rewards", lambda rollouts: gated(totals, gate))
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    kept_rows = [1, 4] if only_failed else [1, 4, 6]
    with torch.no_grad():
        log_probs, own = distill_module.rollout_log_probs(system.llm, system.codebook(),
                                                          sampled[0].select(kept_rows, group=1))
    assert loss.item() == pytest.approx(-(log_probs.sum() / own.sum()).item(), rel=1e-5)
    assert metrics["kept_texts"] == len(kept_rows) and metrics["kept"] == pytest.approx(len(kept_rows) / 3)
    assert metrics["first_failed"] == pytest.approx(2 / 3) and metrics["dropouts"] == pytest.approx(2 / 9)
    assert metrics["reward_winner"] == pytest.approx(sum(totals[kept_rows].tolist()) / len(kept_rows))
    assert metrics["reward_first"] == pytest.approx((0.3 + 0.9 + 0.9) / 3)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in system.llm.parameters())


def test_a_batch_without_a_kept_winner_gives_a_zero_loss_in_the_graph(system, monkeypatch):
    objective = DistillObjective(system, distill_stage(), FAR_CAP).train()
    monkeypatch.setattr(objective, "rewards", lambda rollouts: gated(torch.full((9,), 0.4), torch.ones(9)))
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    loss.backward()  # the engine steps on every batch
    assert loss.item() == 0.0 and metrics["kept_texts"] == 0


def test_distillation_raises_the_winners_log_probability_and_carries_their_reward_to_single_shots(system,
                                                                                                   monkeypatch):
    """A selection or sign bug would not: with candidates judged by their share of tokens in the codebook's lower
    half (a reward the policy can reach by itself), drawn by the frozen reference, the policy's log-probability of the
    winners rises and its own single samples, which started at the reference's share, move toward the winners'."""
    stage = distill_stage(num_samples=6, prompt=False, top_k=25, top_p=0.8, pass_reward=0.0)
    objective = DistillObjective(system, stage, FAR_CAP).train()
    share = lower_half_reward(system)
    monkeypatch.setattr(objective, "rewards", lambda rollouts: gated(share(rollouts).total,
                                                                     torch.ones(len(rollouts))))

    def single_shot_share() -> float:
        torch.manual_seed(1)
        rollouts = sample_rollouts(system.llm, system.codebook(), text_batch(), None, None, 2,
                                   dataclasses.replace(stage.distill, num_samples=8), objective.synthesis)
        return share(rollouts).total.mean().item()

    before = single_shot_share()
    losses = train_on_reward(objective, 10, "loss")
    after = single_shot_share()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.15, losses
    assert after > before + 0.02, (before, after)  # 0.531 -> 0.565 in 10 updates


@pytest.mark.parametrize("change, match", [
    ({"trainable": ["llm", "flow"]}, "LLM only"),
    ({"kl_beta": 0.1}, "takes no kl_beta"),
    ({"distill": DistillConfig(rewards={"cer": RewardSpec()})}, "needs a gate"),
    ({"distill": DistillConfig(rewards={"length": RewardSpec()})}, "gates alone reward nothing"),
])
def test_distill_refuses_inconsistent_stage_specs(system, change, match):
    with pytest.raises(ValueError, match=match):
        DistillObjective(system, dataclasses.replace(distill_stage(), **change))


def test_stage_defaults_and_bad_values_refused_when_the_config_loads():
    spec = to_object(load_config([REPO / "stages" / "distill.yaml"]).stage)
    assert spec.distill.num_samples == DistillConfig().num_samples == 8
    assert spec.distill.candidates_from == "reference" and not spec.distill.only_failed
    assert set(spec.distill.reward_specs()) == {"cer", "length"}
    for override, key in (("stage.distill.candidates_from=best", "stage.distill.candidates_from"),
                          ("stage.distill.pass_reward=-1", "stage.distill.pass_reward"),
                          ("stage.distill.num_samples=1", "stage.distill.num_samples")):
        with pytest.raises(ValueError, match=key):
            load_config([REPO / "stages" / "distill.yaml"], [override])


@pytest.mark.parametrize("candidates_from", ["reference", "policy"])
def test_the_distill_stage_resumes_exactly(tmp_path, candidates_from):
    """``e2e-tts train -c stages/distill.yaml`` from an export: 2 updates straight equal 1 + a new process state
    (resume from the checkpoint) + 1, offline and online; the checkpoints hold the system's weights only. Every usable
    winner passes (pass_reward 0), so that the untrained export trains."""
    data, export = stage_start(tmp_path)

    def run(out, steps):
        return train(micro_config(
            *data, f"output_dir={out}", f"stage.init_from={export}", f"stage.max_steps={steps}", "stage.optim.lr=1e-3",
            "stage.distill.num_samples=2", "stage.distill.pass_reward=0", f"stage.distill.candidates_from="
            f"{candidates_from}", "stage.distill.rewards.length={min_ratio: 0, max_ratio: 100}",
            "synthesis.max_len_ratio=40", "engine.log_every=1", "engine.progress_bar=false",
            "engine.tensorboard=false", files=[REPO / "stages" / "distill.yaml"]))

    _, logged = check_exact_resume(tmp_path, export, run, same=("kept_texts",))
    assert all(m["kept_texts"] > 0 for m in logged["straight"])
