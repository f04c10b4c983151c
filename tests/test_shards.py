import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from e2e_tts.audio import AudioConfig, encode_flac
from e2e_tts.data import shards as shards_module
from e2e_tts.data.features import SampleFeaturizer, SampleFilter, SampleRejected
from e2e_tts.data.manifest import ManifestEntry, read_manifest, write_jsonl
from e2e_tts.data.shards import read_shard_list, register, write_shards
from e2e_tts.text import PhonemeTokenizer

RATE = 22050  # the sources are at another rate than the shards (16 kHz), so resampling is exercised


def tone_file(path, seconds, rate=RATE, freq=220.0, amplitude=0.3, subtype=None):
    t = np.arange(int(round(seconds * rate))) / rate
    sf.write(path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype=subtype)
    return str(path)


def tar_members(path):
    with tarfile.open(path) as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers()}


def make_entries(tmp_path, count=7):
    entries = []
    for i in range(count):
        audio = tone_file(tmp_path / f"u{i}.wav", 0.5 + 0.1 * i, freq=150.0 + 30 * i)
        entries.append(ManifestEntry(id=f"utt{i}", audio=audio, text=f"Sentence number {i}.", speaker=f"spk{i % 3}",
                                     language="en", emotion="happy" if i == 0 else None,
                                     quality=4.5 if i == 1 else None))
    return entries


def test_stats_and_samples_match_the_manifest(tmp_path):
    entries = make_entries(tmp_path)
    write_jsonl(entries, tmp_path / "manifest.jsonl")
    config = AudioConfig()
    stats = write_shards(read_manifest(tmp_path / "manifest.jsonl"), tmp_path / "shards", config, shard_size=3,
                         workers=2)

    expected_seconds = [round(round((0.5 + 0.1 * i) * RATE) * 16000 / RATE) / 16000 for i in range(7)]
    assert stats.utterances == 7 and stats.skipped == {}
    assert stats.hours == pytest.approx(sum(expected_seconds) / 3600, abs=7 * 2 / 16000 / 3600)
    assert stats.per_speaker == {"spk0": 3, "spk1": 2, "spk2": 2} and stats.speakers == 3
    saved = json.loads((tmp_path / "shards" / "train.stats.json").read_text())
    assert saved["utterances"] == 7 and saved["hours"] == pytest.approx(stats.hours) and saved["num_shards"] == 3
    assert saved["per_speaker"] == stats.per_speaker and saved["skipped"] == {}

    shards = read_shard_list(tmp_path / "shards" / "train.list")
    assert [path.rsplit("/", 1)[-1] for path in shards] == ["train-000000.tar", "train-000001.tar",
                                                              "train-000002.tar"]
    keys, seconds = [], {}
    for shard in shards:
        members = tar_members(shard)
        for name, data in sorted(members.items()):
            key, _, member = name.partition(".")
            if member != "json":
                continue
            keys.append(key)
            meta = json.loads(data)
            wav, rate = sf.read(io.BytesIO(members[f"{key}.audio.flac"]))
            assert rate == 16000 and wav.ndim == 1 and sf.info(io.BytesIO(members[f"{key}.audio.flac"])).subtype \
                == "PCM_16"
            assert np.abs(wav).max() == pytest.approx(config.peak_level, abs=1e-3)  # peak normalised
            assert meta["duration"] == pytest.approx(len(wav) / 16000)
            assert meta["sample_rate"] == 16000 and meta["language"] == "en"
            seconds[key] = meta["duration"]
            index = int(key[3:])
            assert meta["text"] == entries[index].text and meta["speaker"] == entries[index].speaker
            assert meta.get("emotion") == entries[index].emotion and meta.get("quality") == entries[index].quality
    assert sorted(keys) == [f"utt{i}" for i in range(7)]
    assert sum(seconds.values()) == pytest.approx(stats.seconds)


