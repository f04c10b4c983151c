"""Phone error rate of an evaluated Seed-TTS-Eval folder: the synthesized wavs and, where the list has them,
the ground truth, each against the reference phones of its text (pocketsphinx allphone decoding,
e2e_tts.eval.phones). Word WER stays above 100 % until speech is nearly intelligible; PER tells apart two
systems that are both still there.

    python tools/phone_error_rate.py --meta exp/tiny_seed0/eval/meta.lst --wavs exp/tiny_seed0/eval/wavs \
        --out exp/tiny_seed0/eval/per.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e2e_tts.data.manifest import read_seedtts_meta
from e2e_tts.eval.phones import PocketsphinxPhones, mean_phone_error_rate
from e2e_tts.eval.seedtts import ground_truth_wav_paths, synthesized_wav_paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list")
    parser.add_argument("--wavs", required=True, help="folder of <utt>.wav")
    parser.add_argument("--out", type=Path, required=True, help="JSON with both rates")
    args = parser.parse_args()
    items = read_seedtts_meta(args.meta)
    texts = [item.text for item in items]
    judge = PocketsphinxPhones()
    wavs = synthesized_wav_paths(items, args.wavs)
    report = {"meta": args.meta, "wavs": args.wavs, "num_items": len(items),
              "num_synthesized": sum(Path(p).is_file() for p in wavs),
              "synthesized_mean_per": mean_phone_error_rate(judge, texts, wavs),
              "ground_truth_mean_per": mean_phone_error_rate(judge, texts, ground_truth_wav_paths(items))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
