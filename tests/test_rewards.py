"""Rewards as components (e2e_tts.rewards): shaping, gates and composition on hand-computed values, each kind
against a direct computation, and the specs a stage config may and may not give."""

import numpy as np
import pytest
import torch

from e2e_tts.checks import FieldError
from e2e_tts.rewards import components
from e2e_tts.rewards.components import REGISTRY, RewardSet
from e2e_tts.rewards.judges import Judges, Settings
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.rewards.spec import ERROR_RATE, KINDS, RewardSpec, Shaping, check_specs
from e2e_tts.scoring.verifiers import Verifier
from e2e_tts.scoring.wer import id_error_rates, score_utterance
from e2e_tts.stage import GRPOConfig
from e2e_tts.synth import Prompt
from post_training import micro_config, micro_system, noise


@pytest.fixture(scope="module")
def system():
    return micro_system()


def rollouts_of(speech_lengths, text="Call me.", group=None, prompt=None, prompt_audio=None, speakers=None, seed=0):
    """One text's rollouts of the given lengths (random speech ids), all behind ``prompt``."""
    gen = torch.Generator().manual_seed(seed)
    count = len(speech_lengths)
    text_ids = torch.tensor(list(text.encode()))
    return Rollouts(group=group or count, texts=[text] * count, text_ids=[text_ids] * count,
                    speech=[torch.randint(0, 125, (n,), generator=gen) for n in speech_lengths],
                    ended=torch.ones(count, dtype=torch.bool), speakers=list(speakers or ["a"] * count),
                    prompts=[prompt] * count, prompt_audio=[prompt_audio] * count, llm_prompt=True)


def reward_set(system, settings=None, **specs):
    return RewardSet(specs, Judges(system, settings or Settings()))


def test_shaping_maps_worst_mean_best_to_0_half_1_piecewise_linearly():
    """NeMo's CER map (c-bar 0.1: CER 0.05 -> 0.75, 0.55 -> 0.25) and SSIM map (s-bar 0.6, best 0.9), clamped."""
    cer = Shaping(worst=1.0, mean=0.1, best=0.0)
    torch.testing.assert_close(cer(torch.tensor([0.0, 0.05, 0.1, 0.55, 1.0, 1.5])),
                               torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0, 0.0]))
    similarity = Shaping(worst=0.0, mean=0.6, best=0.9)
    torch.testing.assert_close(similarity(torch.tensor([-0.2, 0.3, 0.6, 0.75, 0.9, 0.95])),
                               torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]))
    torch.testing.assert_close(ERROR_RATE(torch.tensor([0.0, 0.2, 1.0, 3.0])), torch.tensor([1.0, 0.8, 0.0, 0.0]))
    for worst, mean, best in ((1.0, 1.0, 0.0), (0.0, 1.0, 0.5)):
        with pytest.raises(ValueError, match="mean strictly between worst and best"):
            Shaping(worst, mean, best)


def test_the_reward_is_the_gated_weighted_sum_of_the_shaped_scores(system, monkeypatch):
    monkeypatch.setattr(components.ReadBackErrorRate, "score", lambda self, judging: torch.tensor([.2, .5, 1., 0.]))
    monkeypatch.setattr(components.TextLogProbability, "score", lambda self, j: torch.tensor([-1.5, -.5, 0., -3.]))
    rewards = reward_set(system, a=RewardSpec(kind="cer", weight=0.5),
                         b=RewardSpec(kind="asr", weight=2.0, shaping=Shaping(worst=-2.0, mean=-1.0, best=0.0)),
                         length=RewardSpec(min_ratio=1.0, max_ratio=4.0), off=RewardSpec(kind="speaker", weight=0.0))
    # "Call me." is 8 text ids: 2, 8, 32 and 33 tokens are 0.25, 1, 4 and 4.125 tokens per id
    scores = rewards(rollouts_of([2, 8, 32, 33]))
    assert list(scores.shaped) == ["a", "b", "length"]  # a weight of 0 is off
    torch.testing.assert_close(scores.shaped["a"], torch.tensor([0.8, 0.5, 0.0, 1.0]))  # 1 - rate
    torch.testing.assert_close(scores.shaped["b"], torch.tensor([0.25, 0.75, 1.0, 0.0]))
    torch.testing.assert_close(scores.shaped["length"], torch.tensor([0.0, 1.0, 1.0, 0.0]))
    # (0.5 * a + 2 * b) * length
    torch.testing.assert_close(scores.total, torch.tensor([0.0, 0.25 + 1.5, 0.0 + 2.0, 0.0]))
    torch.testing.assert_close(scores.raw["b"], torch.tensor([-1.5, -0.5, 0.0, -3.0]))


