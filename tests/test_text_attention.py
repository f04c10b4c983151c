"""The LLM's attention over its text (e2e_tts/text_attention.py), and synthesis recording it."""

import numpy as np
import pytest
import torch

from e2e_tts.config import load_config, to_object
from e2e_tts.system import TTSSystem
from e2e_tts.text import ByteTokenizer
from e2e_tts.text_attention import text_attention
from shared import MICRO_MODEL_OVERRIDES


@pytest.fixture(scope="module")
def system():
    config = load_config(overrides=MICRO_MODEL_OVERRIDES + ["model.llm.num_layers=2"])
    torch.manual_seed(0)
    return TTSSystem(to_object(config.model), ByteTokenizer(), ["a"]).eval()


def ids(*values):
    return torch.tensor(values, dtype=torch.long)


def test_rows_are_the_prediction_steps_and_columns_the_text(system):
    llm, codebook = system.llm, system.codebook()
    text, speech = ids(5, 9, 2, 7), ids(1, 3, 3, 0, 2)
    maps = text_attention(llm, codebook, text, speech)
    assert maps.shape == (2, len(speech) + 1, len(text)) and maps.dtype == np.float32
    assert (maps >= 0).all() and (maps.sum(-1) <= 1 + 1e-5).all()
    # causal rows: the row that predicts token s has not seen it, the next one has
    changed = text_attention(llm, codebook, text, ids(1, 3, 4, 0, 2))
    np.testing.assert_array_equal(changed[:, :3], maps[:, :3])
    assert not np.allclose(changed[:, 3], maps[:, 3])


def test_a_prompt_shifts_the_rows_and_columns_by_its_own_length(system):
    """A prompt is the same row as a longer text and speech: its text and speech are left out of the map."""
    llm, codebook = system.llm, system.codebook()
    prompt_text, text, prompt_speech, speech = ids(4, 4, 8), ids(5, 9, 2), ids(6, 1), ids(1, 3, 0)
    prompted = text_attention(llm, codebook, text, speech, prompt_text, prompt_speech)
    whole = text_attention(llm, codebook, torch.cat([prompt_text, text]), torch.cat([prompt_speech, speech]))
    np.testing.assert_allclose(prompted, whole[:, len(prompt_speech):, len(prompt_text):], rtol=0, atol=1e-6)


def test_the_decoder_keeps_its_attention_path(system):
    decoder = system.llm.decoder
    for path in ("sdpa", "eager"):
        decoder.set_attn_implementation(path)
        text_attention(system.llm, system.codebook(), ids(5, 9), ids(1, 2))
        assert decoder.config._attn_implementation == path  # generation goes on with the path it was given
