"""Tests for the speech tokenizer (e2e_tts/models/tokenizer.py) and its token statistics."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from e2e_tts.models.speech_embedding import SpeechEmbedding
from e2e_tts.models.tokenizer import (
    MAX_ENUMERATED_CODES, PRESETS, SpeechTokenizer, TokenizerConfig, token_statistics,
)

N_MELS = 80


def small_config(**overrides) -> TokenizerConfig:
    """A fast tokenizer for unit tests (the tiny preset with a narrower encoder)."""
    return dataclasses.replace(PRESETS["tiny"], **{"dim": 64, "depth": 2, "heads": 4, **overrides})


def padded_batch(lengths: list[int], max_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel-like input ``(B, max_len, 80)`` (about -5 +- 3) and its mask; padding holds garbage on purpose."""
    generator = torch.Generator().manual_seed(seed)
    mel = torch.randn(len(lengths), max_len, N_MELS, generator=generator) * 3.0 - 5.0
    mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    return mel.masked_fill(~mask[..., None], 1e4), mask


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "rvq"])
def test_shapes_and_padding(quantizer):
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(quantizer=quantizer, codebook_size=16))
    mel, mel_mask = padded_batch([11, 7, 4], max_len=11)
    out = tokenizer(mel, mel_mask)
    # 11 frames -> 5 tokens; 7 valid frames -> 3 whole tokens; 4 -> 2.
    assert out.ids.shape == (3, 5) and out.ids.dtype == torch.long
    assert out.codes.shape == (3, 5, tokenizer.codebook_dim)
    assert out.mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] * 2 + [False] * 3]
    assert out.aux_loss.dim() == 0
    assert (out.ids[~out.mask] == 0).all() and (out.codes[~out.mask] == 0).all()
    assert out.ids.min() >= 0 and out.ids.max() < tokenizer.codebook_size
    assert torch.isfinite(out.codes).all()


def test_frames_per_token_is_configurable():
    tokenizer = SpeechTokenizer(small_config(frames_per_token=4))
    mel, mel_mask = padded_batch([10, 9], max_len=10)
    out = tokenizer(mel, mel_mask)
    assert out.ids.shape == (2, 2)
    assert out.mask.tolist() == [[True, True], [True, True]]
    out = tokenizer(*padded_batch([10, 7], max_len=10))
    assert out.mask.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "rvq"])
def test_padding_invariance(quantizer):
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(quantizer=quantizer, codebook_size=16)).eval()
    mel, mel_mask = padded_batch([9, 30], max_len=30, seed=1)
    alone = tokenizer(mel[:1, :9], mel_mask[:1, :9])
    batched = tokenizer(mel, mel_mask)
    assert alone.ids.shape == (1, 4)
    assert torch.equal(batched.ids[0, :4], alone.ids[0])
    torch.testing.assert_close(batched.codes[0, :4], alone.codes[0], atol=1e-5, rtol=0)
    assert not batched.mask[0, 4:].any()


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "rvq"])
def test_straight_through_gradient_reaches_encoder(quantizer):
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(quantizer=quantizer, codebook_size=16))
    mel, mel_mask = padded_batch([12, 8], max_len=12)
    out = tokenizer(mel, mel_mask)
    weights = torch.randn_like(out.codes)
    (out.codes * weights).sum().backward()
    for name in ("front_end.weight", "encoder.blocks.0.attn.to_q.weight", "project_in.weight"):
        grad = dict(tokenizer.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_rvq_straight_through_has_unit_gradient():
    """d codes / d latent must be the identity, not num_quantizers x (the bare ResidualVQ behaviour)."""
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(quantizer="rvq", codebook_size=16, num_quantizers=3))
    latent = torch.randn(2, 5, tokenizer.codebook_dim, requires_grad=True)
    codes, _, _ = tokenizer._quantize(latent, torch.ones(2, 5, dtype=torch.bool))
    codes.sum().backward()
    torch.testing.assert_close(latent.grad, torch.ones_like(latent))


