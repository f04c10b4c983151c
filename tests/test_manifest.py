"""Manifest readers: formats, relative paths, and ManifestError naming file and line for malformed input."""

import json
import os
from pathlib import Path

import pytest

from e2e_tts.data.manifest import (ManifestEntry, ManifestError, SeedTTSItem, detect_format, read_jsonl, read_kaldi,
                                   read_libritts, read_ljspeech, read_manifest, read_seedtts_meta,
                                   utterance_id_problem, write_jsonl)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_error_at(excinfo, path: Path, line, *words):
    message = str(excinfo.value)
    expected_prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(expected_prefix), message
    assert excinfo.value.line == line
    for word in words:
        assert word in message, message


# JSON lines

def test_jsonl_round_trip_writes_relative_paths_below_the_manifest(tmp_path):
    outside = tmp_path.parent / "elsewhere" / "x.wav"
    entries = [
        ManifestEntry(id="a", audio=str(tmp_path / "wavs" / "a.wav"), text="Hello there.", speaker="s1"),
        ManifestEntry(id="b", audio=str(outside), text="Caf\u00e9\u2028au lait.", speaker="s2", language="fr",
                      duration=1.25, emotion="happy", quality=3.5),
    ]
    manifest = tmp_path / "train.jsonl"
    write_jsonl(entries, manifest)
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").split("\n") if line]
    assert records[0]["audio"] == "wavs/a.wav"
    assert "duration" not in records[0]  # unset optional fields are left out
    assert records[1]["audio"] == str(outside)
    assert read_jsonl(manifest) == entries
    assert not list(tmp_path.glob("*.tmp"))


def test_jsonl_relative_audio_resolves_against_manifest_directory(tmp_path, monkeypatch):
    manifest = write(tmp_path / "lists" / "m.jsonl",
                     '{"id": "a", "audio": "wavs/a.wav", "text": "t", "speaker": "s"}\n'
                     '{"id": "b", "audio": "../audio/b.wav", "text": "t", "speaker": "s", "extra": 1}\n'
                     '{"id": "c", "audio": "/abs/c.wav", "text": "t", "speaker": "s"}\n')
    monkeypatch.chdir(tmp_path.parent)  # must not depend on the working directory
    entries = read_jsonl(os.path.relpath(manifest))
    assert [entry.audio for entry in entries] == [str(tmp_path / "lists" / "wavs" / "a.wav"),
                                                  str(tmp_path / "audio" / "b.wav"), "/abs/c.wav"]


def test_jsonl_write_rejects_duplicate_ids(tmp_path):
    entry = ManifestEntry(id="a", audio="/a.wav", text="t", speaker="s")
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        write_jsonl([entry, entry], tmp_path / "m.jsonl")


@pytest.mark.parametrize("bad_line, line, words", [
    ("{not json", 3, ["invalid JSON"]),
    ('["a list"]', 3, ["JSON object"]),
    ('{"id": "x", "audio": "x.wav", "text": "t"}', 3, ["'speaker'", "missing"]),
    ('{"id": "x", "audio": "x.wav", "text": 5, "speaker": "s"}', 3, ["'text'", "string"]),
    ('{"id": "x", "audio": "x.wav", "text": "t", "speaker": "s", "duration": "long"}', 3, ["'duration'"]),
    ('{"id": "x", "audio": "x.wav", "text": "t", "speaker": "s", "duration": -1}', 3, ["negative duration"]),
    ('{"id": "a", "audio": "x.wav", "text": "t", "speaker": "s"}', 3, ["duplicate id 'a'", "line 1"]),
])
def test_jsonl_malformed_lines_name_file_and_line(tmp_path, bad_line, line, words):
    # line 2 is blank: numbering must still count it
    manifest = write(tmp_path / "m.jsonl", '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}\n\n'
                                           + bad_line + "\n")
    with pytest.raises(ManifestError) as excinfo:
        read_jsonl(manifest)
    assert_error_at(excinfo, manifest, line, *words)


def test_invalid_utf8_names_the_line(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}\n{"id": "\xff"}\n')
    with pytest.raises(ManifestError) as excinfo:
        read_jsonl(manifest)
    assert_error_at(excinfo, manifest, 2, "UTF-8")


