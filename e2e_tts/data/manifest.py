"""Manifest readers: one utterance list format (:class:`ManifestEntry`) from JSON lines, LibriTTS, LJSpeech and Kaldi
data directories, plus the Seed-TTS-Eval ``meta.lst`` test lists.

Every reader returns absolute audio paths and raises :class:`ManifestError` naming the file (and the 1-based line,
where there is one) for malformed input, ids that cannot name a file (:func:`utterance_id_problem`) included.
Readers only parse: an empty transcript is read as an empty text, and the audio is not opened; the shard writer
skips and counts what it cannot train on.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, Optional, Sequence

REQUIRED_FIELDS = ("id", "audio", "text", "speaker")  # strings, all but the text non-empty
MAX_ID_BYTES = 200  # a file name holds 255 bytes: room for the longest suffix written after an id


@dataclass
class ManifestEntry:
    """One utterance. ``audio`` is an absolute path; ``duration`` is in seconds."""

    id: str
    audio: str
    text: str
    speaker: str
    language: str = "en"
    duration: Optional[float] = None
    emotion: Optional[str] = None
    quality: Optional[float] = None


@dataclass
class SeedTTSItem:
    """One line of a Seed-TTS-Eval list; the synthesised audio for it must be saved as ``<utt>.wav``."""

    utt: str
    prompt_text: Optional[str]
    prompt_audio: Optional[str]  # absolute path of the voice prompt
    text: str  # the text to synthesise
    ground_truth_audio: Optional[str] = None


class ManifestError(ValueError):
    """Malformed manifest input; the message starts with ``<file>:<line>:`` (or ``<file>:`` without a line)."""

    def __init__(self, path: str | Path, line: Optional[int], message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")


def _resolve(path: str, base: Path) -> str:
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields ``(1-based line number, stripped line)`` for the non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(path, None, "file not found") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ManifestError(path, line, "not valid UTF-8") from None
    # split on "\n" only: str.splitlines would also break at U+2028, which JSON strings may hold raw
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line.strip()


def utterance_id_problem(utt: str) -> Optional[str]:
    """Why ``utt`` cannot name a file (``<utt>.wav``, a tar member ``<utt>.json``), or ``None`` when it can.

    An id must not reach out of the folder it names a file in: no ``/`` or ``\\`` (so no absolute path and no
    ``a/../..``), no leading dot (``.``, ``..``, hidden files), no control characters, no outer spaces, and not
    longer than a file name may be (:data:`MAX_ID_BYTES` in UTF-8).
    """
    if not utt or utt != utt.strip():
        return f"id {utt!r} is empty or has outer spaces"
    if "/" in utt or "\\" in utt or utt.startswith("."):
        return f"id {utt!r} cannot be a file name (no slashes, no leading dot)"
    if any(unicodedata.category(char).startswith("C") for char in utt):
        return f"id {utt!r} holds a control character"
    if len(utt.encode("utf-8")) > MAX_ID_BYTES:
        return f"id {utt[:32]!r}... is longer than {MAX_ID_BYTES} bytes: too long for a file name"
    return None


def _check_id(ids: dict[str, int], utt: str, path: Path, line: int) -> None:
    """Refuses an id that cannot name a file or that ``ids`` (id -> its first line) already holds."""
    problem = utterance_id_problem(utt)
    if problem:
        raise ManifestError(path, line, problem)
    if utt in ids:
        raise ManifestError(path, line, f"duplicate id {utt!r} (first on line {ids[utt]})")
    ids[utt] = line


# JSON lines

_ENTRY_FIELDS = tuple(field.name for field in fields(ManifestEntry))
_OPTIONAL_TYPES = {"language": (str,), "duration": (int, float), "emotion": (str,), "quality": (int, float)}


def read_jsonl(path: str | Path) -> list[ManifestEntry]:
    """Reads one JSON object per line with at least ``id``, ``audio``, ``text``, ``speaker`` (the text may be empty).

    Relative ``audio`` paths resolve against the manifest's directory. Keys other than the
    :class:`ManifestEntry` fields are ignored, so richer manifests can be read too.
    """
    path = Path(path)
    base = path.absolute().parent
    entries, ids = [], {}
    for number, line in _numbered_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(path, number, f"invalid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise ManifestError(path, number, f"expected a JSON object, got {type(record).__name__}")
        for name in REQUIRED_FIELDS:
            if not isinstance(record.get(name), str) or (name != "text" and not record[name].strip()):
                problem = "missing" if name not in record else "not a non-empty string"
                raise ManifestError(path, number, f"required field {name!r} is {problem}")
        for name, types in _OPTIONAL_TYPES.items():
            value = record.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise ManifestError(path, number, f"field {name!r} must be {types[0].__name__}, got {value!r}")
        if record.get("duration") is not None and record["duration"] < 0:
            raise ManifestError(path, number, f"negative duration {record['duration']}")
        _check_id(ids, record["id"], path, number)
        values = {name: record[name] for name in _ENTRY_FIELDS if record.get(name) is not None}
        values["audio"] = _resolve(values["audio"], base)
        entries.append(ManifestEntry(**values))
    return entries


def write_jsonl(entries: Sequence[ManifestEntry], path: str | Path) -> None:
    """Writes entries as JSON lines (unset optional fields left out), atomically.

    Audio paths below the manifest's directory are written relative to it, so a corpus folder can be moved whole.

    Raises:
        ValueError: on duplicate ids.
    """
    path = Path(path)
    base = path.absolute().parent
    seen: set[str] = set()
    lines = []
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f"duplicate id {entry.id!r} in entries for {path}")
        seen.add(entry.id)
        record = {name: value for name, value in asdict(entry).items() if value is not None}
        audio = Path(os.path.abspath(entry.audio))
        if audio.is_relative_to(base):
            record["audio"] = audio.relative_to(base).as_posix()
        lines.append(json.dumps(record, ensure_ascii=False))
    base.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


# LibriTTS: <root>/<speaker>/<chapter>/<utt>.wav + <utt>.normalized.txt (or .original.txt)

def read_libritts(root: str | Path) -> list[ManifestEntry]:
    """Reads one LibriTTS subset directory (e.g. ``train-clean-100``), using the normalised transcripts."""
    root = Path(root).absolute()
    wavs = sorted(root.glob("*/*/*.wav"))
    if not wavs:
        raise ManifestError(root, None, "no <speaker>/<chapter>/<utt>.wav files: not a LibriTTS subset directory")
    entries = []
    for wav in wavs:
        utt = wav.name[:-len(".wav")]
        transcript = next((candidate for candidate in (wav.with_name(f"{utt}.normalized.txt"),
                                                        wav.with_name(f"{utt}.original.txt")) if candidate.exists()),
                          None)
        if transcript is None:
            raise ManifestError(wav, None, "no .normalized.txt or .original.txt transcript next to it")
        text = " ".join(line for _, line in _numbered_lines(transcript))
        problem = utterance_id_problem(utt)  # a file name, but it may start with a dot
        if problem:
            raise ManifestError(wav, None, problem)
        entries.append(ManifestEntry(id=utt, audio=str(wav), text=text, speaker=wav.parent.parent.name))
    return entries


# LJSpeech: <root>/metadata.csv (id|text|normalized text) + <root>/wavs/<id>.wav

def read_ljspeech(root: str | Path, speaker: str = "ljspeech") -> list[ManifestEntry]:
    """Reads an LJSpeech-style folder, preferring the normalised text column when it is present and non-empty."""
    root = Path(root).absolute()
    metadata = root / "metadata.csv"
    entries, ids = [], {}
    for number, line in _numbered_lines(metadata):
        columns = line.split("|")
        if len(columns) not in (2, 3):
            raise ManifestError(metadata, number, f"expected 'id|text|normalized text', got {len(columns)} fields")
        utt = columns[0].strip()
        text = (columns[2] if len(columns) == 3 and columns[2].strip() else columns[1]).strip()
        if not utt:
            raise ManifestError(metadata, number, "empty id")
        _check_id(ids, utt, metadata, number)
        entries.append(ManifestEntry(id=utt, audio=str(root / "wavs" / f"{utt}.wav"), text=text, speaker=speaker))
    return entries


# Kaldi: wav.scp, text, utt2spk (+ optional utt2dur)

_PIPE_OR_ARCHIVE = re.compile(r"\|\s*$|\.ark:\d+$")


def _read_kaldi_table(path: Path, what: str, ids_only_allowed: bool = False) -> dict[str, tuple[str, int]]:
    """``utt -> (rest of the line, line number)`` for a Kaldi ``<utt> <value>`` file."""
    table: dict[str, tuple[str, int]] = {}
    ids: dict[str, int] = {}
    for number, line in _numbered_lines(path):
        parts = line.split(maxsplit=1)
        if len(parts) < 2 and not ids_only_allowed:
            raise ManifestError(path, number, f"expected '<utterance-id> <{what}>'")
        _check_id(ids, parts[0], path, number)
        table[parts[0]] = (parts[1].strip() if len(parts) > 1 else "", number)
    return table


def _missing_error(path: Path, scp: Path, missing: list[str], what: str) -> ManifestError:
    return ManifestError(path, None, f"{len(missing)} utterances of {scp.name} have no {what}, "
                                     f"e.g. {', '.join(missing[:5])}")


def read_kaldi(directory: str | Path, audio_root: Optional[str | Path] = None,
               language: str = "en") -> list[ManifestEntry]:
    """Reads a Kaldi data directory with plain-path ``wav.scp``, ``text`` and ``utt2spk``.

    Relative wav paths resolve against ``audio_root``, or the current directory (Kaldi's convention: the recipe
    directory the scripts run in). ``utt2dur``, when present, fills in durations.
    """
    directory = Path(directory).absolute()
    base = Path(audio_root).absolute() if audio_root is not None else Path.cwd()
    if (directory / "segments").exists():
        raise ManifestError(directory / "segments", None,
                            "segmented recordings are not supported: cut the segments into files first")
    scp_path, text_path, spk_path = directory / "wav.scp", directory / "text", directory / "utt2spk"
    scp = _read_kaldi_table(scp_path, "path")
    for utt, (location, number) in scp.items():
        if _PIPE_OR_ARCHIVE.search(location):
            raise ManifestError(scp_path, number, f"{utt}: only plain file paths are supported, got {location!r} "
                                                  "(run the command or extract the archive into wav files first)")
    texts = _read_kaldi_table(text_path, "transcript", ids_only_allowed=True)
    speakers = _read_kaldi_table(spk_path, "speaker")
    durations = _read_kaldi_table(directory / "utt2dur", "seconds") if (directory / "utt2dur").exists() else {}
    for table, path, what in ((texts, text_path, "transcript"), (speakers, spk_path, "speaker")):
        missing = [utt for utt in scp if utt not in table]
        if missing:
            raise _missing_error(path, scp_path, missing, what)
    entries = []
    for utt, (location, _) in scp.items():
        text = texts[utt][0]
        duration = None
        if utt in durations:
            value, number = durations[utt]
            try:
                duration = float(value)
            except ValueError:
                raise ManifestError(directory / "utt2dur", number, f"{utt}: duration {value!r} is not a number") \
                    from None
        entries.append(ManifestEntry(id=utt, audio=_resolve(location, base), text=text, speaker=speakers[utt][0],
                                     language=language, duration=duration))
    return entries


# Seed-TTS-Eval meta.lst

def read_seedtts_meta(path: str | Path) -> list[SeedTTSItem]:
    """Reads a Seed-TTS-Eval list the way the official ``get_wav_res_ref_text.py`` does.

    Field forms (``|``-separated, fields not stripped, as in the official script):

    * 5: ``utt|prompt_text|prompt_wav|text|ground_truth_wav``
    * 4: ``utt|prompt_text|prompt_wav|text``
    * 3: ``utt|text|prompt_wav``: note the order (the official script unpacks ``utt, infer_text, prompt_wav``), no
      prompt text, and a trailing ``.wav`` on ``utt`` is dropped.
    * 2: ``utt|text``: no prompt.

    Relative wav paths resolve against the list's directory (the official script does so for the prompt; we also do
    it for the ground truth, which it leaves unused). Blank lines are skipped; duplicate ``utt`` is an error because
    both lines would write the same ``<utt>.wav``.
    """
    path = Path(path)
    base = path.absolute().parent
    items, ids = [], {}
    for number, line in _numbered_lines(path):
        parts = line.split("|")
        if len(parts) == 5:
            utt, prompt_text, prompt_wav, text, truth = parts
        elif len(parts) == 4:
            (utt, prompt_text, prompt_wav, text), truth = parts, None
        elif len(parts) == 3:
            (utt, text, prompt_wav), prompt_text, truth = parts, None, None
            utt = utt[:-len(".wav")] if utt.endswith(".wav") else utt
        elif len(parts) == 2:
            (utt, text), prompt_text, prompt_wav, truth = parts, None, None, None
        else:
            raise ManifestError(path, number, f"expected 2 to 5 '|'-separated fields, got {len(parts)}")
        if not utt or not text or (prompt_wav is not None and not prompt_wav):
            raise ManifestError(path, number, "empty utterance id, text or prompt wav")
        _check_id(ids, utt, path, number)
        items.append(SeedTTSItem(utt=utt, prompt_text=prompt_text,
                                 prompt_audio=_resolve(prompt_wav, base) if prompt_wav is not None else None,
                                 text=text, ground_truth_audio=_resolve(truth, base) if truth else None))
    return items


# Dispatch

MANIFEST_FORMATS = ("jsonl", "libritts", "ljspeech", "kaldi")


def detect_format(path: str | Path) -> str:
    """Guesses a :data:`MANIFEST_FORMATS` name from a path's shape.

    Raises:
        ManifestError: when the path matches no known shape.
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError(path, None, "does not exist")
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return "jsonl"
        if path.name == "metadata.csv":
            return "ljspeech"
        if path.name == "wav.scp":
            return "kaldi"
    elif path.is_dir():
        if (path / "metadata.csv").is_file():
            return "ljspeech"
        if (path / "wav.scp").is_file():
            return "kaldi"
        if next(path.glob("*/*/*.wav"), None) is not None:
            return "libritts"
    raise ManifestError(path, None, "cannot tell the manifest format: expected a .jsonl file, an LJSpeech folder "
                                    "(metadata.csv), a Kaldi data dir (wav.scp) or a LibriTTS subset "
                                    "(<speaker>/<chapter>/<utt>.wav)")


def read_manifest(path: str | Path, format: str = "auto") -> list[ManifestEntry]:
    """Reads utterances from any supported manifest; ``format`` is ``"auto"`` or one of :data:`MANIFEST_FORMATS`.

    A ``metadata.csv`` or ``wav.scp`` file stands for its folder.
    """
    path = Path(path)
    if format == "auto":
        format = detect_format(path)
    if format not in MANIFEST_FORMATS:
        raise ValueError(f"unknown manifest format {format!r}; expected 'auto' or one of {MANIFEST_FORMATS}")
    if format in ("ljspeech", "kaldi") and path.is_file():
        path = path.parent
    readers = {"jsonl": read_jsonl, "libritts": read_libritts, "ljspeech": read_ljspeech, "kaldi": read_kaldi}
    return readers[format](path)
