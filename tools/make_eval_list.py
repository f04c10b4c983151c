"""Builds a Seed-TTS-Eval ``meta.lst`` for the tiny recipe: held-out text, one voice, a prompt of that voice.

    python tools/make_eval_list.py --manifest data/tiny/corpus/test.jsonl --out exp/eval/meta.lst \
        --speaker flite-rms --limit 50

Each line is ``utt|prompt text|prompt wav|text|ground-truth wav``. The texts are the held-out sentences
(e2e_tts.data.sentences.heldout_sentences: in no split of the corpus); the prompt is an utterance of
``--speaker`` from the manifest (the test split: never trained on); the ground truth is the same voice's
flite rendering of the held-out text, synthesised here so that the recogniser's ceiling can be measured.
Paths are written relative to the list, as in the official lists.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from e2e_tts.audio import write_audio
from e2e_tts.data.corpus import get_engine
from e2e_tts.data.manifest import read_jsonl
from e2e_tts.data.sentences import heldout_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="corpus manifest to take the prompt from (test split)")
    parser.add_argument("--out", required=True, help="meta.lst path to write")
    parser.add_argument("--speaker", default="flite-rms", help="voice of the prompt and the ground truth")
    parser.add_argument("--limit", type=int, default=50, help="number of held-out sentences")
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompts = sorted((e for e in read_jsonl(args.manifest) if e.speaker == args.speaker), key=lambda e: e.id)
    if not prompts:
        raise SystemExit(f"{args.manifest}: no utterance of speaker {args.speaker!r}")
    # A prompt of 2-5 s is long enough to carry the voice and short enough for the tiny model's context.
    prompt = next((e for e in prompts if e.duration and 2.0 <= e.duration <= 5.0), prompts[0])
    voice = args.speaker.split("-", 1)[1]
    engine = get_engine("flite")
    lines = []
    for i, text in enumerate(heldout_sentences()[:args.limit]):
        utt = f"heldout_{i:03d}"
        truth = out.parent / "ground_truth" / f"{utt}.wav"
        if not truth.is_file():
            wav, rate = engine.synthesize(text, voice)
            write_audio(truth, wav, rate)
        lines.append("|".join([utt, prompt.text, os.path.relpath(prompt.audio, out.parent), text,
                               os.path.relpath(truth, out.parent)]))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(lines)} items, prompt {prompt.id} ({prompt.duration:.1f} s)")


if __name__ == "__main__":
    main()