@pytest.mark.parametrize("quantizer", ["fsq", "vq", "rvq"])
def test_codebook_lookup_matches_codes(quantizer):
    torch.manual_seed(0)
    # VQ codebooks move during a training forward, so compare them in eval mode; FSQ's grid is fixed.
    tokenizer = SpeechTokenizer(small_config(quantizer=quantizer, codebook_size=16))
    tokenizer.train(quantizer == "fsq")
    mel, mel_mask = padded_batch([16, 10], max_len=16)
    out = tokenizer(mel, mel_mask)
    codebook = tokenizer.codebook()
    assert codebook.shape == (tokenizer.codebook_size, tokenizer.codebook_dim)
    valid = out.mask
    torch.testing.assert_close(codebook[out.ids][valid], out.codes[valid].detach(), atol=1e-6, rtol=0)
    # Every id names a distinct code, so soft tokens over the codebook are well defined.
    assert torch.unique(codebook, dim=0).shape[0] == tokenizer.codebook_size


def test_fsq_codebook_sizes():
    tokenizer = SpeechTokenizer(small_config(levels=[3] * 8))
    assert tokenizer.codebook_size == 6561 and tokenizer.codebook_dim == 8
    codebook = tokenizer.codebook()
    assert codebook.shape == (6561, 8)
    assert set(codebook.unique().tolist()) == {-1.0, 0.0, 1.0}
    tiny = SpeechTokenizer(PRESETS["tiny"])
    assert tiny.codebook_size == math.prod(PRESETS["tiny"].levels)


@pytest.mark.parametrize("id_table", [False, True])
def test_codes_feed_speech_embedding_like_ids(id_table):
    """The joint stage embeds codes; later stages embed ids or probabilities: all must agree, with or without the
    per-id table, and the codes still carry gradient to the tokenizer."""
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config())
    embedding = SpeechEmbedding(tokenizer.codebook_dim, 32, tokenizer.codebook_size if id_table else 0)
    if id_table:  # distinct rows, as after training (they start at zero)
        torch.nn.init.normal_(embedding.table.weight)
    out = tokenizer(*padded_batch([8], max_len=8))
    codebook = tokenizer.codebook()
    from_codes = embedding(out.codes, codebook)
    from_ids = embedding(out.ids, codebook)
    one_hot = torch.nn.functional.one_hot(out.ids, tokenizer.codebook_size).float()
    torch.testing.assert_close(from_codes, from_ids, atol=1e-5, rtol=0)
    torch.testing.assert_close(embedding(one_hot, codebook), from_ids, atol=1e-5, rtol=0)
    if id_table:
        assert not torch.allclose(from_ids, embedding.mlp(codebook[out.ids]))
    from_codes.square().sum().backward()
    assert tokenizer.project_in.weight.grad.abs().sum() > 0
    if id_table:
        used = torch.zeros(tokenizer.codebook_size, dtype=torch.bool)
        used[out.ids[out.mask]] = True
        assert torch.equal(embedding.table.weight.grad.abs().sum(1) > 0, used)  # the rows of the ids in the batch


@pytest.mark.parametrize("quantizer", ["vq", "rvq"])
def test_vq_variants_train(quantizer):
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(quantizer=quantizer, codebook_size=32, num_quantizers=2))
    codebook_before = tokenizer.codebook()
    out = tokenizer(*padded_batch([12, 6], max_len=12))
    assert out.aux_loss.requires_grad and out.aux_loss > 0
    (out.codes.square().mean() + out.aux_loss).backward()
    assert tokenizer.project_in.weight.grad.abs().sum() > 0
    # The EMA codebook moved during the training-mode forward.
    assert not torch.allclose(tokenizer.codebook(), codebook_before)
    expected = 32 if quantizer == "vq" else 32 ** 2
    assert tokenizer.codebook_size == expected


