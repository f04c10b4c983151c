"""The grpo stage's reward on a Seed-TTS-Eval list: how well the reward model reads the LLM's own samples back.

For each item, the LLM samples ``--samples`` token sequences as synthesis does (the item's prompt, the given
temperature and top-k); the reward model's greedy CTC transcript of each is scored against the text ids. On
held-out texts this tells whether what grpo learnt on the training texts carries over, before any audio.

    python tools/rollout_readback.py --model exp/grpo/export --meta exp/tiny_seed0/eval/meta.lst \
        --out exp/grpo/readback.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch

from e2e_tts.data.manifest import SeedTTSItem, read_seedtts_meta
from e2e_tts.models.masks import pad_rows
from e2e_tts.scoring.wer import id_error_rates
from e2e_tts.synth import Synthesizer
from e2e_tts.synthesis_config import SynthesisConfig


def read_back(synthesizer: Synthesizer, items: Sequence[SeedTTSItem], samples: int, config: SynthesisConfig,
              seed: int) -> dict:
    """Samples ``samples`` token sequences per item and scores the reward model's CTC reading of each.

    Returns:
        ``num_samples``, ``reward_ctc_error`` (percent, all errors / all text ids), ``mean_reward_ctc_error``
        (mean of the per-sample rates) and ``mean_tokens``.
    """
    generator = torch.Generator().manual_seed(seed)
    codebook = synthesizer.system.codebook()
    references, readings, lengths = [], [], []
    for item in items:
        prompt = None if item.prompt_audio is None else synthesizer.encode_prompt(item.prompt_audio, item.prompt_text)
        text_ids = synthesizer.prepare_text(item.text)[1]
        with torch.inference_mode():
            rows = synthesizer.generate_tokens([text_ids] * samples, prompt, config, generator)
            padded, mask = pad_rows(rows, codebook.device)
            readings += synthesizer.system.reward.transcribe_ctc(padded, mask, codebook)
        references += [text_ids.tolist()] * samples
        lengths += [len(row) for row in rows]
    rates = id_error_rates(references, readings)
    return {"num_samples": len(readings), "reward_ctc_error": rates["corpus_per"],
            "mean_reward_ctc_error": rates["mean_per"], "mean_tokens": sum(lengths) / len(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list (prompted items)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--samples", type=int, default=4, help="LLM samples per item")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    synthesizer = Synthesizer.from_pretrained(args.model)
    config = SynthesisConfig(temperature=args.temperature, top_k=args.top_k)
    report = {"model": args.model, "meta": args.meta, "samples_per_item": args.samples,
              "temperature": args.temperature, "top_k": args.top_k,
              **read_back(synthesizer, read_seedtts_meta(args.meta), args.samples, config, args.seed)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