def test_every_invalid_entry_is_skipped_with_its_reason(tmp_path):
    good = make_entries(tmp_path, 2)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    nan_audio = tmp_path / "nan.wav"
    samples = np.full(16000, 0.1, dtype=np.float32)
    samples[100] = np.nan
    sf.write(nan_audio, samples, 16000, subtype="FLOAT")
    bad = [
        ManifestEntry(id="corrupt", audio=str(corrupt), text="a corrupt file", speaker="s"),
        ManifestEntry(id="empty", audio=good[0].audio, text="", speaker="s"),
        ManifestEntry(id="nan", audio=str(nan_audio), text="not a number", speaker="s"),
        ManifestEntry(id="short", audio=tone_file(tmp_path / "short.wav", 0.1), text="too short", speaker="s"),
        ManifestEntry(id="long", audio=tone_file(tmp_path / "long.wav", 60.0, rate=8000), text="too long",
                      speaker="s"),
        ManifestEntry(id="silent", audio=tone_file(tmp_path / "silent.wav", 1.0, amplitude=0.0), text="quiet",
                      speaker="s"),
        ManifestEntry(id="absent", audio=str(tmp_path / "absent.wav"), text="no file", speaker="s"),
        ManifestEntry(id="no_speaker", audio=good[0].audio, text="who", speaker=""),
        ManifestEntry(id="has.dot", audio=good[0].audio, text="a dot in the id", speaker="s"),
        ManifestEntry(id="utt0", audio=good[1].audio, text="same id again", speaker="s"),
    ]
    stats = write_shards(good + bad, tmp_path / "shards", AudioConfig(), shard_size=4, workers=2)

    assert stats.utterances == 2
    assert stats.skipped == {"unreadable": 1, "empty_text": 1, "nan_or_inf": 1, "too_short": 1, "too_long": 1,
                             "silent": 1, "missing_audio": 1, "missing_field": 1, "invalid_id": 1,
                             "duplicate_id": 1}
    rejected = {(item["id"], item["reason"]) for item in stats.rejected}
    assert ("corrupt", "unreadable") in rejected and ("long", "too_long") in rejected
    assert ("utt0", "duplicate_id") in rejected and ("has.dot", "invalid_id") in rejected
    saved = json.loads((tmp_path / "shards" / "train.stats.json").read_text())
    assert saved["skipped"] == stats.skipped and saved["skipped_total"] == 10
    # the written samples are exactly the valid ones: the first utt0, not its duplicate
    members = {}
    for shard in read_shard_list(tmp_path / "shards" / "train.list"):
        members.update(tar_members(shard))
    assert sorted(name for name in members if name.endswith(".json")) == ["utt0.json", "utt1.json"]
    assert json.loads(members["utt0.json"])["text"] == good[0].text


def test_shards_whose_entries_are_all_rejected_are_not_listed(tmp_path):
    good = make_entries(tmp_path, 4)
    assert len(write_shards(good, tmp_path / "shards", AudioConfig(), shard_size=2, workers=1).shards) == 2
    entries = good[:2] + [
        ManifestEntry(id=f"bad{i}", audio=str(tmp_path / "absent.wav"), text="x", speaker="s") for i in range(2)]
    stats = write_shards(entries, tmp_path / "shards", AudioConfig(), shard_size=2, workers=1)
    assert len(stats.shards) == 1 and stats.skipped == {"missing_audio": 2}
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == ["train-000000.tar"]


def test_output_does_not_depend_on_the_number_of_workers(tmp_path):
    entries = make_entries(tmp_path, 5)
    one = write_shards(entries, tmp_path / "one", AudioConfig(), shard_size=2, workers=1)
    two = write_shards(entries, tmp_path / "two", AudioConfig(), shard_size=2, workers=2)
    assert len(one.shards) == len(two.shards) == 3
    for a, b in zip(one.shards, two.shards):
        with open(a, "rb") as first, open(b, "rb") as second:
            assert first.read() == second.read()


def test_command_line_writes_shards_from_a_manifest(tmp_path):
    write_jsonl(make_entries(tmp_path, 3), tmp_path / "manifest.jsonl")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["shards", "--manifest", str(tmp_path / "manifest.jsonl"), "--out",
                              str(tmp_path / "out"), "--prefix", "dev", "--shard-size", "2", "--workers", "1",
                              "--sample-rate", "8000"])
    assert args.func(args) == 0
    assert len(read_shard_list(tmp_path / "out" / "dev.list")) == 2
    members = tar_members(tmp_path / "out" / "dev-000000.tar")
    assert sf.info(io.BytesIO(members["utt0.audio.flac"])).samplerate == 8000
    assert json.loads((tmp_path / "out" / "dev.stats.json").read_text())["utterances"] == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_a_progress_bar_counts_the_utterances_written_when_asked(tmp_path, capsys, workers):
    entries = make_entries(tmp_path, 5)
    write_shards(entries, tmp_path / "quiet", AudioConfig(), shard_size=2, workers=workers)
    assert capsys.readouterr().err == ""
    write_shards(entries, tmp_path / "shown", AudioConfig(), shard_size=2, workers=workers, progress_bar=True)
    bar = capsys.readouterr().err
    assert "shards train" in bar and "5/5" in bar  # 5 utterances in 3 shards
    write_jsonl(entries, tmp_path / "manifest.jsonl")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    command = ["shards", "--manifest", str(tmp_path / "manifest.jsonl"), "--out", str(tmp_path / "cli")]
    args = parser.parse_args(command)
    assert args.progress_bar is False  # stderr is no terminal here
    assert args.func(args) == 0 and capsys.readouterr().err == ""
    args = parser.parse_args(command + ["--progress-bar"])
    assert args.func(args) == 0 and "5/5" in capsys.readouterr().err