def test_rvq_codebook_enumeration_limit():
    tokenizer = SpeechTokenizer(small_config(quantizer="rvq", codebook_size=1024, num_quantizers=2))
    assert tokenizer.codebook_size == 1024 ** 2 > MAX_ENUMERATED_CODES
    with pytest.raises(ValueError, match="MAX_ENUMERATED_CODES"):
        tokenizer.codebook()


def test_rvq_combined_id_is_the_sum_of_its_stage_codes():
    """Combined id ``i_0 + K * i_1`` names the sum of stage 0's code ``i_0`` and stage 1's code ``i_1``."""
    tokenizer = SpeechTokenizer(small_config(quantizer="rvq", codebook_size=8, num_quantizers=2))
    stages = tokenizer.quantizer.codebooks
    torch.testing.assert_close(tokenizer.codebook()[5 + 8 * 7], stages[0, 5] + stages[1, 7])


def test_encode_is_eval_and_restores_mode():
    torch.manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(dropout=0.5)).train()
    mel, mel_mask = padded_batch([10, 6], max_len=10)
    ids_a, mask_a = tokenizer.encode(mel, mel_mask)
    ids_b, _ = tokenizer.encode(mel, mel_mask)
    assert tokenizer.training
    assert torch.equal(ids_a, ids_b) and not ids_a.requires_grad
    assert mask_a.tolist() == [[True] * 5, [True] * 3 + [False] * 2]


def test_bad_inputs_raise_clear_errors():
    tokenizer = SpeechTokenizer(small_config())
    mel, mel_mask = padded_batch([6, 6], max_len=6)
    with pytest.raises(ValueError, match="mel must be"):
        tokenizer(mel[..., :40], mel_mask)
    with pytest.raises(ValueError, match="mel_mask must be"):
        tokenizer(mel, mel_mask.float())
    with pytest.raises(ValueError, match="mel_mask must be"):
        tokenizer(mel, mel_mask[:, :5])
    with pytest.raises(ValueError, match=r"sequences \[1\] have no complete valid token"):
        tokenizer(*padded_batch([6, 1], max_len=6))
    with pytest.raises(ValueError, match="quantizer must be one of"):
        TokenizerConfig(quantizer="lfq")
    with pytest.raises(ValueError, match="levels"):
        TokenizerConfig(levels=[2, 5])


def test_configs_are_omegaconf_structured():
    for name, config in PRESETS.items():
        merged = OmegaConf.merge(OmegaConf.structured(config), OmegaConf.from_dotlist(["levels=[8,5,5,5]"]))
        rebuilt = OmegaConf.to_object(merged)
        assert isinstance(rebuilt, TokenizerConfig) and rebuilt.levels == [8, 5, 5, 5], name


def test_paper_preset_size_on_meta_device():
    with torch.device("meta"):
        tokenizer = SpeechTokenizer(PRESETS["paper"])
    num_params = sum(p.numel() for p in tokenizer.parameters())
    assert num_params == 593_768_968  # ~0.6B, like the paper's tokenizer
    assert abs(num_params - 0.6e9) / 0.6e9 < 0.1
    assert tokenizer.codebook_size == 6561 and tokenizer.codebook_dim == 8
    tiny_params = sum(p.numel() for p in SpeechTokenizer(PRESETS["tiny"]).parameters())
    assert 1e6 < tiny_params < 5e6


