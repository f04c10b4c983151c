"""Builds a Seed-TTS-Eval ``meta.lst`` for the tiny recipe.

    # held-out sentences in voice rms, prompted by an rms utterance of the test split (the recipe's default)
    python tools/make_eval_list.py --manifest data/tiny/corpus/test.jsonl --out exp/eval/meta.lst
    # the test split's sentences, prompted by real human recordings (LibriVox, Debian pocketsphinx-testdata)
    python tools/make_eval_list.py --manifest data/tiny/corpus/test.jsonl --out exp/eval_human/meta.lst \
        --texts test --prompts librivox

Each line is ``utt|prompt text|prompt wav|text|ground-truth wav``, paths relative to the list as in the
official lists. Texts: ``heldout`` = the held-out sentences of the corpus's domain (in no split of the corpus; the
domain is read from the corpus's ``corpus.json``), or
``test`` = the distinct sentences of the manifest (a split never trained on). Ground truth: the manifest's
utterance of ``--speaker`` for test texts; for held-out texts, that voice's flite rendering, synthesised here
so that the recogniser's ceiling can be measured on exactly the evaluated sentences.
"""

from __future__ import annotations

import argparse
import os
import re
from itertools import cycle
from pathlib import Path

from e2e_tts.audio import write_audio
from e2e_tts.data.corpus import corpus_sentence_source, get_engine
from e2e_tts.data.manifest import ManifestEntry, read_jsonl

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox_prompts(root: Path = LIBRIVOX) -> list[tuple[str, Path]]:
    """(transcript, wav) of the LibriVox utterances that Debian's pocketsphinx-testdata ships."""
    listing = root / "transcription"
    if not listing.is_file():
        raise SystemExit(f"{listing} not found: install the Debian package pocketsphinx-testdata")
    prompts = []
    for line in listing.read_text().splitlines():
        match = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip())
        if match:
            prompts.append((match.group(1), root / f"{match.group(2)}.wav"))
    return prompts


def corpus_prompt(entries: list[ManifestEntry], speaker: str) -> tuple[str, Path]:
    """A 2-5 s utterance of ``speaker``: long enough to carry the voice, short enough for a tiny model's context."""
    own = sorted((e for e in entries if e.speaker == speaker), key=lambda e: e.id)
    if not own:
        raise SystemExit(f"no utterance of speaker {speaker!r} in the manifest")
    chosen = next((e for e in own if e.duration and 2.0 <= e.duration <= 5.0), own[0])
    return chosen.text, Path(chosen.audio)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="corpus manifest of a held-out split (test.jsonl)")
    parser.add_argument("--out", required=True, help="meta.lst path to write")
    parser.add_argument("--speaker", default="flite-rms", help="voice of the corpus prompt and the ground truth")
    parser.add_argument("--texts", choices=("heldout", "test"), default="heldout")
    parser.add_argument("--prompts", choices=("corpus", "librivox"), default="corpus")
    parser.add_argument("--limit", type=int, default=50, help="number of items")
    args = parser.parse_args()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = read_jsonl(args.manifest)
    prompts = cycle(librivox_prompts() if args.prompts == "librivox" else [corpus_prompt(entries, args.speaker)])
    if args.texts == "test":
        own = {e.text: Path(e.audio) for e in sorted(entries, key=lambda e: e.id) if e.speaker == args.speaker}
        items = list(own.items())[:args.limit]
    else:
        voice = args.speaker.split("-", 1)[1]
        engine = get_engine("flite")
        items = []
        for i, text in enumerate(corpus_sentence_source(Path(args.manifest).parent).heldout()[:args.limit]):
            truth = out.parent / "ground_truth" / f"heldout_{i:03d}.wav"
            if not truth.is_file():
                write_audio(truth, *engine.synthesize(text, voice))
            items.append((text, truth))
    lines = []
    for i, (text, truth) in enumerate(items):
        prompt_text, prompt_wav = next(prompts)
        lines.append("|".join([f"{args.texts}_{i:03d}", prompt_text, os.path.relpath(prompt_wav, out.parent), text,
                               os.path.relpath(truth, out.parent)]))
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}: {len(lines)} items ({args.texts} texts, {args.prompts} prompts)")


if __name__ == "__main__":
    main()
