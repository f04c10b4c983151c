"""The embedded default corpus: offline TTS engines speak the packaged sentences into wavs and JSON-lines manifests.

Layout written by :func:`make_corpus`::

    <out>/wavs/<speaker>/<id>.wav      16-bit PCM at the corpus sample rate (16 kHz by default)
    <out>/{train,valid,test}.jsonl     ManifestEntry lines, audio paths relative to <out>

Engines (one small interface, :class:`SynthesisEngine`): Debian ``flite`` (voices kal16, awb, rms, slt, ...),
Debian ``festival`` (``text2wave``; voices such as kal_diphone) and espeak-ng through the ``espeakng-loader`` wheel's
library (voices ``<language>[+<variant>]``, e.g. ``en-us``, ``en-gb+f2``, ``de+m3``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from e2e_tts.audio import AudioConfig, AudioRejected, check_audio, load_audio, resample, write_audio
from e2e_tts.data.manifest import ManifestEntry, write_jsonl
from e2e_tts.data import grammar as grammar_sentences
from e2e_tts.data import sentences as open_english
from e2e_tts.espeak import ESPEAK

DEFAULT_VOICES = ("kal16", "awb", "rms", "slt")
DOMAINS = ("demo", "open-english")  # or the path of a grammar JSON file (e2e_tts.data.grammar)
PROVENANCE_FILE = "corpus.json"  # beside the manifests: where the sentences came from, and how they were spoken
DEFAULT_SPLITS = (("train", 0.9), ("valid", 0.05), ("test", 0.05))
ALL_VOICES_SPLIT = "test"  # every sentence of this split is spoken by every voice


class EngineUnavailable(RuntimeError):
    """The engine's program or library is not installed; the message says what to install."""


class SynthesisEngine(Protocol):
    """A text-to-speech engine the corpus can use."""

    name: str

    def voices(self) -> list[str]:
        """The installed voices (for espeak: languages, which take variants)."""

    def check_voice(self, voice: str) -> None:
        """Raises ValueError, saying what is available, when :meth:`synthesize` cannot use ``voice``."""

    def language(self, voice: str) -> str:
        """Language code recorded in the manifest for a voice."""

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        """Speaks ``text``; returns the waveform ``(N,)`` float32 and its sample rate."""


