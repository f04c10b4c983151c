"""Writes WebDataset shards from a manifest: validated, normalised, reproducible, with statistics.

A shard is a plain tar of samples (DESIGN.md "Shard sample")::

    <key>.audio.flac   mono, ``AudioConfig.sample_rate``, peak-normalised, 16-bit FLAC
    <key>.json         {"text", "speaker", "language", "duration", "sample_rate"[, "emotion"][, "quality"]}

Every manifest entry is validated before it is written: the id (unique, a file name that stays in its folder
(:func:`e2e_tts.data.manifest.utterance_id_problem`), usable as a tar key), the required fields, the text (the
bounds of :func:`e2e_tts.text.check_text`, and the acceptance of training, :func:`e2e_tts.data.features.encode_text`,
with the tokenizer training will use) and the audio (its length from the header before it is decoded, then
:func:`e2e_tts.audio.check_audio`). An invalid entry is skipped and counted under its reason, and listed with the
detail in the stats file.

Entries are assigned to shards by position (entry ``i`` of the valid ids goes to shard ``i // shard_size``)
and each pool worker writes whole shards with a fixed tar mtime, so that the same manifest always gives
byte-identical shards whatever the number of workers. Outputs in ``out_dir``:

- ``<prefix>-000000.tar`` ... the shards (shards whose entries were all rejected are not written);
- ``<prefix>.list``: one shard path per line, relative to the list's directory (:func:`read_shard_list`);
- ``<prefix>.stats.json``: hours, utterances, speakers, per-speaker counts, skipped counts by reason.

Nothing in ``out_dir`` changes until every shard is written: shards are written as ``*.tar.partial`` and swapped in
only when the whole run succeeded with at least one utterance; only then are the shards of this prefix that an
earlier run left and this one did not write removed. A run that fails or writes nothing leaves the folder as it was
and no partial file behind.

Command line: ``e2e-tts shards --manifest data/corpus/manifest.jsonl --out data/shards``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import webdataset as wds
from tqdm import tqdm

from e2e_tts.audio import AudioConfig, AudioRejected, check_audio, encode_flac, load_audio, normalize_peak
from e2e_tts.data.features import SampleRejected, encode_text
from e2e_tts.data.manifest import MANIFEST_FORMATS, ManifestEntry, read_manifest, utterance_id_problem
from e2e_tts.text import TextConfig, TextTokenizer, build_text_tokenizer, check_text

SHARD_NAME = "{prefix}-{index:06d}.tar"
PARTIAL = ".partial"  # suffix of a shard until the whole run has succeeded
PREFIX_PATTERN = re.compile(r"[\w-]+")  # a plain name: no path, no dot, nothing a glob would expand
TAR_MTIME = 0.0  # a fixed member mtime keeps the tar bytes reproducible


@dataclass
class ShardStats:
    """What was written and what was skipped.

    Attributes:
        utterances: samples written.
        seconds: total audio written, in seconds.
        per_speaker: samples written per speaker.
        skipped: skipped entries per reason.
        rejected: one ``{"id", "reason", "detail"}`` per skipped entry.
        shards: written shard paths, in shard order.
    """

    utterances: int = 0
    seconds: float = 0.0
    per_speaker: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    @property
    def speakers(self) -> int:
        return len(self.per_speaker)

    def add_written(self, speaker: str, seconds: float) -> None:
        self.utterances += 1
        self.seconds += seconds
        self.per_speaker[speaker] = self.per_speaker.get(speaker, 0) + 1

    def add_rejected(self, entry_id: str, reason: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.rejected.append({"id": entry_id, "reason": reason, "detail": detail})

    def merge(self, other: ShardStats) -> None:
        """Adds ``other`` (a later shard) to this."""
        self.utterances += other.utterances
        self.seconds += other.seconds
        self.per_speaker = dict(Counter(self.per_speaker) + Counter(other.per_speaker))
        self.skipped = dict(Counter(self.skipped) + Counter(other.skipped))
        self.rejected.extend(other.rejected)
        self.shards.extend(other.shards)

    def to_dict(self) -> dict[str, Any]:
        return {"utterances": self.utterances, "hours": self.hours, "seconds": self.seconds,
                "speakers": self.speakers, "per_speaker": dict(sorted(self.per_speaker.items())),
                "skipped": dict(sorted(self.skipped.items())), "skipped_total": sum(self.skipped.values()),
                "num_shards": len(self.shards), "shards": self.shards, "rejected": self.rejected}

    def skipped_summary(self) -> str:
        return ", ".join(f"{reason}={count}" for reason, count in sorted(self.skipped.items())) or "none"

    def summary(self) -> str:
        return (f"{self.utterances} utterances, {self.hours:.3f} h, {self.speakers} speakers, "
                f"{len(self.shards)} shards; skipped: {self.skipped_summary()}")


def write_shards(entries: Iterable[ManifestEntry], out_dir: str | Path, audio_config: AudioConfig,
                 shard_size: int = 1000, workers: int = 2, prefix: str = "train",
                 text_config: Optional[TextConfig] = None, progress_bar: bool = False) -> ShardStats:
    """Validates manifest entries and writes them as WebDataset shards.

    Args:
        entries: utterances; their ``duration`` is not trusted (the decoded audio's is written).
        out_dir: output directory (created).
        audio_config: target sample rate, acceptance bounds and peak level.
        shard_size: samples per shard before validation (a shard holds at most this many).
        workers: processes writing shards in parallel (``<= 1``: write in this process).
        prefix: shard file prefix, also names the ``.list`` and ``.stats.json`` files.
        text_config: the bounds ``check_text`` applies and the tokenizer training will use (default:
            ``TextConfig()``); each text is normalised in its entry's own language.
        progress_bar: show a tqdm bar on stderr of the utterances in the shards written so far.
    Returns:
        the statistics, also saved to ``<out_dir>/<prefix>.stats.json`` when at least one utterance was written
        (otherwise ``out_dir`` is left as it was).
    Raises:
        ValueError: ``shard_size`` below 1, a ``prefix`` that is not a plain name (letters, digits, ``_``, ``-``),
            or a text tokenizer that cannot be built.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"prefix must be a plain name of letters, digits, '_' and '-', got {prefix!r}")
    text_config = text_config or TextConfig()
    tokenizer = build_text_tokenizer(text_config, texts=())  # chars without a vocabulary: any character is an id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats = ShardStats()
    accepted = []
    seen_ids: set[str] = set()
    for entry in entries:
        reason = _key_problem(entry.id, seen_ids)
        if reason:
            stats.add_rejected(str(entry.id), *reason)
            continue
        seen_ids.add(entry.id)
        accepted.append(entry)

    tasks = [(str(out_dir / SHARD_NAME.format(prefix=prefix, index=index)), accepted[start:start + shard_size],
              audio_config, text_config, tokenizer)
             for index, start in enumerate(range(0, len(accepted), shard_size))]
    parallel = workers > 1 and len(tasks) > 1
    bar = tqdm(total=len(accepted), desc=f"shards {prefix}", unit="utt", disable=not progress_bar,
               dynamic_ncols=True)
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) if parallel else nullcontext() as pool:
            results = pool.map(_write_shard, tasks) if parallel else map(_write_shard, tasks)
            # Results come in shard order, whatever order the workers finished in.
            for (_, shard_entries, *_), shard_stats in zip(tasks, results):
                stats.merge(shard_stats)
                bar.update(len(shard_entries))
        if stats.utterances:
            _swap_in(out_dir, prefix, stats)
    finally:
        bar.close()
        for path, *_ in tasks:
            Path(path + PARTIAL).unlink(missing_ok=True)
    print(f"{'wrote' if stats.utterances else 'left unchanged'} {out_dir}/{prefix}: {stats.summary()}")
    return stats


