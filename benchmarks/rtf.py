"""Real-time factor of synthesis (LLM generation, flow ODE, vocoder), per component.

    .venv/bin/python benchmarks/rtf.py --model exp/tiny_seed0/vocoder/export --threads 2
    .venv/bin/python benchmarks/rtf.py --preset tiny --threads 2          # random weights, same compute

RTF = compute seconds / audio seconds (below 1 is faster than real time). With random weights the LLM is held
to a fixed length by setting min = max length ratio, so every preset produces the same amount of audio per
text; a trained export stops where it predicts EOS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from e2e_tts.config import load_config, to_object
from e2e_tts.data.sentences import heldout_sentences
from e2e_tts.synth import SynthesisConfig, Synthesizer
from e2e_tts.system import TTSSystem
from e2e_tts.text import build_text_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="export directory")
    source.add_argument("--preset", help="random weights of a size preset (tiny, paper)")
    parser.add_argument("--texts", type=int, default=8, help="held-out sentences to synthesise")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--vocoder", default="model", choices=("model", "griffin-lim"))
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    settings = dict(batch_size=args.batch_size, vocoder=args.vocoder, seed=0)
    if args.model:
        synth = Synthesizer.from_pretrained(args.model, device=args.device)
    else:
        config = load_config(overrides=[f"preset={args.preset}"])
        torch.manual_seed(0)
        system = TTSSystem(to_object(config.model), build_text_tokenizer(to_object(config.text)), ["spk"])
        with tempfile.TemporaryDirectory() as directory:
            system.export(directory, config)
            synth = Synthesizer.from_pretrained(directory, device=args.device)
        settings.update(min_len_ratio=1.0, max_len_ratio=1.0)
    texts = heldout_sentences()[:args.texts]
    synth.synthesize(texts[:1], config=SynthesisConfig(**settings))  # warm-up
    start = time.perf_counter()
    results = synth.synthesize(texts, config=SynthesisConfig(**settings))
    wall = time.perf_counter() - start
    audio = sum(r.duration for r in results)
    parts = {part: sum(r.timings[part] for r in results) for part in ("llm", "flow", "vocoder")}
    print(f"{len(results)} texts, {audio:.1f} s of audio in {wall:.1f} s on {args.device} "
          f"({args.threads} threads, batch {args.batch_size}): RTF {wall / audio:.3f}")
    print("per component RTF: " + ", ".join(f"{k} {v / audio:.3f}" for k, v in parts.items()))
    median = statistics.median(r.rtf for r in results if r.rtf)
    print(f"median per-utterance RTF {median:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"source": args.model or f"preset {args.preset}", "device": args.device, "texts": len(results),
                       "batch_size": args.batch_size, "audio_seconds": audio, "wall_seconds": wall,
                       "rtf": wall / audio, "component_rtf": {k: v / audio for k, v in parts.items()},
                       "median_utterance_rtf": median}, handle, indent=1)


if __name__ == "__main__":
    main()
