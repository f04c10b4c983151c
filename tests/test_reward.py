"""Tests of the token-level multi-task reward model (e2e_tts/models/reward.py)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from vector_quantize_pytorch import FSQ

from e2e_tts.models.reward import PRESETS, RewardConfig, RewardModel, replace_tokens_randomly

TEXT_VOCAB = 256  # UTF-8 bytes
CODEBOOK = FSQ(levels=[3] * 4).indices_to_codes(torch.arange(81))  # (81, 4)
SPEECH_VOCAB = CODEBOOK.shape[0]
CODE_DIM = CODEBOOK.shape[1]
NUM_SPEAKERS = 16



def make_model(**overrides) -> RewardModel:
    torch.manual_seed(0)
    config = dataclasses.replace(RewardConfig(), dropout=0.0, **overrides)
    return RewardModel(config, TEXT_VOCAB, CODE_DIM, num_speakers=NUM_SPEAKERS).eval()


def lengths_to_mask(lengths: list[int]) -> torch.Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def make_batch(speech_lengths: list[int], text_lengths: list[int], seed: int = 0):
    """Random ids with -1 on speech padding (as FSQ pads) and 999 on text padding: neither may matter."""
    generator = torch.Generator().manual_seed(seed)
    speech_mask, text_mask = lengths_to_mask(speech_lengths), lengths_to_mask(text_lengths)
    speech = torch.randint(SPEECH_VOCAB, speech_mask.shape, generator=generator).masked_fill(~speech_mask, -1)
    text = torch.randint(TEXT_VOCAB, text_mask.shape, generator=generator).masked_fill(~text_mask, 999)
    return speech, speech_mask, text, text_mask


def test_shapes_losses_and_total():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([30, 22, 17], [9, 4, 6])
    labels = dict(speaker=torch.tensor([3, -1, 0]), emotion=torch.tensor([1, 2, -1]), quality=torch.tensor([4, 0, 2]))
    out = model(speech, speech_mask, CODEBOOK, text, text_mask, **labels)
    assert out.text_log_prob.shape == (3,)
    assert out.token_log_probs.shape == (3, 10)
    assert out.cross_attention.shape == (3, model.config.decoder_heads, 10, 30)
    assert set(out.losses) == {"ctc", "attention", "speaker", "emotion", "quality"}
    assert set(out.label_log_probs) == {"speaker", "emotion", "quality"}
    assert out.task_logits["speaker"].shape == (3, model.num_speakers)
    assert out.task_logits["quality"].shape == (3, 5)
    assert all(torch.isfinite(v) and v > 0 for v in out.losses.values())
    # log-probs are exact (unsmoothed) and 0 past each row's eos
    assert (out.token_log_probs[1, 5:] == 0).all() and (out.token_log_probs[1, :5] < 0).all()
    assert torch.allclose(out.text_log_prob, out.token_log_probs.sum(-1))
    config = model.config
    expected = (config.ctc_weight * out.losses["ctc"] + (1 - config.ctc_weight) * out.losses["attention"]
                + sum(out.losses[task] for task in ("speaker", "emotion", "quality")))
    assert torch.allclose(out.loss, expected)


def test_text_log_prob_does_not_depend_on_padding_or_batch_mates():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([30, 12, 21], [7, 3, 10])
    batched = model(speech, speech_mask, CODEBOOK, text, text_mask)
    for row in range(3):
        frames, ids = int(speech_mask[row].sum()), int(text_mask[row].sum())
        alone = model(speech[row:row + 1, :frames], speech_mask[row:row + 1, :frames], CODEBOOK,
                      text[row:row + 1, :ids], text_mask[row:row + 1, :ids])
        assert torch.allclose(batched.text_log_prob[row], alone.text_log_prob[0], atol=1e-4)
        assert torch.allclose(batched.token_log_probs[row, :ids + 1], alone.token_log_probs[0], atol=1e-5)
        assert torch.allclose(batched.cross_attention[row, :, :ids + 1, :frames], alone.cross_attention[0], atol=1e-5)


def test_decoder_is_causal_over_text():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([20, 20], [8, 8])
    changed = text.clone()
    changed[:, 4] = (changed[:, 4] + 1) % TEXT_VOCAB
    before = model(speech, speech_mask, CODEBOOK, text, text_mask).token_log_probs
    after = model(speech, speech_mask, CODEBOOK, changed, text_mask).token_log_probs
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)  # position k predicts id k from ids < k
    assert (before[:, 4:] - after[:, 4:]).abs().gt(1e-4).all()


def test_one_hot_probabilities_and_codes_equal_ids():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([25, 18], [6, 4])
    ids_out = model(speech, speech_mask, CODEBOOK, text, text_mask)
    hard = speech.clamp(min=0)
    probs_out = model(F.one_hot(hard, SPEECH_VOCAB).float(), speech_mask, CODEBOOK, text, text_mask)
    codes_out = model(CODEBOOK[hard], speech_mask, CODEBOOK, text, text_mask)
    for out in (probs_out, codes_out):
        assert torch.allclose(out.text_log_prob, ids_out.text_log_prob, atol=1e-4)
        assert torch.allclose(out.loss, ids_out.loss, atol=1e-5)


def test_gradients_reach_probabilities_and_codes_but_not_padding():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([25, 18], [6, 4])
    logits = torch.randn(2, 25, SPEECH_VOCAB, requires_grad=True)
    codes = CODEBOOK[speech.clamp(min=0)].clone().requires_grad_(True)
    for leaf, soft in ((logits, logits.softmax(-1)), (codes, codes)):
        out = model(soft, speech_mask, CODEBOOK, text, text_mask, speaker=torch.tensor([1, 2]))
        (out.text_log_prob.sum() + out.label_log_probs["speaker"].sum()).backward()
        grad = leaf.grad
        assert torch.isfinite(grad).all()
        assert grad[speech_mask].abs().sum(-1).gt(0).all()  # every valid frame influences the reward
        assert (grad[~speech_mask] == 0).all()


def test_missing_labels_are_excluded_and_never_nan():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([20, 20, 20], [5, 5, 5])
    out = model(speech, speech_mask, CODEBOOK, text, text_mask, speaker=torch.tensor([-1, 7, -1]),
                emotion=torch.full((3,), -1))
    speaker_nll = F.cross_entropy(out.task_logits["speaker"][1:2], torch.tensor([7]),
                                  label_smoothing=model.config.label_smoothing)
    assert torch.allclose(out.losses["speaker"], speaker_nll)
    assert out.losses["emotion"] == 0 and out.losses["quality"] == 0  # all missing / not given
    assert out.label_log_probs["speaker"][0] == 0 and out.label_log_probs["speaker"][1] < 0
    assert "quality" not in out.label_log_probs
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # every head stays in the graph even without labels (same parameters touched on every rank)
    assert all(p.grad is not None for p in model.task_heads.parameters())


def test_ctc_leaves_out_rows_too_short_to_align():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([20, 4, 5], [6, 6, 4])
    text[2, :4] = torch.tensor([65, 65, 65, 66])  # 4 ids with 2 repeats need 6 frames; 5 given
    out = model(speech, speech_mask, CODEBOOK, text, text_mask)
    first_alone = model(speech[:1], speech_mask[:1], CODEBOOK, text[:1], text_mask[:1])
    assert torch.allclose(out.losses["ctc"], first_alone.losses["ctc"], atol=1e-5)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    unalignable = model(speech[1:, :5], speech_mask[1:, :5], CODEBOOK, text[1:], text_mask[1:])
    assert unalignable.losses["ctc"] == 0 and torch.isfinite(unalignable.losses["attention"])


def test_cross_attention_is_a_distribution_over_valid_frames():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([30, 11], [8, 3])
    attention = model(speech, speech_mask, CODEBOOK, text, text_mask).cross_attention  # (B, H, L+1, T)
    valid_rows = torch.arange(9)[None, :] <= text_mask.sum(1)[:, None]  # text + eos
    sums = attention.sum(-1)
    assert torch.allclose(sums.permute(0, 2, 1)[valid_rows], torch.ones(()), atol=1e-5)
    assert (sums.permute(0, 2, 1)[~valid_rows] == 0).all()
    assert (attention[1, :, :, 11:] == 0).all()


def test_token_noise_only_in_training_and_only_on_hard_ids():
    model = make_model()
    speech, speech_mask, text, text_mask = make_batch([40, 30], [8, 8])
    eval_first = model(speech, speech_mask, CODEBOOK, text, text_mask, token_noise=0.3).text_log_prob
    eval_again = model(speech, speech_mask, CODEBOOK, text, text_mask, token_noise=0.3).text_log_prob
    assert torch.equal(eval_first, eval_again)
    model.train()  # dropout is 0: only the noise can change the output
    train_out = model(speech, speech_mask, CODEBOOK, text, text_mask, token_noise=0.3).text_log_prob
    assert not torch.allclose(train_out, eval_first, atol=1e-3)
    clean = model(speech, speech_mask, CODEBOOK, text, text_mask).text_log_prob
    assert torch.allclose(clean, eval_first, atol=1e-4)
    one_hot = F.one_hot(speech.clamp(min=0), SPEECH_VOCAB).float()
    noisy_soft = model(one_hot, speech_mask, CODEBOOK, text, text_mask, token_noise=0.3).text_log_prob
    assert torch.allclose(noisy_soft, eval_first, atol=1e-4)


def test_replace_tokens_randomly_rate_and_range():
    torch.manual_seed(0)
    ids = torch.zeros(200, 100, dtype=torch.long)
    noisy = replace_tokens_randomly(ids, 0.25, 81)
    changed = (noisy != 0).float().mean().item()
    assert abs(changed - 0.25 * 80 / 81) < 0.01  # a replacement draws the same id 1/81 of the time
    assert noisy.min() >= 0 and noisy.max() < 81
    assert replace_tokens_randomly(ids, 0.0, 81) is ids


def test_disabled_head_and_bad_inputs_raise_clear_errors():
    model = make_model(num_emotions=0)
    speech, speech_mask, text, text_mask = make_batch([20, 15], [5, 3])
    assert "emotion" not in model.task_heads
    assert "emotion" not in model(speech, speech_mask, CODEBOOK, text, text_mask).task_logits
    with pytest.raises(ValueError, match="emotion head is disabled"):
        model(speech, speech_mask, CODEBOOK, text, text_mask, emotion=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="speaker labels out of range"):
        model(speech, speech_mask, CODEBOOK, text, text_mask, speaker=torch.tensor([1, 16]))
    with pytest.raises(ValueError, match="text ids out of range"):
        model(speech, speech_mask, CODEBOOK, text.masked_fill(text_mask, 256), text_mask)
    with pytest.raises(ValueError, match="speech ids out of range"):
        model(speech.masked_fill(speech_mask, 81), speech_mask, CODEBOOK, text, text_mask)
    with pytest.raises(ValueError, match="prefix"):
        model(speech, speech_mask.flip(1), CODEBOOK, text, text_mask)
    with pytest.raises(ValueError, match="no valid frame"):
        model(speech, speech_mask & torch.tensor([[True], [False]]), CODEBOOK, text, text_mask)
    with pytest.raises(ValueError, match="must be bool"):
        model(speech, speech_mask.long(), CODEBOOK, text, text_mask)
    with pytest.raises(ValueError, match="max_text_length"):
        make_model(max_text_length=4)(speech, speech_mask, CODEBOOK, text, text_mask)
    with pytest.raises(ValueError, match="heads"):
        RewardConfig(encoder_dim=100, encoder_heads=3)


def test_transcribers_return_ids_within_limits():
    model = make_model()
    speech, speech_mask, _, _ = make_batch([20, 9], [1, 1])
    ctc = model.transcribe_ctc(speech, speech_mask, CODEBOOK)
    attention = model.transcribe_attention(speech, speech_mask, CODEBOOK, max_len=7)
    assert len(ctc) == len(attention) == 2
    assert all(len(row) <= 9 for row in ctc[1:]) and all(len(row) <= 7 for row in attention)
    assert all(0 <= i < TEXT_VOCAB for row in ctc + attention for i in row)


def test_accepts_int32_ids_and_an_omegaconf_config():
    config = OmegaConf.structured(dataclasses.replace(RewardConfig(), dropout=0.0))
    torch.manual_seed(0)
    model = RewardModel(config, TEXT_VOCAB, CODE_DIM, num_speakers=NUM_SPEAKERS).eval()
    speech, speech_mask, text, text_mask = make_batch([20, 15], [5, 3])
    speaker = torch.tensor([2, -1])
    reference = model(speech, speech_mask, CODEBOOK, text, text_mask, speaker=speaker)
    narrow = model(speech.int(), speech_mask, CODEBOOK, text.int(), text_mask, speaker=speaker.int())
    assert torch.allclose(reference.loss, narrow.loss)
    assert torch.allclose(reference.text_log_prob, narrow.text_log_prob)


def test_paper_preset_has_about_600m_parameters():
    with torch.device("meta"):
        model = RewardModel(PRESETS["paper"], TEXT_VOCAB, codebook_dim=8, num_speakers=1000)  # FSQ [3] * 8
    assert 0.54e9 <= model.num_parameters() <= 0.66e9
    with torch.device("meta"):
        tiny = RewardModel(PRESETS["tiny"], TEXT_VOCAB, codebook_dim=4, num_speakers=16)  # FSQ [5] * 4
    assert 1e6 <= tiny.num_parameters() <= 5e6


PHRASES = ["hello world", "speech tokens", "reward model", "the cat sat", "zero shot", "gumbel", "flow match",
           "a quick fox"]


def pronounce(phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Speech ids ``(B, T)`` and mask: each character sounds as a fixed random run of 2-3 speech tokens."""
    generator = torch.Generator().manual_seed(1)
    sounds = {}
    for char in sorted(set("".join(phrases))):
        sounds[char] = torch.randint(SPEECH_VOCAB, (int(torch.randint(2, 4, (1,), generator=generator)),),
                                     generator=generator).tolist()
    sequences = [[token for char in phrase for token in sounds[char]] for phrase in phrases]
    mask = lengths_to_mask([len(s) for s in sequences])
    speech = torch.zeros(mask.shape, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        speech[row, :len(sequence)] = torch.tensor(sequence)
    return speech, mask


def character_error_rate(hypotheses: list[list[int]], references: list[list[int]]) -> float:
    def distance(a: list[int], b: list[int]) -> int:
        previous = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            current = [i]
            for j, y in enumerate(b, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
            previous = current
        return previous[-1]
    return sum(distance(h, r) for h, r in zip(hypotheses, references)) / sum(len(r) for r in references)


@pytest.mark.slow
def test_tiny_model_overfits_and_both_decoders_transcribe_exactly():
    model = make_model().train()
    speech, speech_mask = pronounce(PHRASES)
    references = [list(phrase.encode("utf-8")) for phrase in PHRASES]
    text_mask = lengths_to_mask([len(r) for r in references])
    text = torch.zeros(text_mask.shape, dtype=torch.long)
    for row, reference in enumerate(references):
        text[row, :len(reference)] = torch.tensor(reference)
    speakers = torch.arange(len(PHRASES)) % 4
    target_mask = torch.arange(text.shape[1] + 1)[None, :] <= text_mask.sum(1)[:, None]  # text + eos
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    start = time.monotonic()
    for step in range(300):
        out = model(speech, speech_mask, CODEBOOK, text, text_mask, speaker=speakers)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        # every reference id more likely than all others together => greedy attention decoding is exact
        attention_done = out.token_log_probs[target_mask].min() > math.log(0.5)
        if step % 10 == 9 and attention_done:
            model.eval()
            if model.transcribe_ctc(speech, speech_mask, CODEBOOK) == references:
                break
            model.train()
    model.eval()
    ctc = model.transcribe_ctc(speech, speech_mask, CODEBOOK)
    attention = model.transcribe_attention(speech, speech_mask, CODEBOOK, max_len=32)
    ctc_cer, attention_cer = character_error_rate(ctc, references), character_error_rate(attention, references)
    print(f"{step + 1} steps in {time.monotonic() - start:.1f} s: CTC CER {ctc_cer:.3f}, attention CER "
          f"{attention_cer:.3f}")
    assert ctc_cer <= 0.02 and attention_cer <= 0.02  # at most 1 of the 83 bytes wrong
    scored = model(speech, speech_mask, CODEBOOK, text, text_mask, speaker=speakers)
    mismatched = model(speech, speech_mask, CODEBOOK, text.roll(1, 0), text_mask.roll(1, 0))
    # the reward prefers the true text by a factor of at least e^3 (once the decoder has seen a mismatched text's
    # first ids it has memorised the rest, so the gap is only a few nats, not one per id)
    assert (scored.text_log_prob > mismatched.text_log_prob + 3).all()
    assert (scored.task_logits["speaker"].argmax(-1) == speakers).all()