def test_missing_file_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


# LibriTTS

def make_libritts(root: Path) -> None:
    write(root / "19" / "198" / "19_198_000000_000000.normalized.txt", "Hello, world.\n")
    write(root / "19" / "198" / "19_198_000000_000000.original.txt", "HELLO WORLD")
    write(root / "19" / "198" / "19_198_000000_000000.wav", "")
    write(root / "84" / "121" / "84_121_000001_000000.original.txt", "Only the original.")
    write(root / "84" / "121" / "84_121_000001_000000.wav", "")


def test_libritts_prefers_normalized_text_and_falls_back_to_original(tmp_path):
    make_libritts(tmp_path)
    entries = read_libritts(tmp_path)
    assert [(e.id, e.speaker, e.text) for e in entries] == [("19_198_000000_000000", "19", "Hello, world."),
                                                            ("84_121_000001_000000", "84", "Only the original.")]
    assert entries[0].audio == str(tmp_path / "19" / "198" / "19_198_000000_000000.wav")


def test_libritts_errors(tmp_path):
    make_libritts(tmp_path)
    write(tmp_path / "84" / "121" / "84_121_000002_000000.wav", "")
    with pytest.raises(ManifestError) as excinfo:
        read_libritts(tmp_path)
    assert_error_at(excinfo, tmp_path / "84" / "121" / "84_121_000002_000000.wav", None, "transcript")
    with pytest.raises(ManifestError, match="not a LibriTTS subset"):
        read_libritts(tmp_path / "19")


# LJSpeech

def test_ljspeech_uses_normalized_column_when_present(tmp_path):
    write(tmp_path / "metadata.csv", "LJ001-0001|Printing, in 1 sense|Printing, in one sense\n"
                                     "LJ001-0002|Two columns only\n"
                                     "LJ001-0003|Raw text|\n")
    entries = read_ljspeech(tmp_path)
    assert [e.text for e in entries] == ["Printing, in one sense", "Two columns only", "Raw text"]
    assert entries[1].audio == str(tmp_path / "wavs" / "LJ001-0002.wav")
    assert {e.speaker for e in entries} == {"ljspeech"}


@pytest.mark.parametrize("bad_line, words", [("LJ9|a|b|c", ["4 fields"]), ("onlyid", ["1 fields"]),
                                             ("|text|", ["empty id"]), ("LJ1|again|", ["duplicate id"])])
def test_ljspeech_malformed_lines(tmp_path, bad_line, words):
    metadata = write(tmp_path / "metadata.csv", f"LJ1|fine|fine\n{bad_line}\n")
    with pytest.raises(ManifestError) as excinfo:
        read_ljspeech(tmp_path)
    assert_error_at(excinfo, metadata, 2, *words)


# Kaldi

def make_kaldi(directory: Path, scp: str = "u1 wavs/u1.wav\nu2 /abs/u2.wav\n") -> None:
    write(directory / "wav.scp", scp)
    write(directory / "text", "u1 hello world\nu2 good morning\n")
    write(directory / "utt2spk", "u1 spk1\nu2 spk2\n")


def test_kaldi_reads_plain_paths_relative_to_audio_root(tmp_path):
    make_kaldi(tmp_path / "data" / "train")
    write(tmp_path / "data" / "train" / "utt2dur", "u1 1.5\nu2 2\n")
    entries = read_kaldi(tmp_path / "data" / "train", audio_root=tmp_path)
    assert entries == [ManifestEntry("u1", str(tmp_path / "wavs" / "u1.wav"), "hello world", "spk1", duration=1.5),
                       ManifestEntry("u2", "/abs/u2.wav", "good morning", "spk2", duration=2.0)]


@pytest.mark.parametrize("scp", ["u1 wavs/u1.wav\nu2 sox in.flac -t wav - |\n", "u1 wavs/u1.wav\nu2 raw.ark:1234\n"])
def test_kaldi_piped_or_archived_wav_is_an_error(tmp_path, scp):
    make_kaldi(tmp_path, scp)
    with pytest.raises(ManifestError) as excinfo:
        read_kaldi(tmp_path)
    assert_error_at(excinfo, tmp_path / "wav.scp", 2, "plain file paths")