def test_rewards_on_tokens_read_each_rollout_with_one_reward_model_pass(system, monkeypatch):
    """cer, asr, speaker and quality share one encoding of the rollouts, and each is what the reward model gives
    alone: the CTC read-back's id error rate, log P(text) per text id and EOS, P(speaker), the expected MOS bin."""
    rewards = reward_set(system, cer=RewardSpec(), asr=RewardSpec(), speaker=RewardSpec(), quality=RewardSpec())
    rollouts = rollouts_of([7, 5, 2], speakers=["a", "b", "x"])  # x: unknown to the speaker head
    reward_model, codebook = system.reward.eval(), system.codebook()
    calls = []
    encode = reward_model.encode
    monkeypatch.setattr(reward_model, "encode", lambda *args: calls.append(1) or encode(*args))
    scores = rewards(rollouts)
    assert len(calls) == 1
    speech = torch.nn.utils.rnn.pad_sequence(rollouts.speech, batch_first=True)
    speech_mask = torch.arange(7)[None] < torch.tensor([7, 5, 2])[:, None]
    text = torch.stack(rollouts.text_ids)
    with torch.no_grad():
        readings = reward_model.transcribe_ctc(speech, speech_mask, codebook)
        out = reward_model(speech, speech_mask, codebook, text, torch.ones_like(text, dtype=torch.bool),
                           speaker=torch.tensor([0, 1, -1]))
    rates = id_error_rates([row.tolist() for row in rollouts.text_ids], readings)["per"]
    torch.testing.assert_close(scores.raw["cer"], torch.tensor(rates) / 100)
    torch.testing.assert_close(scores.shaped["cer"], (1 - torch.tensor(rates) / 100).clamp(min=0))
    torch.testing.assert_close(scores.raw["asr"], out.text_log_prob / 9)  # 8 text ids and EOS
    torch.testing.assert_close(scores.raw["speaker"], out.label_log_probs["speaker"].exp() * torch.tensor([1, 1, 0]))
    expected_bin = out.task_logits["quality"].softmax(-1) @ torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    torch.testing.assert_close(scores.raw["quality"], expected_bin)


class LengthJudge:
    """A fake recogniser: rollouts of 4 to 8 tokens say the text, others say one word of it wrong."""

    def __init__(self):
        self.calls = []

    def verifier(self, spec):
        def transcribe(wavs, rate, tokens):
            self.calls.append([len(wav) for wav in wavs])
            return ["call me" if 4 * 640 <= len(wav) <= 8 * 640 else "call you" for wav in wavs]

        return Verifier(transcribe, lambda text: text)


def test_wer_transcribes_the_decoded_audio_and_a_dropout_scores_the_worst(system, monkeypatch):
    """Each text's rollouts are decoded (2 mel frames of 320 samples per token) and transcribed in one call; a
    rollout too short for its text (0.08 s for 6 spoken characters, below 0.025 s each) is a dropout: error 1."""
    judge = LengthJudge()
    monkeypatch.setattr(Judges, "verifier", lambda self, spec: judge.verifier(spec))
    rewards = reward_set(system, wer=RewardSpec(backend="whisper:/nowhere"))
    scores = rewards(rollouts_of([2, 6, 12, 7, 3, 9], group=3))
    assert judge.calls == [[1280, 3840, 7680], [4480, 1920, 5760]]  # dropouts too short for their text are heard
    torch.testing.assert_close(scores.raw["wer"], torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.5]))
    torch.testing.assert_close(scores.shaped["wer"], torch.tensor([0.0, 1.0, 0.5, 1.0, 0.0, 0.5]))


def test_wer_of_the_reward_model_reading_the_tokens_decodes_no_audio(system, monkeypatch):
    monkeypatch.setattr(Judges, "decode", lambda self, rollouts: pytest.fail("decoded audio for rm-tokens"))
    rewards = reward_set(system, wer=RewardSpec(backend="rm-tokens"))
    rollouts = rollouts_of([6, 9])
    scores = rewards(rollouts)
    recognizer = rewards.judges.synthesizer.recognizer
    expected = [score_utterance("r", recognizer.reference("Call me."), transcript, "en").wer
                for transcript in recognizer.transcribe_tokens(rollouts.speech)]
    torch.testing.assert_close(scores.raw["wer"], torch.tensor(expected))


