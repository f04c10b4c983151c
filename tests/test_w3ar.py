"""W3AR: purity and monotonicity on hand-built attention maps, words of the text ids, the word-to-token advantage map
on hand-computed cases, the w3ar reward against the reward model's attention computed row by row, a stage combining
it with cer and sim, a word reward that rises in training, and the stage's exact resume."""

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from e2e_tts.config import ConfigError, to_object
from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.objectives import build_objective
from e2e_tts.objectives import grpo as grpo_module
from e2e_tts.objectives.w3ar import W3ARObjective, token_advantages, word_advantages
from e2e_tts.rewards.components import RewardSet
from e2e_tts.rewards.judges import Judges, Settings
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.rewards.spec import RewardSpec, WordRewardConfig
from e2e_tts.rewards.w3ar import WordScores, attention_purity, score_words, token_owners
from e2e_tts.stage import StageConfig, W3ARConfig
from e2e_tts.text import ByteTokenizer, PhoneTokenizer, normalize_text, word_index
from e2e_tts.train import train
from post_training import (FAR_CAP, check_exact_resume, micro_config, micro_system, stage_start, text_batch,
                           train_on_reward)

REPO = Path(__file__).resolve().parents[1]
PAPER = WordRewardConfig()
T = 20


def rows(*peaks, smear=0.0):
    """One attention row per peak ``(len(peaks), T)``: ``1 - smear`` on the peak frame, ``smear`` spread evenly."""
    attention = torch.full((len(peaks), T), smear / T)
    attention[torch.arange(len(peaks)), torch.tensor(peaks)] += 1 - smear
    return attention


def test_a_clean_diagonal_scores_high_a_smeared_or_backward_one_low():
    """Three words of one text id each, peaks 6 frames apart: purity 1 and monotonicity tanh(0.1 * 6) after the
    first word (whose monotonicity is 0). Half the mass spread over the 20 frames leaves 0.5 + 0.5 * 7 / 20 in the
    7-frame window; the same peaks backwards score -tanh(0.6)."""
    clean = score_words(rows(4, 10, 16), [0, 1, 2], PAPER)
    torch.testing.assert_close(clean.purity, torch.ones(3))
    torch.testing.assert_close(clean.monotonicity, torch.tensor([0.0, math.tanh(0.6), math.tanh(0.6)]))
    torch.testing.assert_close(clean.reward, 0.5 + 0.5 * torch.tensor([0.0, math.tanh(0.6), math.tanh(0.6)]))
    assert clean.peaks.tolist() == [4, 10, 16]

    smeared = score_words(rows(4, 10, 16, smear=0.5), [0, 1, 2], PAPER)
    torch.testing.assert_close(smeared.purity, torch.full((3,), 0.675))
    torch.testing.assert_close(smeared.monotonicity, clean.monotonicity)

    backwards = score_words(rows(16, 10, 4), [0, 1, 2], PAPER)
    torch.testing.assert_close(backwards.monotonicity, torch.tensor([0.0, -math.tanh(0.6), -math.tanh(0.6)]))
    assert clean.reward.mean() > smeared.reward.mean() > backwards.reward.mean()
    stalled = score_words(rows(10, 10, 10), [0, 1, 2], PAPER)  # a stutter: no progress, no monotonicity
    torch.testing.assert_close(stalled.monotonicity, torch.zeros(3))


def test_the_window_holds_the_peak_and_window_over_2_frames_each_side():
    attention = torch.zeros(2, T)
    attention[0, [10, 13, 6]] = torch.tensor([0.4, 0.3, 0.3])  # +3 inside, -4 outside
    attention[1, [1, 0, 5]] = torch.tensor([0.5, 0.2, 0.3])  # the window is cut at frame 0; +4 outside
    torch.testing.assert_close(attention_purity(attention, 6), torch.tensor([0.7, 0.7]))
    torch.testing.assert_close(attention_purity(attention, 8), torch.tensor([1.0, 1.0]))


def test_a_words_ids_are_pooled_and_ids_of_no_word_left_out():
    """Word 0 has ids 0 and 1 (purity 1 each; pooled: 0.7 at frame 3, 0.3 at 5, so its peak is 3); id 2 is a space,
    whatever it attends to; word 1 peaks at 12: monotonicity tanh(0.1 * 9)."""
    attention = torch.zeros(4, T)
    attention[0, 3] = 1.0
    attention[1, [3, 5]] = torch.tensor([0.4, 0.6])
    attention[2] = 1.0 / T
    attention[3, 12] = 1.0
    scores = score_words(attention, [0, 0, -1, 1], PAPER)
    assert scores.peaks.tolist() == [3, 12]
    torch.testing.assert_close(scores.purity, torch.ones(2))
    torch.testing.assert_close(scores.monotonicity, torch.tensor([0.0, math.tanh(0.9)]))
    torch.testing.assert_close(scores.attention[0, [3, 5]], torch.tensor([0.7, 0.3]))
    with pytest.raises(ValueError, match="without gaps"):
        score_words(attention, [0, 0, -1, 2], PAPER)