def test_kaldi_missing_transcripts_and_speakers_are_listed(tmp_path):
    make_kaldi(tmp_path, "".join(f"u{i} /w/u{i}.wav\n" for i in range(1, 10)))
    with pytest.raises(ManifestError) as excinfo:
        read_kaldi(tmp_path)
    assert_error_at(excinfo, tmp_path / "text", None, "7 utterances", "u3, u4, u5, u6, u7")
    assert "u8" not in str(excinfo.value)  # only the first few
    write(tmp_path / "text", "".join(f"u{i} words\n" for i in range(1, 10)))
    with pytest.raises(ManifestError) as excinfo:
        read_kaldi(tmp_path)
    assert_error_at(excinfo, tmp_path / "utt2spk", None, "7 utterances", "no speaker")


@pytest.mark.parametrize("name, content, line, words", [
    ("utt2spk", "u1 spk1\nu2\n", 2, ["<speaker>"]),
    ("text", "u1 hello\nu1 again\nu2 x\n", 2, ["duplicate id 'u1'"]),
    ("utt2dur", "u1 1.0\nu2 abc\n", 2, ["not a number"]),
])
def test_kaldi_malformed_lines(tmp_path, name, content, line, words):
    make_kaldi(tmp_path)
    write(tmp_path / name, content)
    with pytest.raises(ManifestError) as excinfo:
        read_kaldi(tmp_path)
    assert_error_at(excinfo, tmp_path / name, line, *words)


def test_kaldi_segments_are_refused(tmp_path):
    make_kaldi(tmp_path)
    write(tmp_path / "segments", "u1 rec1 0.0 1.0\n")
    with pytest.raises(ManifestError, match="segmented"):
        read_kaldi(tmp_path)


# Seed-TTS-Eval meta.lst

def test_seedtts_all_field_forms(tmp_path):
    meta = write(tmp_path / "en" / "meta.lst",
                 "u5|prompt five|prompt-wavs/p5.wav|text five|gt/u5.wav\n"
                 "u4|prompt four|/abs/p4.wav|text four\n"
                 "\n"
                 "u3.wav|text three|prompt-wavs/p3.wav\n"
                 "u2|text two\n")
    items = read_seedtts_meta(meta)
    prompts = tmp_path / "en" / "prompt-wavs"
    assert items == [
        SeedTTSItem("u5", "prompt five", str(prompts / "p5.wav"), "text five", str(tmp_path / "en" / "gt" / "u5.wav")),
        SeedTTSItem("u4", "prompt four", "/abs/p4.wav", "text four", None),
        SeedTTSItem("u3", None, str(prompts / "p3.wav"), "text three", None),  # official 3-field order, .wav dropped
        SeedTTSItem("u2", None, None, "text two", None),
    ]


@pytest.mark.parametrize("bad_line, words", [("lonely", ["got 1"]), ("a|b|c|d|e|f", ["got 6"]),
                                             ("u9||p.wav|", ["empty"]), ("u1|again", ["duplicate id 'u1'"])])
def test_seedtts_malformed_lines(tmp_path, bad_line, words):
    meta = write(tmp_path / "meta.lst", f"u1|text\n\n{bad_line}\n")
    with pytest.raises(ManifestError) as excinfo:
        read_seedtts_meta(meta)
    assert_error_at(excinfo, meta, 3, *words)


# Dispatch

def test_read_manifest_detects_each_format(tmp_path):
    make_libritts(tmp_path / "libritts")
    write(tmp_path / "lj" / "metadata.csv", "LJ1|a|b\n")
    make_kaldi(tmp_path / "kaldi")
    write(tmp_path / "m.jsonl", '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}\n')
    assert detect_format(tmp_path / "libritts") == "libritts"
    assert detect_format(tmp_path / "lj") == detect_format(tmp_path / "lj" / "metadata.csv") == "ljspeech"
    assert detect_format(tmp_path / "kaldi") == detect_format(tmp_path / "kaldi" / "wav.scp") == "kaldi"
    assert detect_format(tmp_path / "m.jsonl") == "jsonl"
    assert len(read_manifest(tmp_path / "libritts")) == 2
    assert read_manifest(tmp_path / "lj" / "metadata.csv")[0].text == "b"
    assert [e.id for e in read_manifest(tmp_path / "kaldi" / "wav.scp")] == ["u1", "u2"]
    assert read_manifest(tmp_path / "m.jsonl", format="jsonl")[0].id == "a"
    write(tmp_path / "m.txt", "a b\n")
    with pytest.raises(ManifestError, match="cannot tell the manifest format"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ValueError, match="unknown manifest format 'csv'"):
        read_manifest(tmp_path / "m.jsonl", format="csv")


