"""The LLM of an export as a Hugging Face causal LM (e2e_tts/hf_export.py): AutoModelForCausalLM loads it from the
local folder and computes the LLM's logits from plain ids."""

import json

import pytest
import torch
import transformers

from e2e_tts.cli import main
from e2e_tts.config import load_config, to_object
from e2e_tts.system import TTSSystem
from e2e_tts.text import ByteTokenizer
from e2e_tts.vocab import EOS_ID, SOS_ID, TASK_ID
from shared import MICRO_MODEL_OVERRIDES


@pytest.mark.parametrize("tied, id_embedding", [(False, True), (True, False)])
def test_exported_llm_loads_with_auto_model_and_gives_the_llms_logits(tmp_path, tied, id_embedding):
    config = load_config(overrides=MICRO_MODEL_OVERRIDES + [f"model.llm.tie_word_embeddings={tied}",
                                                            f"model.llm.id_embedding={id_embedding}"])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), speakers=["a"]).eval()
    if id_embedding:  # the per-id rows start at zero: give them values, as training does
        torch.nn.init.normal_(system.llm.speech_embedding.table.weight)
    export = system.export(tmp_path / "export", config)
    assert main(["export-hf", "--model", str(export)]) == 0

    model = transformers.AutoModelForCausalLM.from_pretrained(export / "hf", local_files_only=True).eval()
    layout = system.layout
    assert json.loads((export / "hf" / "config.json").read_text())["e2e_tts_token_layout"]["speech_offset"] \
        == layout.speech_offset
    assert model.generation_config.eos_token_id == EOS_ID
    # Two rows SOS text TASK speech of different lengths, right-padded.
    texts = [torch.tensor([5, 80, 200, 33]), torch.tensor([101, 7])]
    speech = [torch.randint(layout.speech_vocab_size, (n,), generator=torch.Generator().manual_seed(n))
              for n in (9, 6)]
    rows = [torch.cat([torch.tensor([SOS_ID]), layout.text_to_llm(t), torch.tensor([TASK_ID]),
                       layout.speech_to_llm(s)]) for t, s in zip(texts, speech)]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    attention_mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
    with torch.no_grad():
        hf_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        ours = system.llm(*pad(texts), *pad(speech), system.codebook())
    speech_and_eos = torch.cat([torch.arange(layout.speech_offset, layout.vocab_size), torch.tensor([EOS_ID])])
    for b, (t, s) in enumerate(zip(texts, speech)):
        # The position of TASK predicts speech token 0; that of the last speech token predicts EOS.
        predicted = hf_logits[b, len(t) + 1:len(t) + 2 + len(s)][:, speech_and_eos]
        torch.testing.assert_close(predicted, ours.logits[b, :len(s) + 1], atol=1e-4, rtol=1e-4)
    # The export is a copy: the system's LLM is as it was.
    assert system.llm.decoder.get_input_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def pad(rows):
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    return ids, torch.nn.utils.rnn.pad_sequence([torch.ones_like(r, dtype=torch.bool) for r in rows],
                                                batch_first=True)


def test_export_hf_names_a_missing_export(tmp_path, capsys):
    assert main(["export-hf", "--model", str(tmp_path / "nowhere")]) == 2
    assert f"error: export directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
