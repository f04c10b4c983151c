"""Model FLOPs counted from shapes (e2e_tts.flops) against torch's own count of the products a forward (and a
backward) runs, on small modules of the tiny recipe's structure (id tables, prior head, token encoder, guided
eager attention, grouped-query attention with a head width other than hidden / heads)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from e2e_tts import flops
from e2e_tts.config import load_config, to_object
from e2e_tts.objectives import build_objective
from e2e_tts.system import TTSSystem
from e2e_tts.text import build_text_tokenizer

SMALL = [
    "text.tokenizer=bytes",
    "model.tokenizer.dim=48", "model.tokenizer.depth=2", "model.tokenizer.heads=2",
    "model.llm.hidden_size=48", "model.llm.num_layers=2", "model.llm.num_heads=4", "model.llm.num_kv_heads=2",
    "model.llm.head_dim=16", "model.llm.intermediate_size=96",
    "model.flow.dim=48", "model.flow.depth=2", "model.flow.heads=2", "model.flow.encoder_depth=1",
    "model.reward.encoder_dim=48", "model.reward.encoder_depth=2", "model.reward.encoder_heads=2",
    "model.reward.decoder_dim=32", "model.reward.decoder_depth=1", "model.reward.decoder_heads=2",
    "model.vocoder.dim=16", "model.vocoder.intermediate_dim=32", "model.vocoder.num_blocks=2",
]
SPEAKERS = ["a", "b"]
MEL_FRAMES, TEXT_LENGTHS = [120, 97, 64], [21, 15, 9]

_aten = torch.ops.aten
# Kernels torch's counter has no formula for: SDPA's CPU kernel (forward and backward) and torch.cdist's.
_CPU_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v),
    _aten._euclidean_dist:
        lambda x1, x2, *args, out_shape=None, **kwargs: 2 * math.prod(x1[:-1]) * x2[-2] * x1[-1],
}


def measured(run) -> int:
    """FLOPs of the matrix products, convolutions and attention that ``run()`` executes."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_FORMULAS) as counter:
        run()
    return counter.get_total_flops()


def build(stage: str, *overrides: str):
    config = load_config(["recipes/tiny/config.yaml", f"stages/{stage}.yaml"],
                         [*SMALL, "stage.multitask.guide.layers=[1]", *overrides])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), build_text_tokenizer(to_object(config.text)), SPEAKERS)
    system.set_trainable(list(config.stage.trainable))
    return system, to_object(config.stage)


def make_batch(mel_frames=MEL_FRAMES, text_lengths=TEXT_LENGTHS, seed=0):
    """A padded batch in the data loader's layout with rows of the given lengths."""
    gen = torch.Generator().manual_seed(seed)
    frames, length = max(mel_frames), max(text_lengths)
    return {"mel": torch.randn(len(mel_frames), frames, 80, generator=gen) * 2 - 5,
            "mel_mask": torch.arange(frames)[None] < torch.tensor(mel_frames)[:, None],
            "text_ids": torch.randint(0, 256, (len(mel_frames), length), generator=gen),
            "text_mask": torch.arange(length)[None] < torch.tensor(text_lengths)[:, None],
            "speaker": [SPEAKERS[row % 2] for row in range(len(mel_frames))],
            "keys": [f"seed{seed}_{row}" for row in range(len(mel_frames))]}


@pytest.fixture(scope="module")
def tokens():
    """The eval-mode system, a batch, its tokenizer output and the codebook."""
    system, _ = build("joint")
    system.eval()
    batch = make_batch()
    return system, batch, system.tokenizer(batch["mel"], batch["mel_mask"]), system.codebook()


def test_tokenizer_and_vocoder_forward_count_what_runs(tokens):
    system, batch, _, _ = tokens
    assert flops.tokenizer(system.tokenizer, MEL_FRAMES, padded=True) == \
        measured(lambda: system.tokenizer(batch["mel"], batch["mel_mask"]))
    assert flops.vocoder(system.vocoder, MEL_FRAMES, padded=True) == \
        measured(lambda: system.vocoder.spectrogram(batch["mel"], batch["mel_mask"]))