def _swap_in(out_dir: Path, prefix: str, stats: ShardStats) -> None:
    """Moves the finished ``*.tar.partial`` shards to their names, writes the list and the statistics, then removes
    the shards of this prefix that an earlier run left and this one did not write (a glob would pick them up)."""
    for path in stats.shards:
        os.replace(path + PARTIAL, path)
    written = {Path(path).name for path in stats.shards}
    _write_atomically(out_dir / f"{prefix}.list", "".join(f"{Path(path).name}\n" for path in stats.shards))
    _write_atomically(out_dir / f"{prefix}.stats.json", json.dumps(stats.to_dict(), indent=1, ensure_ascii=False))
    stale = re.compile(re.escape(prefix) + r"-\d{6}\.tar")
    for path in out_dir.iterdir():
        if stale.fullmatch(path.name) and path.name not in written:
            path.unlink()


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + PARTIAL)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def read_shard_list(path: str | Path) -> list[str]:
    """Shard paths of a ``.list`` file; relative paths are taken relative to the list's directory.

    Raises:
        FileNotFoundError: the list or one of its shards does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard list not found: {path}")
    shards = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        shard = Path(line) if Path(line).is_absolute() else path.parent / line
        if not shard.is_file():
            raise FileNotFoundError(f"{path} names a shard that does not exist: {shard}")
        shards.append(str(shard))
    return shards


def _key_problem(entry_id: Any, seen_ids: set[str]) -> Optional[tuple[str, str]]:
    """Why an id cannot be a tar sample key: a member name that stays in its folder, and webdataset splits member
    names at the first dot and reserves keys starting with ``_``."""
    if not isinstance(entry_id, str) or not entry_id.strip():
        return "missing_field", f"id {entry_id!r} is empty"
    problem = utterance_id_problem(entry_id)
    if problem:
        return "invalid_id", problem
    if "." in entry_id or entry_id.startswith("_"):
        return "invalid_id", f"id {entry_id!r} must not contain '.' or start with '_'"
    if entry_id in seen_ids:
        return "duplicate_id", f"id {entry_id!r} appears more than once; the first is kept"
    return None


def _write_shard(task: tuple[str, Sequence[ManifestEntry], AudioConfig, TextConfig, TextTokenizer]) -> ShardStats:
    """Writes one shard as ``<path>.partial``, left for :func:`_swap_in` (removed when no entry was written)."""
    path, entries, audio_config, text_config, tokenizer = task
    stats = ShardStats()
    partial = path + PARTIAL
    with wds.TarWriter(partial, mtime=TAR_MTIME) as writer:
        for entry in entries:
            try:
                sample, seconds = _encode_entry(entry, audio_config, text_config, tokenizer)
            except SampleRejected as err:
                stats.add_rejected(entry.id, err.reason, str(err))
                continue
            writer.write(sample)
            stats.add_written(entry.speaker, seconds)
    if stats.utterances:
        stats.shards.append(path)
    else:
        os.remove(partial)
    return stats


def _encode_entry(entry: ManifestEntry, audio_config: AudioConfig, text_config: TextConfig,
                  tokenizer: TextTokenizer) -> tuple[dict[str, Any], float]:
    """One validated sample for the tar writer, and its duration in seconds.

    Raises:
        SampleRejected: with the reason the entry is skipped.
    """
    # Entries may be built in code, not read by a manifest reader, so nothing is taken for granted.
    missing = [name for name in ("audio", "speaker", "language")
               if not isinstance(getattr(entry, name), str) or not getattr(entry, name).strip()]
    if not isinstance(entry.text, str):
        missing.append("text")  # an empty text is a string: check_text rejects it as "empty_text"
    if missing:
        raise SampleRejected("missing_field", f"{entry.id}: no {', '.join(missing)}")
    text_problem = check_text(entry.text, dataclasses.replace(text_config, language=entry.language))
    if text_problem:
        raise SampleRejected(text_problem, f"{entry.id}: text {entry.text[:80]!r}")
    encode_text(entry.text, entry.language, tokenizer, entry.id)  # what training would reject is skipped now
    if not Path(entry.audio).is_file():
        raise SampleRejected("missing_audio", f"{entry.id}: {entry.audio} does not exist")
    try:
        wav, rate = load_audio(entry.audio, audio_config.sample_rate, audio_config.max_duration)
        check_audio(wav, rate, audio_config)
    except AudioRejected as err:
        raise SampleRejected(err.reason, f"{entry.id}: {err}") from err
    wav = normalize_peak(wav, audio_config.peak_level)
    duration = len(wav) / rate
    meta = {"text": entry.text, "speaker": entry.speaker, "language": entry.language, "duration": duration,
            "sample_rate": rate}
    for label in ("emotion", "quality"):
        if getattr(entry, label) is not None:
            meta[label] = getattr(entry, label)
    return {"__key__": entry.id, "audio.flac": encode_flac(wav, rate),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}, duration


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``shards`` subcommand."""
    parser = subparsers.add_parser("shards", help="validate a manifest and write WebDataset shards",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True,
                        help="JSON lines file, LJSpeech folder, Kaldi data dir or LibriTTS subset")
    parser.add_argument("--format", default="auto", choices=("auto", *MANIFEST_FORMATS),
                        help="manifest format (default: auto, from the path's shape)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--prefix", default="train", help="shard name prefix (default: train)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    parser.add_argument("--workers", type=int, default=2, help="parallel shard writers (default: 2)")
    parser.add_argument("--sample-rate", type=int, default=AudioConfig.sample_rate,
                        help=f"sample rate of the written audio (default: {AudioConfig.sample_rate})")
    parser.add_argument("--text-tokenizer", default=TextConfig.tokenizer,
                        choices=("bytes", "chars", "phonemes", "phones"),
                        help="the text.tokenizer training will use: texts it turns into no id are skipped "
                             f"(default: {TextConfig.tokenizer})")
    parser.add_argument("--text-language", default=TextConfig.language,
                        help=f"the text.language training will use (default: {TextConfig.language})")
    parser.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="show a progress bar of the utterances written (default: when stderr is a terminal)")
    parser.set_defaults(func=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts shards``: 0 when shards were written, 2 (``error: ...`` on stderr) otherwise."""
    try:
        text_config = TextConfig(tokenizer=args.text_tokenizer, language=args.text_language)
        entries = read_manifest(args.manifest, format=args.format)
        stats = write_shards(entries, args.out, AudioConfig(sample_rate=args.sample_rate),
                             shard_size=args.shard_size, workers=args.workers, prefix=args.prefix,
                             text_config=text_config, progress_bar=args.progress_bar)
    except (ValueError, OSError) as err:  # ManifestError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if stats.utterances == 0:
        example = f"; e.g. {stats.rejected[0]['detail']}" if stats.rejected else ""
        print(f"error: no entry of {args.manifest} could be written (skipped: {stats.skipped_summary()}{example}); "
              f"{args.out} is unchanged", file=sys.stderr)
        return 2
    return 0