def test_words_of_the_text_ids():
    assert word_index(ByteTokenizer(), "Set an é.") == [0, 0, 0, -1, 1, 1, -1, 2, 2, 2]  # é is two bytes
    phones = PhoneTokenizer()
    words = word_index(phones, "Call me now.")
    assert len(words) == len(phones.encode("Call me now."))
    assert words == [w for w, word in enumerate(["Call", "me", "now"]) for _ in phones.encode(word)]
    with pytest.raises(ValueError, match="keeps no word boundaries"):
        word_index(SimpleNamespace(KIND="hf"), "a b")


def test_word_advantages_and_their_tokens_on_hand_computed_cases():
    """Three rollouts of one text, two words; rollout 2 was cut at the cap, so each of its words scores the group's
    lowest (0.5 and 0.2): word means 0.6 and 1/3. Rollout 0's 5 tokens: frames 0-1 read most by word 0, frame 2 by
    word 1, frames 3-4 by no word above 1/5 (the sequence advantage, also at EOS)."""
    def scores(*rewards):
        return WordScores(purity=torch.zeros(2), monotonicity=torch.zeros(2), reward=torch.tensor(rewards),
                          peaks=torch.zeros(2, dtype=torch.long), attention=torch.zeros(2, 5))

    group = [scores(0.5, 0.2), scores(0.8, 0.6), scores(0.9, 0.4)]
    advantages = word_advantages(group, torch.tensor([True, True, False]), group=3)
    expected = [[-0.1, 0.2 - 1 / 3], [0.2, 0.6 - 1 / 3], [-0.1, 0.2 - 1 / 3]]
    for got, want in zip(advantages, expected):
        torch.testing.assert_close(got, torch.tensor(want))

    attention = torch.tensor([[0.6, 0.3, 0.05, 0.05, 0.0], [0.0, 0.1, 0.5, 0.2, 0.2]])
    assert token_owners(attention).tolist() == [0, 0, 1, -1, -1]
    words = dataclasses.replace(group[0], attention=attention)
    torch.testing.assert_close(token_advantages(words, torch.tensor([1.0, -0.5])),
                               torch.tensor([1.0, 1.0, -0.5, 0.25, 0.25, 0.25]))


def test_the_w3ar_reward_is_the_mean_word_reward_of_the_reward_models_attention():
    """Against the attention computed for each rollout alone (no padding), from the decoder layers' weights averaged
    over layers and heads: two texts of different lengths, rollouts of different lengths."""
    system = micro_system().eval()  # frozen, as a post-training stage holds it: no dropout
    texts = ["Call me.", "It is windy now."]
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 14, 6, 11]
    text_of = [texts[0], texts[0], texts[1], texts[1]]
    text_ids = [torch.tensor(list(normalize_text(text).encode())) for text in text_of]
    rollouts = Rollouts(group=2, texts=text_of, text_ids=text_ids,
                        speech=[torch.randint(0, 125, (n,), generator=gen) for n in lengths],
                        ended=torch.ones(4, dtype=torch.bool), speakers=["a"] * 4, prompts=[None] * 4,
                        prompt_audio=[None] * 4, llm_prompt=False)
    rewards = RewardSet({"w3ar": RewardSpec()}, Judges(system, Settings()))(rollouts)
    reward_model, codebook = system.reward, system.codebook()
    for row in range(4):
        with torch.no_grad():
            speech, ids = rollouts.speech[row][None], text_ids[row][None]
            encoded = reward_model.encode(speech, torch.ones_like(speech, dtype=torch.bool), codebook)
            decoder_input = torch.cat([torch.tensor([[reward_model.sos_id]]), ids], 1)
            _, weights = reward_model._decode(decoder_input, lengths_to_mask(torch.tensor([ids.shape[1] + 1])),
                                              encoded, torch.ones_like(speech, dtype=torch.bool), return_weights=True)
        attention = torch.stack(weights).mean((0, 2))[0, :ids.shape[1]]  # layers and heads; the EOS row dropped
        words = word_index(ByteTokenizer(), normalize_text(text_of[row]))
        expected = score_words(attention, words, PAPER).reward.mean()
        torch.testing.assert_close(rewards.raw["w3ar"][row], expected, rtol=1e-4, atol=1e-5)


