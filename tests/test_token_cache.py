"""The frozen tokenizer's ids are read once per utterance and equal the recomputed ones."""

import pytest
import torch

from e2e_tts.objectives.multitask import MultiTaskObjective
from e2e_tts.objectives.token_cache import FrozenTokenCache
from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem
from e2e_tts.text import ByteTokenizer
from test_system import make_batch, small_models


@pytest.fixture
def tokenizer():
    torch.manual_seed(0)
    return TTSSystem(small_models(), ByteTokenizer(), speakers=["a", "b"]).tokenizer.eval()


def test_cached_ids_equal_the_recomputed_ones_in_any_batch(tokenizer):
    cache = FrozenTokenCache(tokenizer)
    first = make_batch(seed=0)
    ids, mask = cache(first["mel"], first["mel_mask"], first["keys"])
    expected = tokenizer(first["mel"], first["mel_mask"])
    assert torch.equal(ids, expected.ids) and torch.equal(mask, expected.mask)
    # The same utterances again, reordered and with more padding, next to a new one: only the new one is encoded.
    order = [2, 0]
    mel = torch.nn.functional.pad(first["mel"][order], (0, 0, 0, 8), value=-5.0)
    mel_mask = torch.nn.functional.pad(first["mel_mask"][order], (0, 8))
    new = make_batch(batch_size=1, seed=7)
    mel = torch.cat([mel, torch.nn.functional.pad(new["mel"], (0, 0, 0, 8), value=-5.0)])
    mel_mask = torch.cat([mel_mask, torch.nn.functional.pad(new["mel_mask"], (0, 8))])
    calls = []
    handle = tokenizer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    ids, mask = cache(mel, mel_mask, [first["keys"][i] for i in order] + new["keys"])
    handle.remove()
    assert calls == [1] and len(cache) == 4
    expected = tokenizer(mel, mel_mask)
    assert torch.equal(ids, expected.ids) and torch.equal(mask, expected.mask)


def test_a_key_with_other_audio_is_not_confused(tokenizer):
    cache = FrozenTokenCache(tokenizer)
    batch = make_batch(seed=0)
    cache(batch["mel"], batch["mel_mask"], batch["keys"])
    other = make_batch(seed=1)
    other["mel_mask"][0, -1] = False  # another clip under the same key, one frame shorter
    ids, _ = cache(other["mel"][:1], other["mel_mask"][:1], batch["keys"][:1])
    assert torch.equal(ids, tokenizer(other["mel"][:1], other["mel_mask"][:1]).ids)


def test_a_tokenizer_in_training_mode_is_refused(tokenizer):
    batch = make_batch()
    with pytest.raises(RuntimeError, match="eval mode"):
        FrozenTokenCache(tokenizer.train())(batch["mel"], batch["mel_mask"], batch["keys"])


def test_separate_stage_losses_are_unchanged_by_the_cache():
    torch.manual_seed(0)
    system = TTSSystem(small_models(), ByteTokenizer(), speakers=["a", "b"])
    system.set_trainable(["llm", "flow", "reward"])
    objective = MultiTaskObjective(system, StageConfig(trainable=["llm", "flow", "reward"],
                                                       loss_weights={"llm": 1.0, "flow": 1.0, "reward": 1.0})).eval()
    batch = make_batch()
    torch.manual_seed(1)
    _, cold = objective(batch)
    torch.manual_seed(1)
    _, warm = objective(batch)  # every id now comes from the cache
    assert len(objective.frozen_tokens) == 3 and cold == warm