def test_bad_arguments_and_lists_are_explained(tmp_path):
    with pytest.raises(ValueError, match="shard_size"):
        write_shards([], tmp_path, AudioConfig(), shard_size=0)
    with pytest.raises(ValueError, match="prefix"):
        write_shards([], tmp_path, AudioConfig(), prefix="a.b")
    (tmp_path / "x.list").write_text("missing-000000.tar\n")
    with pytest.raises(FileNotFoundError, match="missing-000000.tar"):
        read_shard_list(tmp_path / "x.list")


# Hostile and careless input (issue 19)

def folder_snapshot(directory):
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def run_command(argv, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["shards", *argv])
    code = args.func(args)
    return code, capsys.readouterr().err


def test_a_run_that_writes_nothing_leaves_the_folder_as_it_was(tmp_path, capsys):
    write_shards(make_entries(tmp_path, 4), tmp_path / "shards", AudioConfig(), shard_size=2, workers=1)
    before = folder_snapshot(tmp_path / "shards")
    assert "train-000001.tar" in before and "train.list" in before
    # another split sharded into the same folder without --prefix, all of whose audio is missing
    absent = [ManifestEntry(id=f"v{i}", audio=str(tmp_path / "absent.wav"), text="x", speaker="s") for i in range(3)]
    write_jsonl(absent, tmp_path / "valid.jsonl")
    code, err = run_command(["--manifest", str(tmp_path / "valid.jsonl"), "--out", str(tmp_path / "shards"),
                             "--workers", "1"], capsys)
    assert code == 2 and err.startswith("error: ") and "valid.jsonl" in err and "missing_audio=3" in err
    assert folder_snapshot(tmp_path / "shards") == before


@pytest.mark.parametrize("workers", [1, 2])  # forked workers inherit the patched function
def test_a_crash_keeps_the_earlier_set_and_leaves_no_partial_file(tmp_path, monkeypatch, workers):
    write_shards(make_entries(tmp_path, 4), tmp_path / "shards", AudioConfig(), shard_size=2, workers=1)
    before = folder_snapshot(tmp_path / "shards")
    encode = shards_module._encode_entry

    def crash_on_the_fourth(entry, *args):
        if entry.id == "utt3":
            raise RuntimeError("disk on fire")
        return encode(entry, *args)

    monkeypatch.setattr(shards_module, "_encode_entry", crash_on_the_fourth)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(make_entries(tmp_path, 6), tmp_path / "shards", AudioConfig(), shard_size=2, workers=workers)
    assert folder_snapshot(tmp_path / "shards") == before  # the other new shards were written, but not swapped in


def test_a_prefix_that_is_a_pattern_is_refused(tmp_path):
    write_shards(make_entries(tmp_path, 2), tmp_path / "shards", AudioConfig(), workers=1)
    for prefix in ("*", "t[r]ain", "a b"):
        with pytest.raises(ValueError, match="prefix"):
            write_shards(make_entries(tmp_path, 1), tmp_path / "shards", AudioConfig(), prefix=prefix, workers=1)
    assert (tmp_path / "shards" / "train-000000.tar").is_file()


def test_ids_that_are_paths_are_skipped_and_never_become_member_names(tmp_path):
    good = make_entries(tmp_path, 1)
    bad = [ManifestEntry(id=utt, audio=good[0].audio, text="a path", speaker="s")
           for utt in ("a/b", "/etc/passwd", "\\evil", "..", "new\nline", "tab\tid")]
    stats = write_shards(good + bad, tmp_path / "shards", AudioConfig(), workers=1)
    assert stats.utterances == 1 and stats.skipped == {"invalid_id": 6}
    assert set(tar_members(stats.shards[0])) == {"utt0.json", "utt0.audio.flac"}