@pytest.mark.slow
def test_tokenizer_learns_through_the_quantizer():
    """Tokenizer + MLP decoder learn to reconstruct mel built from 8 prototype frames only if gradients pass
    the quantizer; distinct prototypes must then get distinct ids."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    tokenizer = SpeechTokenizer(small_config(depth=1))
    decoder = torch.nn.Sequential(torch.nn.Linear(tokenizer.codebook_dim, 64), torch.nn.GELU(),
                                  torch.nn.Linear(64, 2 * N_MELS))
    prototypes = torch.randn(8, N_MELS, generator=generator) * 3.0 - 5.0
    which = torch.randint(0, 8, (4, 12), generator=generator)
    mel = prototypes[which].repeat_interleave(2, dim=1) + 0.1 * torch.randn(4, 24, N_MELS, generator=generator)
    mel_mask = torch.ones(4, 24, dtype=torch.bool)
    target = (mel - tokenizer.config.mel_mean) / tokenizer.config.mel_std
    optimizer = torch.optim.Adam([*tokenizer.parameters(), *decoder.parameters()], lr=1e-2)
    losses = []
    for _ in range(40):
        out = tokenizer(mel, mel_mask)
        loss = (decoder(out.codes).reshape(4, 24, N_MELS) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    ids_per_prototype = [set(out.ids[which == k].tolist()) for k in range(8)]
    for k in range(8):
        for j in range(k):
            assert not ids_per_prototype[k] & ids_per_prototype[j], (k, j)


# ---- token_statistics ------------------------------------------------------------------------------------


def test_statistics_uniform_iid():
    generator = torch.Generator().manual_seed(0)
    vocab = 16
    sequences = [torch.randint(0, vocab, (5000,), generator=generator) for _ in range(40)]
    stats = token_statistics(sequences, vocab)
    assert stats["usage"] == 1.0
    assert stats["entropy_bits"] == pytest.approx(math.log2(vocab), abs=1e-3)
    assert stats["perplexity"] == pytest.approx(vocab, rel=1e-3)
    assert 0.0 <= stats["mutual_information_bits"] < 2e-3
    assert stats["num_tokens"] == 200_000 and stats["num_pairs"] == 200_000 - 40


def test_statistics_deterministic_cycle():
    vocab = 64
    # Whole cycles of pairs (length 100 * 64 + 1), so both pair marginals are exactly uniform.
    sequences = [torch.arange(0, 6401) % vocab, torch.arange(5, 6406) % vocab]
    stats = token_statistics(sequences, vocab)
    assert stats["mutual_information_bits"] == pytest.approx(6.0, abs=1e-9)
    # The next token is a function of the current one: I(X_{n+1}; X_n) = H(X_n).
    assert stats["entropy_bits"] == pytest.approx(stats["mutual_information_bits"], abs=1e-4)


def test_statistics_by_hand_and_within_sequences():
    # [0, 0, 1, 1]: pairs (0,0), (0,1), (1,1); first marginal (2/3, 1/3), second (1/3, 2/3).
    stats = token_statistics([torch.tensor([0, 0, 1, 1])], vocab_size=4)
    expected_mi = (math.log2(1.5) + math.log2(0.75) + math.log2(1.5)) / 3
    assert stats["usage"] == 0.5 and stats["entropy_bits"] == pytest.approx(1.0)
    assert stats["mutual_information_bits"] == pytest.approx(expected_mi)
    # No pair crosses a sequence boundary: (0,1) and (1,0) only -> the next token is determined.
    split = token_statistics([torch.tensor([0, 1]), torch.tensor([1, 0])], vocab_size=2)
    assert split["num_pairs"] == 2 and split["mutual_information_bits"] == pytest.approx(1.0)
    assert math.isnan(token_statistics([torch.tensor([3])], vocab_size=4)["mutual_information_bits"])


def test_statistics_bad_input():
    with pytest.raises(ValueError, match="out of range"):
        token_statistics([torch.tensor([0, 4])], vocab_size=4)
    with pytest.raises(ValueError, match="1-D integer"):
        token_statistics([torch.zeros(2, 3, dtype=torch.long)], vocab_size=4)
    with pytest.raises(ValueError, match="1-D integer"):
        token_statistics([torch.tensor([0.0, 1.0])], vocab_size=4)
    with pytest.raises(ValueError, match="at least one token"):
        token_statistics([torch.tensor([], dtype=torch.long)], vocab_size=4)
