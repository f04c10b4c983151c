"""``e2e-tts export-hf``: the LLM of an export as a Hugging Face causal LM.

    e2e-tts export-hf --model exp/tiny_seed0/e2e/export      # writes exp/tiny_seed0/e2e/export/hf/

The folder is what ``save_pretrained`` writes (``config.json``, ``generation_config.json``, safetensors weights):
``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it without e2e_tts, for serving engines and
tools that read transformers checkpoints. It is the export's Qwen2/Qwen3 decoder over the whole LLM vocabulary of
:mod:`e2e_tts.vocab` (``PAD SOS EOS TASK | text ids | speech ids``), recorded in ``config.json`` as
``e2e_tts_token_layout``.

Preserved: for a row of ids ``SOS text TASK speech`` (text ids plus ``text_offset``, speech ids plus
``speech_offset``), the logits of the speech ids and of EOS are :class:`~e2e_tts.models.llm.SpeechLLM`'s
teacher-forced logits, to float rounding. Our LLM embeds a speech id with its
:class:`~e2e_tts.models.speech_embedding.SpeechEmbedding` (an MLP of the id's tokenizer code, plus the id's own row
with ``id_embedding``); the export computes that vector once per speech id and writes it as the id's row of a plain
input embedding. Text and special rows are the decoder's own.

Not preserved:

* soft speech inputs (probabilities over the codebook, quantized codes): the export reads ids;
* the output restriction: our head scores only the speech ids and EOS, the exported head has a row for every id
  (the text and special rows other than EOS were never trained as outputs): mask them when sampling, e.g. with
  ``suppress_tokens`` or a logits processor;
* our sampling (repetition-aware top-k / top-p, the length bounds per text id: :mod:`e2e_tts.models.sampling`);
* the code MLP and the per-id table as separate parameters: fine-tuning the export trains one free row per id;
* tied embeddings: the speech rows of the input differ from those of the output head, so the export unties them;
* everything but the LLM: text and speech tokenizers, flow decoder and vocoder stay in the e2e_tts export.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import transformers
from torch import nn

from e2e_tts.models.llm import SpeechLLM
from e2e_tts.system import TTSSystem
from e2e_tts.vocab import EOS_ID, PAD_ID, SOS_ID, TASK_ID

HF_FOLDER = "hf"  # the default output, inside the export it converts


def hf_causal_lm(llm: SpeechLLM, codebook: torch.Tensor) -> transformers.PreTrainedModel:
    """A transformers causal LM that computes ``llm``'s logits from plain ids (see the module docstring).

    Args:
        llm: the speech LLM (left unchanged).
        codebook: the tokenizer's enumerated codebook ``(V, Dc)``.
    Returns:
        a float32 copy of ``llm.decoder`` whose input embedding rows of the ``V`` speech ids are their speech
        embeddings, with an untied output head and the token layout in its config.
    """
    layout = llm.layout
    model = copy.deepcopy(llm.decoder).float().eval()
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight.detach().clone()
        head = model.get_output_embeddings().weight.detach().clone()
        speech_ids = torch.arange(layout.speech_vocab_size, device=codebook.device)[None]  # (1, V)
        embedding[layout.speech_offset:] = llm.speech_embedding(speech_ids, codebook)[0].to(embedding.dtype)
    model.get_input_embeddings().weight = nn.Parameter(embedding)
    model.get_output_embeddings().weight = nn.Parameter(head)
    model.config.tie_word_embeddings = False
    model.config.use_cache = True
    model.config.e2e_tts_token_layout = {
        "pad_id": PAD_ID, "sos_id": SOS_ID, "eos_id": EOS_ID, "task_id": TASK_ID,
        "text_offset": layout.text_offset, "text_vocab_size": layout.text_vocab_size,
        "speech_offset": layout.speech_offset, "speech_vocab_size": layout.speech_vocab_size}
    model.generation_config = transformers.GenerationConfig(bos_token_id=SOS_ID, eos_token_id=EOS_ID,
                                                            pad_token_id=PAD_ID)
    return model


def export_hf(export_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Writes the LLM of the e2e_tts export ``export_dir`` as a ``save_pretrained`` folder.

    Args:
        export_dir: an export (``<output_dir>/export`` of a training stage).
        out_dir: where to write (default ``<export_dir>/hf``).
    Returns:
        the folder written.
    Raises:
        FileNotFoundError, ValueError: naming a missing or damaged file of the export.
    """
    system, _ = TTSSystem.from_export(export_dir)
    out = Path(export_dir) / HF_FOLDER if out_dir is None else Path(out_dir)
    hf_causal_lm(system.llm, system.codebook()).save_pretrained(out)
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export-hf", help="write the LLM of an export as a Hugging Face causal LM "
                                                     "(AutoModelForCausalLM.from_pretrained loads it)")
    parser.add_argument("--model", required=True, help="the export directory of a training stage")
    parser.add_argument("--out", help=f"output folder (default: <model>/{HF_FOLDER})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = export_hf(args.model, args.out)
    except (OSError, ValueError) as err:  # a missing or damaged export, named by its readers
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
