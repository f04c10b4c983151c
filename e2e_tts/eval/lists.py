"""Seed-TTS-Eval lists of a corpus (``e2e-tts eval list``): which sentences, prompted by what, against which
ground truth.

Each line is ``utt|prompt text|prompt wav|text|ground-truth wav``, paths relative to the list as in the official
lists. Texts: ``heldout`` = the held-out sentences of the corpus's domain (in no split of the corpus; the domain is
read from the corpus's ``corpus.json``), or ``test`` = the distinct sentences of the manifest (a split never
trained on). Ground truth: the manifest's utterance of the speaker for test texts; for held-out texts, that
voice's flite rendering, synthesised here so that the recogniser's ceiling can be measured on exactly the
evaluated sentences. Prompts: one utterance of the speaker from the manifest (``corpus``), or in turn the human
LibriVox recordings that Debian's pocketsphinx-testdata ships (``librivox``).
"""

from __future__ import annotations

import os
import re
from itertools import cycle
from pathlib import Path

from e2e_tts.audio import write_audio
from e2e_tts.data.corpus import corpus_sentence_source, get_engine
from e2e_tts.data.manifest import ManifestEntry, read_jsonl

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
TEXTS = ("heldout", "test")
PROMPTS = ("corpus", "librivox")


def librivox_prompts(root: Path = LIBRIVOX) -> list[tuple[str, Path]]:
    """(transcript, wav) of the LibriVox utterances that Debian's pocketsphinx-testdata ships.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    listing = root / "transcription"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: install the Debian package pocketsphinx-testdata")
    prompts = []
    for line in listing.read_text().splitlines():
        match = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip())
        if match:
            prompts.append((match.group(1), root / f"{match.group(2)}.wav"))
    return prompts


def corpus_prompt(entries: list[ManifestEntry], speaker: str) -> tuple[str, Path]:
    """A 2-5 s utterance of ``speaker`` (else its first): long enough to carry the voice, short enough for a tiny
    model's context.

    Raises:
        ValueError: when the manifest has no utterance of ``speaker``.
    """
    own = sorted((e for e in entries if e.speaker == speaker), key=lambda e: e.id)
    if not own:
        raise ValueError(f"no utterance of speaker {speaker!r} in the manifest")
    chosen = next((e for e in own if e.duration and 2.0 <= e.duration <= 5.0), own[0])
    return chosen.text, Path(chosen.audio)


def write_eval_list(manifest: str | Path, out: str | Path, speaker: str = "flite-rms", texts: str = "heldout",
                    prompts: str = "corpus", limit: int = 50) -> list[str]:
    """Writes a Seed-TTS-Eval list of at most ``limit`` items (and, for held-out texts, their flite ground truth
    under ``<out dir>/ground_truth/``, kept when already there).

    Args:
        manifest: corpus manifest of a held-out split (``test.jsonl``; its folder holds ``corpus.json``).
        out: the list's path.
        speaker: voice of the corpus prompt and of the ground truth (``flite-<voice>`` for held-out texts).
        texts: one of :data:`TEXTS`; prompts: one of :data:`PROMPTS` (see the module docstring).
    Returns:
        the lines written.
    Raises:
        ValueError: for an unknown choice, or no utterance of ``speaker`` for the corpus prompt.
        FileNotFoundError: for a missing manifest, or LibriVox prompts without pocketsphinx-testdata.
    """
    if texts not in TEXTS or prompts not in PROMPTS:
        raise ValueError(f"texts must be one of {TEXTS} and prompts one of {PROMPTS}, got {texts!r}, {prompts!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = read_jsonl(manifest)
    prompt_cycle = cycle(librivox_prompts() if prompts == "librivox" else [corpus_prompt(entries, speaker)])
    if texts == "test":
        own = {e.text: Path(e.audio) for e in sorted(entries, key=lambda e: e.id) if e.speaker == speaker}
        items = list(own.items())[:limit]
    else:
        voice = speaker.split("-", 1)[1]
        engine = get_engine("flite")
        items = []
        for i, text in enumerate(corpus_sentence_source(Path(manifest).parent).heldout()[:limit]):
            truth = out.parent / "ground_truth" / f"heldout_{i:03d}.wav"
            if not truth.is_file():
                write_audio(truth, *engine.synthesize(text, voice))
            items.append((text, truth))
    lines = []
    for i, (text, truth) in enumerate(items):
        prompt_text, prompt_wav = next(prompt_cycle)
        lines.append("|".join([f"{texts}_{i:03d}", prompt_text, os.path.relpath(prompt_wav, out.parent), text,
                               os.path.relpath(truth, out.parent)]))
    out.write_text("\n".join(lines) + "\n")
    return lines