def test_a_wav_cut_mid_data_is_skipped_as_truncated(tmp_path):
    good = make_entries(tmp_path, 1)
    whole = (tmp_path / "u0.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(whole[:len(whole) // 2])
    cut = ManifestEntry(id="cut", audio=str(tmp_path / "cut.wav"), text="Half of it.", speaker="s")
    stats = write_shards(good + [cut], tmp_path / "shards", AudioConfig(), workers=1)
    assert stats.utterances == 1 and stats.skipped == {"truncated": 1}
    assert stats.rejected[0]["id"] == "cut" and "cut.wav" in stats.rejected[0]["detail"]


def test_overlong_audio_is_judged_by_its_header(tmp_path, monkeypatch):
    # One second of FLAC whose header claims an hour: refused before it is decoded, not cut to what is there.
    buffer = io.BytesIO()
    sf.write(buffer, np.sin(np.arange(8000) / 10).astype(np.float32) * 0.3, 8000, format="FLAC")
    data = bytearray(buffer.getvalue())
    packed = int.from_bytes(data[18:26], "big")  # STREAMINFO: rate, channels, bits, 36-bit sample count
    data[18:26] = ((packed >> 36 << 36) | 3600 * 8000).to_bytes(8, "big")
    (tmp_path / "hour.flac").write_bytes(bytes(data))
    entry = ManifestEntry(id="hour", audio=str(tmp_path / "hour.flac"), text="An hour, it says.", speaker="s")
    stats = write_shards(make_entries(tmp_path, 1) + [entry], tmp_path / "shards", AudioConfig(), workers=1)
    assert stats.skipped == {"too_long": 1} and "3600" in stats.rejected[0]["detail"]


TEXTS = ["Hello there.", "?!...", "...", "--", "\u00bf?", "(  )", "42", "A"]


def test_the_writer_accepts_exactly_the_texts_training_accepts(tmp_path):
    audio = make_entries(tmp_path, 1)[0].audio
    entries = [ManifestEntry(id=f"t{i}", audio=audio, text=text, speaker="s") for i, text in enumerate(TEXTS)]
    stats = write_shards(entries, tmp_path / "shards", AudioConfig(), workers=1)
    written = {name.partition(".")[0] for name in tar_members(stats.shards[0])}
    featurizer = SampleFeaturizer(AudioConfig(), PhonemeTokenizer(), SampleFilter(0.0, 100.0))
    trained = set()
    for i, text in enumerate(TEXTS):
        meta = {"text": text, "speaker": "s", "language": "en"}
        try:
            featurizer({"__key__": f"t{i}", "json": json.dumps(meta).encode(), "audio.flac": encode_flac(
                np.sin(np.arange(16000) / 10).astype(np.float32) * 0.3, 16000)})
            trained.add(f"t{i}")
        except SampleRejected as rejection:
            assert rejection.reason == "empty_text"
    assert written == trained and {"t0", "t6", "t7"} <= written and "t1" not in written
    assert stats.skipped == {"empty_text": len(TEXTS) - len(written)}


def test_command_line_input_problems_are_one_line_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "out"), "--workers", "1"]
    code, err = run_command(["--manifest", str(tmp_path / "nope.jsonl"), *out], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'nope.jsonl'}: does not exist\n"
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "audio": "a.wav", "text": "t", "speaker": "s"}\n{oops\n')
    code, err = run_command(["--manifest", str(tmp_path / "bad.jsonl"), *out], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'bad.jsonl'}:2: invalid JSON")
    (tmp_path / "path.jsonl").write_text('{"id": "../../x", "audio": "a.wav", "text": "t", "speaker": "s"}\n')
    code, err = run_command(["--manifest", str(tmp_path / "path.jsonl"), *out], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'path.jsonl'}:1: id '../../x'")
    write_jsonl(make_entries(tmp_path, 1), tmp_path / "m.jsonl")
    code, err = run_command(["--manifest", str(tmp_path / "m.jsonl"), "--shard-size", "0", *out], capsys)
    assert code == 2 and err.startswith("error: ") and "shard" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_empty_transcript_is_skipped_and_counted_not_fatal(tmp_path, capsys):
    entries = make_entries(tmp_path, 3)
    entries[1].text = ""
    write_jsonl(entries, tmp_path / "m.jsonl")
    (tmp_path / "lj" / "wavs").mkdir(parents=True)
    for entry in entries:
        (tmp_path / "lj" / "wavs" / f"{entry.id}.wav").write_bytes(Path(entry.audio).read_bytes())
    (tmp_path / "lj" / "metadata.csv").write_text("".join(f"{e.id}|{e.text}|\n" for e in entries))
    for manifest in (tmp_path / "m.jsonl", tmp_path / "lj"):
        code, _ = run_command(["--manifest", str(manifest), "--out", str(tmp_path / manifest.stem), "--workers", "1"],
                              capsys)
        saved = json.loads((tmp_path / manifest.stem / "train.stats.json").read_text())
        assert code == 0 and saved["utterances"] == 2 and saved["skipped"] == {"empty_text": 1}