def test_a_grpo_stage_combining_cer_sim_and_w3ar_loads_and_trains_one_update(monkeypatch):
    """The reward model's read-back, resemblyzer's similarity of the decoded audio to the prompt's and the word reward
    in one stage config. Short rollouts keep the decoding quick; they run to the cap, whose penalty is off, so that
    the rewards differ within each group."""
    monkeypatch.setattr(grpo_module, "penalise_truncated", lambda rewards, ended: rewards)
    config = micro_config(
        "stage.grpo.num_samples=2", "stage.grpo.rewards.cer.weight=0.4", "stage.grpo.rewards.sim.weight=0.3",
        "stage.grpo.rewards.w3ar.weight=0.3", "data.return_wav=true", "synthesis.max_len_ratio=2",
        "synthesis.griffin_lim_iters=4", files=[REPO / "stages" / "grpo.yaml"])
    system = micro_system(config)
    system.set_trainable(["llm"])
    objective = build_objective(to_object(config.stage), system, config).train()
    before = [p.detach().clone() for p in system.llm.parameters()]
    optimizer = torch.optim.Adam(system.llm.parameters(), lr=1e-3)
    torch.manual_seed(0)
    loss, metrics = objective(text_batch())
    loss.backward()
    optimizer.step()
    assert {"reward_cer", "reward_sim", "reward_w3ar"} <= set(metrics)
    assert -0.5 <= metrics["reward_w3ar"] <= 1 and 0 < metrics["reward_sim"] <= 1 and torch.isfinite(loss)
    assert metrics["reward_group_std"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, system.llm.parameters()))


def w3ar_stage(**w3ar) -> StageConfig:
    return StageConfig(name="w3ar", objective="w3ar", trainable=["llm"], w3ar=W3ARConfig(**w3ar))


def test_w3ar_raises_the_word_reward():
    """The policy gradient alone (no CE, no KL): a sign or a token-mapping bug would leave the mean word reward of the
    rollouts where it starts (about 0.08 on the micro system; with the sign flipped it stays there)."""
    system = micro_system(FAR_CAP)
    system.set_trainable(["llm"])
    stage = w3ar_stage(num_samples=6, temperature=1.0, prompt=False, ce_weight=0.0)
    objective = W3ARObjective(system, stage, FAR_CAP).train()
    history = train_on_reward(objective, 20, "reward")
    assert sum(history[-3:]) / 3 > sum(history[:3]) / 3 + 0.08, history


def test_the_stage_spec_holds_the_papers_defaults_and_refuses_what_it_cannot_use():
    config = micro_config(files=[REPO / "stages" / "w3ar.yaml"])
    stage = to_object(config.stage)
    assert stage.objective == "w3ar" and stage.kl_beta == 0.1
    assert stage.w3ar.num_samples == W3ARConfig().num_samples == 8
    assert stage.w3ar.word == WordRewardConfig(window=6, beta=0.1, purity_weight=0.5, monotonicity_weight=0.5)
    for override, key in (("stage.w3ar.rewards.cer.weight=1", "stage.w3ar.rewards"),
                          ("stage.w3ar.reward_weights.cer=1", "stage.w3ar.reward_weights"),
                          ("stage.w3ar.word.window=-1", "stage.w3ar.word.window"),
                          ("stage.w3ar.word.purity_weight=0", None),
                          ("stage.w3ar.ce_weight=-1", "stage.w3ar.ce_weight")):
        if key is None:  # one weight of 0 is an ablation; both is no reward
            micro_config(override, files=[REPO / "stages" / "w3ar.yaml"])
            continue
        with pytest.raises(ConfigError, match=key):
            micro_config(override, files=[REPO / "stages" / "w3ar.yaml"])
    with pytest.raises(ConfigError, match="both 0"):
        micro_config("stage.w3ar.word.purity_weight=0", "stage.w3ar.word.monotonicity_weight=0",
                     files=[REPO / "stages" / "w3ar.yaml"])
    with pytest.raises(ValueError, match="LLM only"):
        W3ARObjective(micro_system(), dataclasses.replace(w3ar_stage(), trainable=["llm", "flow"]))


def test_the_w3ar_stage_resumes_exactly_and_no_checkpoint_holds_the_reference(tmp_path):
    """``e2e-tts train -c stages/w3ar.yaml`` from an export: 2 updates straight equal 1 + a new process state (resume
    from the checkpoint) + 1, and the checkpoints hold the system's weights only."""
    data, export = stage_start(tmp_path)

    def run(out, steps):
        return train(micro_config(
            *data, f"output_dir={out}", f"stage.init_from={export}", f"stage.max_steps={steps}", "stage.optim.lr=1e-3",
            "stage.w3ar.num_samples=2", "engine.log_every=1", "engine.progress_bar=false", "engine.tensorboard=false",
            files=[REPO / "stages" / "w3ar.yaml"]))

    check_exact_resume(tmp_path, export, run)
