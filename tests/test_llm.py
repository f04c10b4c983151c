"""Tests of the speech-token LLM (e2e_tts/models/llm.py) and its sampling strategies (e2e_tts/models/sampling.py)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from vector_quantize_pytorch import FSQ  # noqa: E402

from e2e_tts.models import llm as llm_module  # noqa: E402
from e2e_tts.models import sampling  # noqa: E402
from e2e_tts.models.llm import (IGNORE_INDEX, PRESETS, GuideConfig, LLMConfig, SpeechLLM,  # noqa: E402
                                 diagonal_guide_loss)
from e2e_tts.vocab import TokenLayout  # noqa: E402

TEXT_VOCAB = 40
CODEBOOK = FSQ(levels=[3] * 4).indices_to_codes(torch.arange(81))  # (81, 4): the tokenizer's FSQ grid
SPEECH_VOCAB = CODEBOOK.shape[0]
CODE_DIM = CODEBOOK.shape[1]
LAYOUT = TokenLayout(TEXT_VOCAB, SPEECH_VOCAB)



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM).eval()


def ragged_batch(text_lengths, speech_lengths, seed=0):
    """Right-padded random text/speech ids with their boolean masks."""
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(0, TEXT_VOCAB, (len(text_lengths), max(text_lengths)), generator=gen)
    speech = torch.randint(0, SPEECH_VOCAB, (len(speech_lengths), max(speech_lengths)), generator=gen)
    text_mask = torch.arange(text.shape[1])[None, :] < torch.tensor(text_lengths)[:, None]
    speech_mask = torch.arange(speech.shape[1])[None, :] < torch.tensor(speech_lengths)[:, None]
    return text, text_mask, speech, speech_mask


# ---------------------------------------------------------------------------------------------------------------
# Teacher-forced forward
# ---------------------------------------------------------------------------------------------------------------

def test_forward_shapes_targets_and_batch_invariance(model):
    text_lengths, speech_lengths = [3, 7, 5], [4, 9, 0]
    text, text_mask, speech, speech_mask = ragged_batch(text_lengths, speech_lengths)
    out = model(text, text_mask, speech, speech_mask, CODEBOOK)
    assert out.logits.shape == (3, 10, SPEECH_VOCAB + 1)
    assert out.hidden.shape == (3, 10, model.hidden_size)
    for b, (lt, ls) in enumerate(zip(text_lengths, speech_lengths)):
        expected_targets = torch.full((10,), IGNORE_INDEX)
        expected_targets[:ls] = speech[b, :ls]
        expected_targets[ls] = SPEECH_VOCAB  # EOS
        assert torch.equal(out.targets[b], expected_targets)
        assert torch.equal(out.mask[b], torch.arange(10) <= ls)
        # The same row alone, without any padding, gives the same logits.
        alone = model(text[b:b + 1, :lt], text_mask[b:b + 1, :lt], speech[b:b + 1, :ls], speech_mask[b:b + 1, :ls],
                      CODEBOOK)
        torch.testing.assert_close(alone.logits[0], out.logits[b, :ls + 1], atol=1e-5, rtol=1e-4)
    # Changing padded ids changes nothing.
    noisy_text = torch.where(text_mask, text, (text + 1) % TEXT_VOCAB)
    noisy_speech = torch.where(speech_mask, speech, (speech + 1) % SPEECH_VOCAB)
    noisy = model(noisy_text, text_mask, noisy_speech, speech_mask, CODEBOOK)
    torch.testing.assert_close(noisy.logits[out.mask], out.logits[out.mask])


def test_loss_and_accuracy_average_valid_targets(model):
    text, text_mask, speech, speech_mask = ragged_batch([4, 6], [5, 8])
    out = model(text, text_mask, speech, speech_mask, CODEBOOK)
    valid = out.targets != IGNORE_INDEX
    assert int(valid.sum()) == (5 + 1) + (8 + 1)
    expected = F.cross_entropy(out.logits[valid], out.targets[valid])
    torch.testing.assert_close(model.loss(out), expected)
    expected_accuracy = (out.logits[valid].argmax(-1) == out.targets[valid]).float().mean()
    torch.testing.assert_close(model.accuracy(out), expected_accuracy)
    assert model.loss(out).item() == pytest.approx(torch.log(torch.tensor(82.0)).item(), rel=0.2)


def packed_attention(text_len, speech_len, target):
    """Attention ``(1, 1, N, N)`` of a packed ``SOS text TASK speech`` row: the position predicting speech step
    ``s`` puts all its weight on key ``target(s)``; other rows attend to themselves."""
    length = text_len + 2 + speech_len
    attention = torch.eye(length)
    for s in range(speech_len + 1):
        row = text_len + 1 + s
        attention[row] = 0.0
        attention[row, target(s)] = 1.0
    return attention[None, None]


def test_diagonal_guide_loss_is_low_on_the_diagonal_and_high_off_it():
    text_len, speech_len = 10, 16
    lengths = torch.tensor([text_len]), torch.tensor([speech_len])

    def loss(target):
        return diagonal_guide_loss(packed_attention(text_len, speech_len, target), *lengths, sigma=0.2).item()

    diagonal = loss(lambda s: 1 + min(text_len - 1, round(s * text_len / speech_len)))
    reversed_text = loss(lambda s: text_len - min(text_len - 1, round(s * text_len / speech_len)))
    stuck_on_first = loss(lambda s: 1)
    on_speech_history = loss(lambda s: text_len + 1 + s)  # attends to itself, never to the text
    assert diagonal < 0.05
    assert on_speech_history == pytest.approx(1.0)
    assert reversed_text > 0.5 and stuck_on_first > 0.4


def test_diagonal_guide_loss_ignores_padding_and_averages_rows():
    """A row padded into a longer batch scores as alone; junk in padded positions changes nothing."""
    def row(text_len, speech_len, length):
        attention = packed_attention(text_len, speech_len, lambda s: 1 + (s * 7) % text_len)
        padded = torch.rand(1, 1, length, length)  # junk everywhere outside the row
        n = attention.shape[-1]
        padded[..., :n, :n] = attention
        padded[..., :n, n:] = 0.0
        return padded

    alone = [diagonal_guide_loss(row(t, s, t + 2 + s), torch.tensor([t]), torch.tensor([s]), 0.2)
             for t, s in ((5, 9), (8, 4))]
    batch = torch.cat([row(5, 9, 16), row(8, 4, 16)])
    both = diagonal_guide_loss(batch, torch.tensor([5, 8]), torch.tensor([9, 4]), 0.2)
    # The mean runs over the valid prediction positions of all rows: 10 and 5 of them.
    torch.testing.assert_close(both, (10 * alone[0] + 5 * alone[1]) / 15)


def test_guided_llm_returns_a_guide_loss_in_training_only_with_unchanged_logits():
    torch.manual_seed(0)
    plain = SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM).eval()
    guided = SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM)
    guided.load_state_dict(plain.state_dict())
    guide = GuideConfig(weight=1.0, layers=[1], heads=2)
    batch = ragged_batch([4, 6], [7, 3])
    guided.train()
    with pytest.raises(ValueError, match="eager"):  # the fused kernels return no weights to guide
        guided(*batch, CODEBOOK, guide=guide)
    guided.enable_guide(guide)
    guided.eval()
    assert guided(*batch, CODEBOOK, guide=guide).guide_loss is None and plain(*batch, CODEBOOK).guide_loss is None
    # The eager attention that returns the weights computes the same function as the fused kernels.
    torch.testing.assert_close(guided(*batch, CODEBOOK).logits, plain(*batch, CODEBOOK).logits, atol=1e-5,
                               rtol=1e-4)
    guided.train()
    out = guided(*batch, CODEBOOK, guide=guide)
    assert 0.0 < out.guide_loss.item() < 1.0
    out.guide_loss.backward()
    layers = guided.decoder.model.layers
    head_dim = guided.hidden_size // LLMConfig().num_heads
    query_grad = layers[1].self_attn.q_proj.weight.grad
    assert query_grad[:2 * head_dim].abs().sum() > 0  # the two guided heads learn
    assert query_grad[2 * head_dim:].abs().sum() == 0  # the others are free
    assert layers[2].self_attn.q_proj.weight.grad is None  # nothing after the guided layer is involved
    assert guided(*batch, CODEBOOK).guide_loss is None  # the e2e stage asks for none


def test_llm_returns_every_layers_attention_on_request_on_the_eager_path_only():
    torch.manual_seed(0)
    llm = SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM).eval()
    batch = ragged_batch([4, 6], [7, 3])
    assert llm(*batch, CODEBOOK).attentions is None
    with pytest.raises(ValueError, match="eager"):
        llm(*batch, CODEBOOK, return_attentions=True)
    fused = llm(*batch, CODEBOOK).logits
    llm.decoder.set_attn_implementation("eager")
    out = llm(*batch, CODEBOOK, return_attentions=True)
    torch.testing.assert_close(out.logits, fused, atol=1e-5, rtol=1e-4)
    config = llm.decoder.config
    packed = max(1 + t + 1 + s for t, s in [(4, 7), (6, 3)])  # each row packs SOS text TASK speech
    assert len(out.attentions) == config.num_hidden_layers
    assert all(a.shape == (2, config.num_attention_heads, packed, packed) for a in out.attentions)
    # Softmax rows over the keys, causal: nothing attends to a later position.
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, packed))
    assert out.attentions[0].triu(diagonal=1).abs().max() == 0


def test_input_noise_corrupts_only_speech_inputs_in_training_when_asked():
    """An ``input_noise`` fraction of the speech positions get a random code's embedding, the text prefix and the
    targets never change, and eval mode or no noise (GRPO scores its own rollouts) is clean."""
    torch.manual_seed(0)
    llm = SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM).train()
    text, text_mask, speech, speech_mask = ragged_batch([5, 8], [400, 300])
    lengths = (text_mask.sum(1), speech_mask.sum(1))
    clean, mask = llm._pack(text, lengths[0], speech, lengths[1], CODEBOOK)
    noisy, _ = llm._pack(text, lengths[0], speech, lengths[1], CODEBOOK, input_noise=0.3)
    in_speech = mask & (torch.arange(mask.shape[1])[None, :] >= (lengths[0] + 2)[:, None])
    changed = (noisy != clean).any(-1)
    assert not changed[~in_speech].any()  # text prefix and padding untouched
    # Random codes equal to the true one (1 in 81) leave a position unchanged: expect 0.3 * 80/81 of 700.
    assert abs(changed[in_speech].float().mean().item() - 0.3 * 80 / 81) < 0.05
    reference = llm(text, text_mask, speech, speech_mask, CODEBOOK)
    corrupted = llm(text, text_mask, speech, speech_mask, CODEBOOK, input_noise=0.3)
    assert torch.equal(corrupted.targets, reference.targets)
    torch.testing.assert_close(corrupted.logits[:, 0], reference.logits[:, 0])  # TASK sees no speech yet
    assert not torch.allclose(corrupted.logits[:, 1:], reference.logits[:, 1:])
    llm.eval()
    torch.testing.assert_close(llm(text, text_mask, speech, speech_mask, CODEBOOK, input_noise=0.3).logits,
                               reference.logits)


def test_guide_config_errors():
    with pytest.raises(ValueError, match="layers"):
        GuideConfig(weight=1.0)
    with pytest.raises(ValueError, match="sigma"):
        GuideConfig(sigma=0.0)
    with pytest.raises(ValueError, match="outside a decoder of 4 layers"):
        SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM).enable_guide(GuideConfig(weight=1.0, layers=[4]))
    with pytest.raises(ValueError, match="attn_implementation"):
        LLMConfig(attn_implementation="flash")


def test_one_hot_probabilities_and_codes_match_hard_ids(model):
    text, text_mask, speech, speech_mask = ragged_batch([5, 3], [6, 4], seed=1)
    hard = model(text, text_mask, speech, speech_mask, CODEBOOK)
    one_hot = F.one_hot(speech, SPEECH_VOCAB).float()
    soft = model(text, text_mask, one_hot, speech_mask, CODEBOOK, speech_ids=speech)
    codes = model(text, text_mask, CODEBOOK[speech], speech_mask, CODEBOOK, speech_ids=speech)
    for other in (soft, codes):
        torch.testing.assert_close(other.logits[hard.mask], hard.logits[hard.mask], atol=1e-5, rtol=1e-4)
        assert torch.equal(other.targets, hard.targets)


def test_gradients_reach_codes_and_probabilities():
    torch.manual_seed(0)
    model = SpeechLLM(LLMConfig(num_layers=2), LAYOUT, CODE_DIM)
    text, text_mask, speech, speech_mask = ragged_batch([4, 6], [3, 7], seed=2)
    codes = CODEBOOK[speech].clone().requires_grad_(True)  # stand-in for the tokenizer's quantized output
    probs = torch.randn(2, 7, SPEECH_VOCAB).softmax(-1)  # stand-in for Gumbel-softmax
    probs = probs.masked_fill(~speech_mask[..., None], float("nan")).requires_grad_(True)  # garbage padding
    for soft in (codes, probs):
        model.loss(model(text, text_mask, soft, speech_mask, CODEBOOK, speech_ids=speech)).backward()
        per_position = soft.grad.abs().sum(-1)
        assert bool((per_position[speech_mask] > 0).all()), "every real speech position must get a gradient"
        assert bool((per_position[~speech_mask] == 0).all()), "padding must get no gradient"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_inputs_raise_clear_errors(model):
    text, text_mask, speech, speech_mask = ragged_batch([4, 6], [3, 7])
    with pytest.raises(ValueError, match="right-padded"):
        model(text, text_mask.flip(1), speech, speech_mask, CODEBOOK)
    with pytest.raises(ValueError, match="codebook"):
        model(text, text_mask, speech, speech_mask, CODEBOOK[:-1])
    with pytest.raises(ValueError, match="speech id out of range"):
        model(text, text_mask, speech.masked_fill(speech_mask, SPEECH_VOCAB), speech_mask, CODEBOOK)
    with pytest.raises(ValueError, match="text id out of range"):
        model(text + TEXT_VOCAB, text_mask, speech, speech_mask, CODEBOOK)
    soft = model(text, text_mask, CODEBOOK[speech], speech_mask, CODEBOOK)
    with pytest.raises(ValueError, match="speech_ids"):
        model.loss(soft)
    with pytest.raises(ValueError, match="architecture"):
        LLMConfig(architecture="llama")


# ---------------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------------

def greedy_by_recomputation(model, text, prompt_speech, max_len):
    """Reference decoder: a full forward pass per step, argmax over [speech, EOS]."""
    generated = []
    while len(generated) < max_len:
        speech = torch.cat([prompt_speech, torch.tensor(generated, dtype=torch.long)])
        out = model(text[None], torch.ones(1, len(text), dtype=torch.bool), speech[None],
                    torch.ones(1, len(speech), dtype=torch.bool), CODEBOOK)
        token = int(out.logits[0, len(speech)].argmax())
        if token == SPEECH_VOCAB:
            break
        generated.append(token)
    return torch.tensor(generated, dtype=torch.long)


def test_kv_cache_generation_equals_recomputation():
    torch.manual_seed(3)
    # A larger init spreads the logits so the random model's greedy path is not one repeated token.
    model = SpeechLLM(LLMConfig(num_layers=2, initializer_range=0.1), LAYOUT, CODE_DIM).eval()
    gen = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, TEXT_VOCAB, (n,), generator=gen) for n in (3, 8, 5)]
    prompt_texts = [torch.randint(0, TEXT_VOCAB, (n,), generator=gen) for n in (4, 0, 2)]
    prompt_speech = [torch.randint(0, SPEECH_VOCAB, (n,), generator=gen) for n in (6, 0, 3)]
    ratio = 3.0
    for prompted in (False, True):
        outputs = model.generate(texts, CODEBOOK, prompt_texts if prompted else None,
                                 prompt_speech if prompted else None, temperature=0.0, min_len_ratio=0.0,
                                 max_len_ratio=ratio)
        for b, text in enumerate(texts):
            full_text = torch.cat([prompt_texts[b], text]) if prompted else text
            prefix = prompt_speech[b] if prompted else torch.zeros(0, dtype=torch.long)
            expected = greedy_by_recomputation(model, full_text, prefix, int(len(text) * ratio))
            assert torch.equal(outputs[b], expected), (prompted, b, outputs[b], expected)
        assert max(len(o) for o in outputs) >= 3, "the comparison needs non-trivial sequences"
        assert len({tuple(o.tolist()) for o in outputs}) == len(outputs)


def with_eos_bias(model, monkeypatch, bias):
    """Makes EOS overwhelmingly likely (bias > 0) or unlikely (bias < 0) at every step."""
    original = model.speech_logits

    def biased(hidden):
        logits = original(hidden)
        return torch.cat([logits[..., :-1], logits[..., -1:] + bias], dim=-1)

    monkeypatch.setattr(model, "speech_logits", biased)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_length_masks_eos_until_reached(model, monkeypatch, temperature):
    with_eos_bias(model, monkeypatch, 1e4)
    texts = [torch.arange(4), torch.arange(10), torch.arange(1)]
    outputs = model.generate(texts, CODEBOOK, temperature=temperature, min_len_ratio=1.5, max_len_ratio=4.0,
                             generator=torch.Generator().manual_seed(0))
    # EOS is the only choice once allowed, so every row stops exactly at its minimum length.
    assert [len(o) for o in outputs] == [6, 15, 1]
    # A positive ratio asks for one token even where it rounds to none (an empty utterance is never wanted).
    outputs = model.generate(texts[2:], CODEBOOK, temperature=temperature, min_len_ratio=0.5, max_len_ratio=4.0)
    assert [len(o) for o in outputs] == [1]
    for o in outputs:
        assert int(o.min()) >= 0 and int(o.max()) < SPEECH_VOCAB


def test_max_length_stops_and_prompt_is_not_returned(model, monkeypatch):
    with_eos_bias(model, monkeypatch, -1e4)
    texts = [torch.arange(3), torch.arange(7)]
    prompt_texts = [torch.arange(5), torch.arange(2)]
    prompt_speech = [torch.arange(12), torch.arange(4)]
    outputs = model.generate(texts, CODEBOOK, prompt_texts, prompt_speech, temperature=1.0, top_k=5,
                             min_len_ratio=0.0, max_len_ratio=2.0, generator=torch.Generator().manual_seed(0))
    # Lengths count only new tokens for the target text (3 * 2 and 7 * 2), never the prompt.
    assert [len(o) for o in outputs] == [6, 14]


def test_generation_is_reproducible_and_row_lengths_vary(model):
    texts = [torch.arange(6), torch.arange(6) + 10, torch.arange(3)]
    runs = [model.generate(texts, CODEBOOK, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    for text, out in zip(texts, runs[0]):
        assert int(0.5 * len(text)) <= len(out) <= int(6.0 * len(text))
    with pytest.raises(ValueError, match="min_len_ratio"):
        model.generate(texts, CODEBOOK, min_len_ratio=3.0, max_len_ratio=2.0)
    with pytest.raises(ValueError, match="prompt_text_ids"):
        model.generate(texts, CODEBOOK, prompt_text_ids=texts[:1])


# ---------------------------------------------------------------------------------------------------------------
# Sampling strategies
# ---------------------------------------------------------------------------------------------------------------

def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = torch.isfinite(sampling.top_k_filter(logits, 2))
    assert kept.tolist() == [[False, True, False, True, False], [True, True, False, False, False]]
    assert torch.equal(sampling.top_k_filter(logits, 0), logits)
    assert torch.equal(sampling.top_k_filter(logits, 5), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5, 0.3, 0.15, 0.05
    logits = probs.log()
    kept = lambda p: torch.isfinite(sampling.top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.5) == [False, True, False, False]  # the top token alone already reaches 0.5
    assert kept(0.1) == [False, True, False, False]  # the most likely token always survives
    assert kept(0.9) == [True, True, False, True]
    assert kept(1.0) == [True, True, True, True]
    with pytest.raises(ValueError, match="top_p"):
        sampling.top_p_filter(logits, 0.0)


def test_nucleus_sampling_never_leaves_the_nucleus_and_greedy_is_argmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 2.0, 1.0, 3.0, -1.0]]).repeat(2000, 1)
    draws = sampling.nucleus_sample(logits, top_k=2, top_p=1.0, generator=gen)
    assert set(draws.tolist()) == {1, 3}
    empty_history = torch.zeros(2000, 0, dtype=torch.long)
    greedy = sampling.sample_next_token(logits, empty_history, temperature=0.0, generator=gen)
    assert bool((greedy == 3).all())
    hot = sampling.sample_next_token(logits, empty_history, temperature=100.0, top_k=0, top_p=1.0,
                                     repetition_aware=False, generator=gen)
    assert set(hot.tolist()) == {0, 1, 2, 3, 4}  # a high temperature flattens the distribution


def test_repetition_aware_sampling_falls_back_only_on_repeats():
    gen = torch.Generator().manual_seed(0)
    rows = 2000
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0]]).repeat(rows, 1)  # token 0 has ~45 % of the mass
    history = lambda *tokens: torch.tensor(tokens).repeat(rows, 1)  # noqa: E731
    ras = lambda h, **kw: sampling.repetition_aware_sample(logits, h, top_k=1, top_p=1.0,  # noqa: E731
                                                           generator=gen, **kw)
    # The nucleus is token 0 alone: with no repeat in the window, RAS always returns it.
    assert bool((ras(history(1, 2, 3, 1, 2, 3)) == 0).all())
    # One occurrence of 0 in the last 10 tokens (10 * 0.1 = 1) triggers a full-distribution draw.
    fallback = ras(history(0, 1, 2, 3))
    share = (fallback == 0).float().mean().item()
    assert 0.35 < share < 0.55 and set(fallback.tolist()) == {0, 1, 2, 3}
    # Outside the window, or below the tau_r threshold, there is no fallback.
    assert bool((ras(history(0, *[1] * 10)) == 0).all())
    assert bool((ras(history(0, 1, 2), tau_r=0.2) == 0).all())
    assert bool((ras(history(0, 1, 0), tau_r=0.2) != 0).any())


# ---------------------------------------------------------------------------------------------------------------
# Construction: pretrained checkpoint, paper size
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("padding", [0, 24])
def test_pretrained_checkpoint_keeps_text_rows(tmp_path, monkeypatch, tied, padding):
    """A local checkpoint's text rows move behind the specials, also from an embedding padded past the tokenizer's
    ids as official checkpoints pad theirs (Qwen2.5: 151,936 rows for 151,665 ids); the padding rows are dropped."""
    torch.manual_seed(0)
    hf_config = transformers.Qwen2Config(vocab_size=TEXT_VOCAB + padding, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                         tie_word_embeddings=tied)
    original = transformers.Qwen2ForCausalLM(hf_config)
    original.save_pretrained(tmp_path)
    model = SpeechLLM(LLMConfig(pretrained_path=str(tmp_path)), LAYOUT, CODE_DIM)
    assert model.hidden_size == 64 and model.decoder.config.vocab_size == LAYOUT.vocab_size
    new_in = model.decoder.get_input_embeddings().weight
    new_out = model.decoder.get_output_embeddings().weight
    text_rows = slice(LAYOUT.text_offset, LAYOUT.speech_offset)
    torch.testing.assert_close(new_in[text_rows], original.get_input_embeddings().weight[:TEXT_VOCAB], atol=0, rtol=0)
    torch.testing.assert_close(new_out[text_rows], original.get_output_embeddings().weight[:TEXT_VOCAB], atol=0,
                               rtol=0)
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied
    # Special and speech rows are fresh, not copies of old text rows.
    assert not torch.allclose(new_in[:LAYOUT.text_offset], original.get_input_embeddings().weight[:LAYOUT.text_offset])
    assert new_in[LAYOUT.speech_offset:].std().item() == pytest.approx(hf_config.initializer_range, rel=0.2)
    # The transformer body is the checkpoint's.
    torch.testing.assert_close(model.decoder.model.layers[0].mlp.up_proj.weight,
                               original.model.layers[0].mlp.up_proj.weight)
    text, text_mask, speech, speech_mask = ragged_batch([4, 2], [5, 3])
    assert model(text, text_mask, speech, speech_mask, CODEBOOK).logits.shape == (2, 6, SPEECH_VOCAB + 1)
    with pytest.raises(ValueError, match="vocab_size"):  # a tokenizer with ids the checkpoint has no row for
        SpeechLLM(LLMConfig(pretrained_path=str(tmp_path)), TokenLayout(TEXT_VOCAB + padding + 1, SPEECH_VOCAB),
                  CODE_DIM)
    with pytest.raises(ValueError, match="architecture"):
        SpeechLLM(LLMConfig(architecture="qwen3", pretrained_path=str(tmp_path)), LAYOUT, CODE_DIM)
    if padding:  # more unused rows than checkpoints pad with: the text tokenizer is another one
        monkeypatch.setattr(llm_module, "MAX_PADDING_ROWS", padding - 1)
        with pytest.raises(ValueError, match="pad its rows by at most"):
            SpeechLLM(LLMConfig(pretrained_path=str(tmp_path)), LAYOUT, CODE_DIM)


def test_presets_build_with_the_right_size():
    assert set(PRESETS) == {"tiny", "paper"}
    tiny = SpeechLLM(PRESETS["tiny"], TokenLayout(256, 6561), codebook_dim=8)
    assert 2e6 < tiny.num_parameters() < 10e6
    # Qwen3's text vocabulary + a 3^8 FSQ codebook, as when starting from Qwen3-0.6B.
    with torch.device("meta"):
        paper = SpeechLLM(PRESETS["paper"], TokenLayout(151936, 6561), codebook_dim=8)
    assert isinstance(paper.decoder, transformers.Qwen3ForCausalLM)
    assert abs(paper.num_parameters() - 0.6e9) < 0.06e9, paper.num_parameters()


# ---------------------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_llm_overfits_fixed_sequences():
    torch.manual_seed(0)
    model = SpeechLLM(LLMConfig(), LAYOUT, CODE_DIM)
    gen = torch.Generator().manual_seed(1)
    text_lengths, speech_lengths = [6, 9, 7, 11, 5, 8, 10, 12], [10, 16, 13, 19, 9, 22, 18, 25]
    texts = [torch.randint(0, TEXT_VOCAB, (n,), generator=gen) for n in text_lengths]
    speeches = [torch.randint(0, SPEECH_VOCAB, (n,), generator=gen) for n in speech_lengths]
    text = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True)
    text_mask = torch.arange(text.shape[1])[None, :] < torch.tensor(text_lengths)[:, None]
    speech = torch.nn.utils.rnn.pad_sequence(speeches, batch_first=True)
    speech_mask = torch.arange(speech.shape[1])[None, :] < torch.tensor(speech_lengths)[:, None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(60):
        loss = model.loss(model(text, text_mask, speech, speech_mask, CODEBOOK))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    outputs = model.generate(texts, CODEBOOK, temperature=0.0, min_len_ratio=0.0, max_len_ratio=3.0)
    matched = sum(int((o[:len(s)] == s[:len(o)]).sum()) for o, s in zip(outputs, speeches))
    assert loss.item() < 0.05
    assert matched / sum(speech_lengths) > 0.95, (outputs, speeches)
    assert sum(torch.equal(o, s) for o, s in zip(outputs, speeches)) >= 6