@pytest.mark.parametrize("speech", flops.SPEECH_INPUTS)
def test_consumer_forwards_count_what_runs(tokens, speech):
    system, batch, out, codebook = tokens
    inputs = {"ids": out.ids, "codes": out.codes, "probs": F.one_hot(out.ids, codebook.shape[0]).float()}[speech]
    token_lengths, codes = out.mask.sum(1).tolist(), codebook.shape[0]
    text, text_mask = batch["text_ids"], batch["text_mask"]
    assert flops.llm(system.llm, TEXT_LENGTHS, token_lengths, speech, padded=True) == \
        measured(lambda: system.llm(text, text_mask, inputs, out.mask, codebook, speech_ids=out.ids))
    assert flops.flow_loss(system.flow, token_lengths, MEL_FRAMES, codes, speech, padded=True) == \
        measured(lambda: system.flow.loss(batch["mel"], batch["mel_mask"], inputs, out.mask, codebook))
    assert flops.reward(system.reward, token_lengths, TEXT_LENGTHS, codes, speech, padded=True) == \
        measured(lambda: system.reward(inputs, out.mask, codebook, text, text_mask))


def test_valid_lengths_count_less_than_padded_rows_and_the_same_without_padding(tokens):
    system, _, _, _ = tokens
    assert flops.reward(system.reward, [60, 40], [20, 5], 625) < flops.reward(system.reward, [60, 40], [20, 5], 625,
                                                                              padded=True)
    assert flops.llm(system.llm, [20, 20], [60, 60]) == flops.llm(system.llm, [20, 20], [60, 60], padded=True)
    # Attention grows with the square of a row: one row of 2n costs more than two rows of n.
    assert flops.llm(system.llm, [38], [120]) > 2 * flops.llm(system.llm, [18], [60])


@pytest.mark.parametrize("stage", ["joint", "separate", "e2e"])
def test_an_update_counts_its_forward_and_backward(stage):
    """Trained modules 3x their forward, the e2e stage's frozen flow and reward model 2x (their input's gradient),
    its reference LLM and the frozen tokenizer 1x: within a few % of what forward and backward run (the first
    layers compute no gradient for their inputs, which the rule counts)."""
    system, spec = build(stage)
    objective = build_objective(spec, system).train()
    batch = make_batch()

    def update():
        loss, _ = objective(batch)
        loss.backward()

    counted = flops.update_flops(system, spec, MEL_FRAMES, TEXT_LENGTHS, padded=True)
    expected = {"joint": {"tokenizer", "llm", "flow", "reward"}, "separate": {"tokenizer", "llm", "flow", "reward"},
                "e2e": {"tokenizer", "llm", "reference", "flow", "reward"}}[stage]
    assert set(counted) == expected
    assert sum(counted.values()) == pytest.approx(measured(update), rel=0.05)


def test_a_frozen_tokenizer_counts_only_the_token_cache_misses():
    system, spec = build("separate")
    objective = build_objective(spec, system).train()
    batch = make_batch()
    objective(batch)  # fills the cache
    again = measured(lambda: objective(batch)[0].backward())
    counted = flops.update_flops(system, spec, MEL_FRAMES, TEXT_LENGTHS, encoded_rows=[], padded=True)
    assert "tokenizer" not in counted
    assert sum(counted.values()) == pytest.approx(again, rel=0.05)
    one_miss = flops.update_flops(system, spec, MEL_FRAMES, TEXT_LENGTHS, encoded_rows=[2])
    assert one_miss["tokenizer"] == flops.tokenizer(system.tokenizer, MEL_FRAMES[2:])


def test_objectives_it_does_not_count_are_refused():
    system, spec = build("separate")
    spec.objective = "grpo"
    with pytest.raises(ValueError, match="multitask and e2e"):
        flops.update_flops(system, spec, MEL_FRAMES, TEXT_LENGTHS)