def _require_program(program: str, install_hint: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise EngineUnavailable(f"`{program}` is not installed: {install_hint}")
    return path


def _check_listed(engine: SynthesisEngine, voice: str) -> None:
    if voice not in engine.voices():
        raise ValueError(f"unknown {engine.name} voice {voice!r}; available: {', '.join(engine.voices())}")


def _run(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return result.stdout


class FliteEngine:
    """Debian ``flite``: ``flite -voice <voice> -t <text> -o <out.wav>``."""

    name = "flite"

    def __init__(self) -> None:
        self.program = _require_program("flite", "apt-get install flite")

    @functools.lru_cache(maxsize=1)
    def voices(self) -> list[str]:
        listing = _run([self.program, "-lv"])  # "Voices available: kal awb_time kal16 awb rms slt"
        return listing.split(":", 1)[-1].split()

    def check_voice(self, voice: str) -> None:
        _check_listed(self, voice)

    def language(self, voice: str) -> str:
        return "en"

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.wav"
            _run([self.program, "-voice", voice, "-t", text, "-o", str(out)])
            return load_audio(out)


class FestivalEngine:
    """Debian ``festival``: ``text2wave -eval (voice_<voice>)``; voices come from installed ``festvox-*`` packages."""

    name = "festival"

    def __init__(self) -> None:
        hint = "apt-get install festival festvox-kallpc16k (more voices: festvox-kdlpc16k, festvox-us-slt-hts)"
        self.festival = _require_program("festival", hint)
        self.text2wave = _require_program("text2wave", hint)

    @functools.lru_cache(maxsize=1)
    def voices(self) -> list[str]:
        return re.findall(r"[\w-]+", _run([self.festival, "-b", "(print (voice.list))"]))

    def check_voice(self, voice: str) -> None:
        _check_listed(self, voice)

    def language(self, voice: str) -> str:
        return "en"

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory() as tmp:
            text_file, out = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            text_file.write_text(text + "\n", encoding="utf-8")
            _run([self.text2wave, "-o", str(out), "-eval", f"(voice_{voice})", str(text_file)])
            return load_audio(out)


class EspeakEngine:
    """espeak-ng through the library and data in the ``espeakng-loader`` wheel (in-process, 22.05 kHz), shared with
    the phoneme text front end (:data:`e2e_tts.espeak.ESPEAK`).

    A voice is ``<language>[+<variant>]``: a language code from :meth:`voices` and optionally a variant from
    ``espeak-ng-data/voices/!v`` (``m1``..``m8``, ``f1``..``f5``, ...).
    """

    name = "espeak"

    def __init__(self) -> None:
        try:
            self._identifiers = ESPEAK.language_identifiers()
        except ImportError:
            raise EngineUnavailable("the espeak engine needs the espeakng-loader wheel: pip install espeakng-loader")
        except RuntimeError as error:
            raise EngineUnavailable(str(error))
        self._variants = ESPEAK.variants()

    def voices(self) -> list[str]:
        return sorted(self._identifiers)

    def _split(self, voice: str) -> tuple[str, Optional[str]]:
        language, _, variant = voice.partition("+")
        if language not in self._identifiers:
            raise ValueError(f"unknown espeak language {language!r}; available: {', '.join(self.voices())}")
        if variant and variant not in self._variants:
            raise ValueError(f"unknown espeak variant {variant!r}; available: {', '.join(self._variants)}")
        return language, variant or None

    def check_voice(self, voice: str) -> None:
        self._split(voice)

    def language(self, voice: str) -> str:
        return self._split(voice)[0]

    def synthesize(self, text: str, voice: str) -> tuple[np.ndarray, int]:
        language, variant = self._split(voice)
        return ESPEAK.synthesize(text, self._identifiers[language] + (f"+{variant}" if variant else ""))


ENGINES = {"flite": FliteEngine, "festival": FestivalEngine, "espeak": EspeakEngine}


@functools.lru_cache(maxsize=None)
def get_engine(name: str) -> SynthesisEngine:
    """The engine called ``name`` (one instance per process).

    Raises:
        ValueError: for an unknown engine name.
        EngineUnavailable: when its program or library is missing.
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")
    return ENGINES[name]()


def speaker_name(engine: str, voice: str) -> str:
    """Speaker id and folder name for an engine voice, e.g. ``flite-kal16``, ``espeak-en-gb-f2``."""
    return f"{engine}-" + re.sub(r"[^A-Za-z0-9]+", "-", voice).strip("-")


@dataclass(frozen=True)
class SentenceSource:
    """Where a corpus's sentences come from: a domain's corpus draw and its held-out list (in no corpus).

    Attributes:
        domain: ``demo``, ``open-english`` or the absolute path of a grammar JSON file.
        description: one line for the corpus's provenance file.
        grammar: the domain's grammar; None for open English (the WordNet pool of e2e_tts.data.sentences).
    """

    domain: str
    description: str
    grammar: Optional[grammar_sentences.Grammar] = None

    def corpus(self, n: int, seed: int) -> list[str]:
        """``n`` distinct sentences in an order fixed by ``seed``, as the engines read them."""
        if self.grammar is None:
            return open_english.corpus_sentences(n, seed)
        return [grammar_sentences.as_written(s) for s in grammar_sentences.corpus_sentences(self.grammar, n, seed)]

    def heldout(self) -> list[str]:
        """The domain's held-out sentences, as the engines read them."""
        if self.grammar is None:
            return open_english.heldout_sentences()
        return [grammar_sentences.as_written(s) for s in grammar_sentences.heldout_sentences(self.grammar)]


def sentence_source(domain: str) -> SentenceSource:
    """The :class:`SentenceSource` of a domain name or grammar path.

    Raises:
        ValueError: for a name that is neither a known domain nor an existing file.
        e2e_tts.data.grammar.GrammarError: for a malformed grammar file (naming it).
    """
    if domain == "open-english":
        return SentenceSource(domain, "open English: WordNet 3.0 gloss examples (e2e_tts/data/sentences.py)")
    if domain != "demo" and not Path(domain).is_file():
        raise ValueError(f"unknown sentence domain {domain!r}: use one of {', '.join(DOMAINS)} or a grammar JSON file")
    domain = domain if domain == "demo" else str(Path(domain).absolute())
    grammar = grammar_sentences.load_grammar(grammar_sentences.DEMO_GRAMMAR_FILE if domain == "demo" else domain)
    return SentenceSource(domain, f"grammar {grammar.source}: {len(grammar.templates)} templates, "
                                  f"{len(grammar.vocabulary())} words", grammar)


def corpus_sentence_source(corpus_dir: str | Path) -> SentenceSource:
    """The sentence source a corpus folder was made from (its provenance file; corpora made before it: open English).

    Raises:
        ValueError: naming the provenance file when it is unreadable or names no domain.
    """
    path = Path(corpus_dir) / PROVENANCE_FILE
    if not path.is_file():
        return sentence_source("open-english")
    try:
        return sentence_source(json.loads(path.read_text())["domain"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: cannot read the corpus's sentence domain ({err!r})") from None


def split_sizes(num_sentences: int, fractions: Sequence[float]) -> list[int]:
    """Sentences per split: largest-remainder rounding, at least one for every split with a positive fraction.

    Raises:
        ValueError: for negative fractions, fractions not summing to 1, or too few sentences.
    """
    if any(fraction < 0 for fraction in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    positive = sum(fraction > 0 for fraction in fractions)
    if num_sentences < positive:
        raise ValueError(f"{num_sentences} sentences cannot fill {positive} non-empty splits")
    exact = [fraction * num_sentences for fraction in fractions]
    sizes = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (sizes[i] - exact[i], i))
    for i in by_remainder[:num_sentences - sum(sizes)]:
        sizes[i] += 1
    for i, fraction in enumerate(fractions):
        if fraction > 0 and sizes[i] == 0:
            sizes[max(range(len(sizes)), key=lambda j: sizes[j])] -= 1
            sizes[i] = 1
    return sizes


def plan_utterances(sentences: Sequence[str], sentences_per_split: dict[str, int], voices: Sequence[str], engine: str,
                    utterances_per_sentence: int, out_dir: Path) -> list[tuple[str, str, ManifestEntry]]:
    """Assigns consecutive blocks of ``sentences`` to splits and voices to each sentence.

    Returns:
        ``(split, voice, entry)`` per utterance; entries have no duration yet. Ids are ``<speaker>_<text hash>``.
    """
    planned = []
    start = 0
    for name, size in sentences_per_split.items():
        for position, text in enumerate(sentences[start:start + size]):
            if name == ALL_VOICES_SPLIT:
                chosen = list(voices)
            else:
                first = position * utterances_per_sentence
                chosen = [voices[(first + k) % len(voices)] for k in range(utterances_per_sentence)]
            text_hash = hashlib.sha1(text.encode()).hexdigest()[:12]
            for voice in chosen:
                speaker = speaker_name(engine, voice)
                utt = f"{speaker}_{text_hash}"
                planned.append((name, voice, ManifestEntry(
                    id=utt, audio=str(out_dir / "wavs" / speaker / f"{utt}.wav"), text=text, speaker=speaker,
                    language=get_engine(engine).language(voice))))
        start += size
    return planned


@dataclass(frozen=True)
class UtteranceJob:
    """One utterance to synthesise (or to reuse when its wav already exists)."""

    engine: str
    voice: str
    text: str
    path: str
    audio: AudioConfig


def make_utterance(job: UtteranceJob) -> tuple[Optional[float], Optional[str]]:
    """Makes sure ``job.path`` holds the utterance; returns ``(duration, None)`` or ``(None, rejection reason)``.

    An existing readable wav at the corpus rate is reused. New audio is resampled to the corpus rate and written
    atomically, so an interrupted run never leaves a truncated file that a re-run would trust.
    """
    path, config = Path(job.path), job.audio
    try:
        wav, rate = load_audio(path)
        reuse = rate == config.sample_rate
    except AudioRejected:  # missing or corrupt
        reuse = False
    if not reuse:
        wav, rate = get_engine(job.engine).synthesize(job.text, job.voice)
        partial = path.with_name(path.stem + ".partial.wav")
        write_audio(partial, resample(wav, rate, config.sample_rate), config.sample_rate)
        os.replace(partial, path)
        wav, rate = load_audio(path)  # measure what is on disk (16-bit, clipped)
    try:
        check_audio(wav, rate, config)
    except AudioRejected as rejection:
        return None, rejection.reason
    return len(wav) / rate, None


@dataclass
class CorpusResult:
    """What :func:`make_corpus` wrote."""

    manifests: dict[str, list[ManifestEntry]]  # split -> entries
    manifest_paths: dict[str, Path]
    rejected: Counter = field(default_factory=Counter)  # reason -> utterances left out of the manifests

    def summary(self) -> str:
        """A plain-text table: utterances and hours per split and per speaker."""
        lines = [f"{'split':<8} {'speaker':<22} {'utts':>6} {'hours':>7}"]
        for split, entries in self.manifests.items():
            per_speaker: dict[str, list[float]] = defaultdict(list)
            for entry in entries:
                per_speaker[entry.speaker].append(entry.duration)
            for speaker, durations in sorted(per_speaker.items()):
                lines.append(f"{split:<8} {speaker:<22} {len(durations):>6} {sum(durations) / 3600:>7.3f}")
            total = sum(entry.duration for entry in entries)
            lines.append(f"{split:<8} {'(all)':<22} {len(entries):>6} {total / 3600:>7.3f}")
        if self.rejected:
            counts = ", ".join(f"{reason} {count}" for reason, count in sorted(self.rejected.items()))
            lines.append(f"rejected: {counts}")
        return "\n".join(lines)


def make_corpus(out_dir: str | Path, num_sentences: int = 2000, voices: Sequence[str] = DEFAULT_VOICES,
                engine: str = "flite", domain: str = "demo", splits: Sequence[tuple[str, float]] = DEFAULT_SPLITS,
                seed: int = 0, workers: int = 2, utterances_per_sentence: int = 1, audio: Optional[AudioConfig] = None,
                progress: bool = True) -> CorpusResult:
    """Synthesises ``num_sentences`` sentences of a domain into ``out_dir`` and writes one manifest per split.

    Splits are by sentence: each sentence belongs to exactly one split. In every split but ``test`` a sentence is
    spoken by ``utterances_per_sentence`` voices taken round-robin, so voices get equal shares; every ``test``
    sentence is spoken by every voice, so per-voice evaluation uses the same text and covers all voices. The output
    depends only on the arguments (sentences and their order come from ``seed``); wavs that already exist and are
    readable are reused, and ids hash the text, so a re-run with other arguments never pairs a wav with wrong text.

    Args:
        out_dir: corpus folder (created).
        num_sentences: distinct sentences to draw from the domain (none of its held-out sentences).
        voices: engine voice names.
        engine: a key of :data:`ENGINES`.
        domain: ``demo`` (the shipped grammar), ``open-english`` or a grammar JSON path (:func:`sentence_source`);
            recorded with the engine, voices and seed in ``<out>/corpus.json``.
        splits: ``(name, fraction)`` pairs; fractions sum to 1.
        seed: selects and orders the sentences.
        workers: synthesis processes (1 = in this process).
        utterances_per_sentence: voices per sentence outside ``test``, at most ``len(voices)``.
        audio: sample rate and acceptance bounds; default :class:`AudioConfig` (16 kHz).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: for inconsistent arguments or unknown voices.
        EngineUnavailable: when the engine is not installed.
    """
    audio = audio or AudioConfig()
    voices = list(voices)
    names = [name for name, _ in splits]
    if not voices or len(set(voices)) != len(voices):
        raise ValueError(f"voices must be a non-empty list without repeats, got {voices}")
    if not 1 <= utterances_per_sentence <= len(voices):
        raise ValueError(f"utterances_per_sentence must be in [1, {len(voices)}], got {utterances_per_sentence}")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"split names must be distinct and non-empty, got {names}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    sizes = split_sizes(num_sentences, [fraction for _, fraction in splits])
    source = sentence_source(domain)
    for voice in voices:
        get_engine(engine).check_voice(voice)
    sentences = source.corpus(num_sentences, seed)

    out_dir = Path(out_dir).absolute()
    planned = plan_utterances(sentences, dict(zip(names, sizes)), voices, engine, utterances_per_sentence, out_dir)
    for speaker in {entry.speaker for _, _, entry in planned}:
        (out_dir / "wavs" / speaker).mkdir(parents=True, exist_ok=True)

    jobs = [UtteranceJob(engine, voice, entry.text, entry.audio, audio) for _, voice, entry in planned]
    bar = functools.partial(tqdm, total=len(jobs), desc=f"{engine} corpus", unit="utt", disable=not progress)
    if workers == 1:
        results = list(bar(map(make_utterance, jobs)))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(bar(pool.map(make_utterance, jobs, chunksize=4)))

    result = CorpusResult(manifests={name: [] for name in names}, manifest_paths={})
    for (name, _, entry), (duration, rejection) in zip(planned, results):
        if rejection is None:
            entry.duration = duration
            result.manifests[name].append(entry)
        else:
            result.rejected[rejection] += 1
    for name, entries in result.manifests.items():
        result.manifest_paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(entries, result.manifest_paths[name])
    provenance = {"domain": source.domain, "sentences": source.description, "num_sentences": num_sentences,
                  "seed": seed, "engine": engine, "voices": voices, "splits": dict(zip(names, sizes))}
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n")
    return result


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``corpus`` subcommand to the ``e2e-tts`` command line."""
    parser = subparsers.add_parser("corpus", help="synthesise the embedded default corpus (wavs + jsonl manifests)",
                                   description=make_corpus.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="corpus folder to write")
    parser.add_argument("--domain", default="demo",
                        help="where the sentences come from: demo (the closed-vocabulary demo grammar, default), "
                             "open-english (WordNet examples) or the path of a grammar JSON file")
    parser.add_argument("--num-sentences", type=int, default=2000, help="distinct sentences (default 2000)")
    parser.add_argument("--voices", default=",".join(DEFAULT_VOICES), help="comma-separated engine voices")
    parser.add_argument("--engine", default="flite", choices=sorted(ENGINES))
    parser.add_argument("--seed", type=int, default=0, help="selects and orders the sentences")
    parser.add_argument("--workers", type=int, default=2, help="synthesis processes")
    parser.add_argument("--utterances-per-sentence", type=int, default=1,
                        help="voices per train/valid sentence (test sentences get every voice)")
    parser.set_defaults(func=run_corpus_command)


def run_corpus_command(args: argparse.Namespace) -> int:
    """Runs :func:`make_corpus` from parsed ``corpus`` arguments and prints the summary (exit 2 on bad arguments)."""
    voices = [voice.strip() for voice in args.voices.split(",") if voice.strip()]
    try:
        result = make_corpus(args.out, num_sentences=args.num_sentences, voices=voices, engine=args.engine,
                             domain=args.domain, seed=args.seed, workers=args.workers,
                             utterances_per_sentence=args.utterances_per_sentence)
    except (ValueError, EngineUnavailable) as err:  # GrammarError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    for name, path in result.manifest_paths.items():
        print(f"{name}: {path}")
    return 0