def test_a_missing_manifest_is_reported_as_missing(tmp_path):
    for path in (tmp_path / "nope.jsonl", tmp_path / "nope"):
        with pytest.raises(ManifestError) as excinfo:
            read_manifest(path)
        assert_error_at(excinfo, path, None, "does not exist")


# Content problems are the shard writer's to skip and count; the readers pass them on

def test_empty_transcripts_are_read_as_empty_texts(tmp_path):
    write(tmp_path / "m.jsonl", '{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}\n'
                                '{"id": "b", "audio": "b.wav", "text": "", "speaker": "s"}\n')
    write(tmp_path / "lj" / "metadata.csv", "LJ1|fine|fine\nLJ2||\nLJ3| \n")
    make_kaldi(tmp_path / "kaldi")
    write(tmp_path / "kaldi" / "text", "u1 hello world\nu2\n")
    make_libritts(tmp_path / "libritts")
    write(tmp_path / "libritts" / "84" / "121" / "84_121_000001_000000.original.txt", "  \n")
    assert [e.text for e in read_jsonl(tmp_path / "m.jsonl")] == ["t", ""]
    assert [e.text for e in read_ljspeech(tmp_path / "lj")] == ["fine", "", ""]
    assert [e.text for e in read_kaldi(tmp_path / "kaldi")] == ["hello world", ""]
    assert [e.text for e in read_libritts(tmp_path / "libritts")] == ["Hello, world.", ""]


# Ids name files (<utt>.wav, tar members): one that is a path must not reach out of its folder

PATH_IDS = ["../evil", "a/b", "/etc/passwd", "..", ".hidden", "a\\b", "nul\x00byte", "new\x1bline"]


@pytest.mark.parametrize("utt", PATH_IDS)
def test_ids_that_are_paths_are_refused(utt):
    assert utterance_id_problem(utt)


@pytest.mark.parametrize("utt", ["LJ001-0001", "19_198_000000_000000", "u3.take2", "spk 1 utt"])
def test_ordinary_ids_are_accepted(utt):
    assert utterance_id_problem(utt) is None


@pytest.mark.parametrize("utt", PATH_IDS)
def test_every_reader_refuses_an_id_that_is_a_path(tmp_path, utt):
    rows = [{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}, {"id": utt, "audio": "x.wav", "text": "t",
                                                                          "speaker": "s"}]
    readers = [
        (read_jsonl, write(tmp_path / "m.jsonl", "".join(json.dumps(row) + "\n" for row in rows)),
         tmp_path / "m.jsonl"),
        (read_ljspeech, write(tmp_path / "lj" / "metadata.csv", f"LJ1|fine|fine\n{utt}|text|text\n").parent,
         tmp_path / "lj" / "metadata.csv"),
        (read_seedtts_meta, write(tmp_path / "meta.lst", f"u1|text\n{utt}|text\n"), tmp_path / "meta.lst"),
    ]
    if " " not in utt:  # Kaldi ids end at the first space
        make_kaldi(tmp_path / "kaldi", f"u1 /w/u1.wav\n{utt} /w/u2.wav\n")
        write(tmp_path / "kaldi" / "text", f"u1 hello\n{utt} world\n")
        write(tmp_path / "kaldi" / "utt2spk", f"u1 s\n{utt} s\n")
        readers.append((read_kaldi, tmp_path / "kaldi", tmp_path / "kaldi" / "wav.scp"))
    for reader, source, named in readers:
        with pytest.raises(ManifestError) as excinfo:
            reader(source)
        assert_error_at(excinfo, named, 2, repr(utt))