def test_sim_compares_each_rollout_with_its_prompts_audio(system, monkeypatch):
    """Resemblyzer embeds the shared prompt once; the prompt's own audio scores ~1, other audio less, silent audio
    and a rollout without a prompt 0; a prompt without audio in the batch is refused, saying what to set."""
    prompt_audio, other = noise(1.5, seed=1), np.sin(np.arange(24000) * 0.05).astype(np.float32) * 0.3
    prompt = Prompt(text_ids=torch.tensor([1, 2]), speech_ids=torch.tensor([3, 4]), mel=torch.zeros(4, 80))
    decoded = [prompt_audio.copy(), other, np.zeros(8000, np.float32)]
    monkeypatch.setattr(Judges, "decode", lambda self, rollouts: decoded[:len(rollouts)])
    rewards = reward_set(system, sim=RewardSpec())
    judge = rewards.judges.similarity("resemblyzer")
    embedded = []
    embed = judge.embed
    monkeypatch.setattr(judge, "embed", lambda wav, rate: embedded.append(len(wav)) or embed(wav, rate))
    scores = rewards(rollouts_of([4, 4, 4], prompt=prompt, prompt_audio=prompt_audio))
    assert embedded == [24000, 24000, 24000]  # the prompt once, then the two audible rollouts
    sim = scores.raw["sim"]
    assert sim[0] == pytest.approx(1.0, abs=1e-5) and 0 < sim[1] < 0.95 and sim[2] == 0.0
    assert rewards(rollouts_of([4, 4], prompt=None)).raw["sim"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="data.return_wav: true"):
        rewards(rollouts_of([4], prompt=prompt, prompt_audio=None))


@pytest.mark.parametrize("specs, match", [
    ({"wav": RewardSpec()}, "unknown kind 'wav'"),
    ({"x": RewardSpec(kind="bleu")}, "unknown kind 'bleu'"),
    ({"cer": RewardSpec(backend="pocketsphinx")}, "cer: the cer reward has no backend"),
    ({"asr": RewardSpec(min_ratio=1.0)}, "asr: min_ratio and max_ratio are the length gate's"),
    ({"length": RewardSpec(weight=0.5)}, "weight 1 \\(on\\) or 0 \\(off\\)"),
    ({"length": RewardSpec(min_ratio=3.0, max_ratio=2.0)}, "min_ratio <= max_ratio"),
    ({"length": RewardSpec(shaping=Shaping(0.0, 0.5, 1.0))}, "no shaping"),
    ({"wer": RewardSpec(backend="rm")}, "now spelt rm-tokens"),
    ({"wer": RewardSpec(backend="kaldi:/x")}, "unknown ASR spec"),
])
def test_specs_a_kind_does_not_take_are_refused_naming_the_reward(specs, match):
    with pytest.raises(FieldError, match=match):
        check_specs(specs)


def test_every_kind_a_config_may_name_is_scored():
    assert set(REGISTRY) == set(KINDS) and all(REGISTRY[name].kind == name for name in REGISTRY)


def test_reward_weights_are_specs_with_their_kinds_defaults_and_a_reward_is_named_once():
    config = GRPOConfig(reward_weights={"cer": 0.5}, rewards={"sim": RewardSpec(weight=0.2)})
    assert config.reward_specs() == {"cer": RewardSpec(weight=0.5), "sim": RewardSpec(weight=0.2)}
    with pytest.raises(FieldError, match="which rewards names too"):
        GRPOConfig(reward_weights={"cer": 0.5}, rewards={"cer": RewardSpec()})


def test_a_reward_set_refuses_gates_alone_and_heads_the_system_lacks():
    with pytest.raises(ValueError, match="no reward with a non-zero weight"):
        reward_set(micro_system(), length=RewardSpec(), cer=RewardSpec(weight=0.0))
    headless = micro_system(micro_config("model.reward.num_quality_classes=0"))
    with pytest.raises(ValueError, match="quality reward needs the reward model's quality head"):
        reward_set(headless, quality=RewardSpec())
    with pytest.raises(ValueError, match="speaker reward needs the reward model's speaker head"):
        reward_set(micro_system(speakers=()), speaker=RewardSpec())
