import io
import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from e2e_tts.audio import AudioConfig, MelSpectrogram, encode_flac, load_audio
from e2e_tts.data.loader import (DataConfig, DataError, SpeechDataLoader, collate, dynamic_batches, resolve_rank)
from e2e_tts.data.manifest import ManifestEntry
from e2e_tts.data.shards import read_shard_list, write_shards
from e2e_tts.text import ByteTokenizer, normalize_text

AUDIO = AudioConfig()  # 16 kHz, hop 320: 50 mel frames per second
NUM_SAMPLES = 48


def seconds_of(i):
    return round(0.4 + 0.1 * (i * 7 % 12), 2)


def text_of(i):
    return f"utterance {i}"


def tone(seconds, freq=200.0, rate=16000):
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)



@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """8 shards of 6 utterances, 0.4 s to 1.5 s long."""
    root = tmp_path_factory.mktemp("corpus")
    entries = []
    for i in range(NUM_SAMPLES):
        path = root / f"u{i}.wav"
        sf.write(path, tone(seconds_of(i), 120.0 + 15 * i), 16000)
        entries.append(ManifestEntry(id=f"utt{i:02d}", audio=str(path), text=text_of(i), speaker=f"s{i % 4}"))
    write_shards(entries, root / "shards", AUDIO, shard_size=6, workers=2)
    return str(root / "shards" / "train.list")


def config(shard_list, **overrides):
    settings = dict(shards=[shard_list], num_workers=2, sort_buffer=10, shuffle_buffer=8, max_frames=240,
                    max_samples=5, max_duration=2.0, seed=1, max_error_fraction=0.0)
    settings.update(overrides)
    return DataConfig(**settings)


def make_loader(cfg, rank=0, world_size=1):
    return SpeechDataLoader(cfg, AUDIO, ByteTokenizer(), rank=rank, world_size=world_size)


def key_batches(loader, limit=None):
    batches = []
    for batch in loader:
        batches.append(batch["keys"])
        if limit is not None and len(batches) == limit:
            break
    return batches


def test_exact_epoch_over_two_ranks_and_two_workers_yields_every_sample_once(shards):
    keys = []
    for rank in range(2):
        with pytest.warns(UserWarning, match="resampled"):
            loader = make_loader(config(shards), rank=rank, world_size=2)
        keys += [key for batch in key_batches(loader) for key in batch]
        assert loader.epoch == 1 and loader.skipped == Counter()
    assert sorted(keys) == [f"utt{i:02d}" for i in range(NUM_SAMPLES)]


def test_batches_respect_the_frame_budget_and_carry_consistent_features(shards):
    loader = make_loader(config(shards, return_wav=True))
    mel_of = MelSpectrogram(AUDIO)
    all_shards = read_shard_list(shards)
    audio = {}
    for sample in wds.DataPipeline(wds.SimpleShardList(all_shards), wds.tarfile_to_samples()):
        audio[sample["__key__"]] = load_audio(sample["audio.flac"])[0]
    sizes = []
    for batch in loader:
        size, frames, n_mels = batch["mel"].shape
        sizes.append(size)
        assert size * frames <= 240 and size <= 5
        assert torch.equal(batch["mel_mask"].sum(1), batch["mel_lengths"]) and frames == batch["mel_lengths"].max()
        assert torch.equal(batch["wav_lengths"] // AUDIO.hop_length, batch["mel_lengths"])
        assert batch["wav"].shape == (size, int(batch["wav_lengths"].max()))
        assert torch.equal(batch["text_mask"].sum(1), batch["text_lengths"])
        assert len(batch["speaker"]) == len(batch["texts"]) == len(batch["durations"]) == size
        for row, key in enumerate(batch["keys"]):
            length = int(batch["mel_lengths"][row])
            expected = mel_of(torch.from_numpy(audio[key]))[0]
            assert torch.allclose(batch["mel"][row, :length], expected, atol=1e-5)
            assert torch.all(batch["mel"][row, length:] == np.log(1e-5))
            assert torch.equal(batch["wav"][row, :len(audio[key])], torch.from_numpy(audio[key]))
            ids = batch["text_ids"][row, :int(batch["text_lengths"][row])].tolist()
            assert batch["texts"][row] == text_of(int(key[3:]))  # as written; the ids are of the normalised text
            assert bytes(ids).decode() == normalize_text(batch["texts"][row]) != batch["texts"][row]
            assert torch.all(batch["text_ids"][row, int(batch["text_lengths"][row]):] == 0)
    assert sum(sizes) == NUM_SAMPLES and max(sizes) > 1


def test_dynamic_batches_fill_the_budget_greedily():
    lengths = [50, 10, 30, 10, 60, 20]
    keys = [f"k{i}" for i in range(6)]
    batches = dynamic_batches(lengths, keys, max_frames=60, max_samples=2)
    assert batches == [[1, 3], [5, 2], [0], [4]]  # (10,10), (20,30), (50), (60): padded cost <= 60, <= 2 each
    assert dynamic_batches(lengths, keys, max_frames=1000, max_samples=4) == [[1, 3, 5, 2], [0, 4]]
    with pytest.raises(ValueError, match="max_frames"):
        dynamic_batches([70], ["long"], max_frames=60, max_samples=2)


def test_collate_pads_and_masks():
    samples = [dict(key=f"k{n}", mel=torch.randn(n, 3), text_ids=torch.arange(1, n + 2), wav=torch.randn(n * 4),
                    duration=n / 10, text=f"t{n}", speaker="s", language="en", emotion=None, quality=None)
               for n in (2, 5)]
    batch = collate(samples, return_wav=True)
    assert batch["mel"].shape == (2, 5, 3) and batch["text_ids"].shape == (2, 6) and batch["wav"].shape == (2, 20)
    assert batch["mel_mask"].tolist() == [[True, True, False, False, False], [True] * 5]
    assert batch["text_ids"][0].tolist() == [1, 2, 3, 0, 0, 0] and batch["text_mask"][0].sum() == 3
    assert torch.equal(batch["mel"][1], samples[1]["mel"]) and batch["wav_lengths"].tolist() == [8, 20]
    assert "wav" not in collate(samples)


def test_same_seed_same_batches_other_seed_other_order(shards):
    first = key_batches(make_loader(config(shards)))
    assert key_batches(make_loader(config(shards))) == first
    other = key_batches(make_loader(config(shards, seed=2)))
    assert other != first and sorted(sum(other, [])) == sorted(sum(first, []))


def test_each_epoch_is_shuffled_differently(shards):
    loader = make_loader(config(shards, num_workers=0))
    first, second = key_batches(loader), key_batches(loader)
    assert loader.epoch == 2 and first != second and sorted(sum(first, [])) == sorted(sum(second, []))


@pytest.mark.parametrize("stop_after", [1, 4, 7])
def test_resume_continues_exactly_where_the_checkpoint_was(shards, stop_after):
    cfg = config(shards, sort_buffer=12, max_frames=300, min_duration=0.55)
    uninterrupted = make_loader(cfg)
    full = key_batches(uninterrupted)
    assert len(full) > 8 and uninterrupted.skipped["duration_below_min"] > 0

    interrupted = make_loader(cfg)
    before = key_batches(interrupted, limit=stop_after)
    state = json.loads(json.dumps(interrupted.state_dict()))  # checkpoint client state is plain data
    resumed = make_loader(cfg)
    resumed.load_state_dict(state)
    after = key_batches(resumed)
    assert before + after == full
    keys = [key for batch in before + after for key in batch]
    assert len(keys) == len(set(keys)) == NUM_SAMPLES - uninterrupted.skipped["duration_below_min"]
    assert resumed.epoch == 1 and resumed.skipped == uninterrupted.skipped


def test_resume_in_resampled_mode_matches_the_uninterrupted_epoch(shards):
    cfg = config(shards, resampled=True, steps_per_epoch=9)
    loader = make_loader(cfg)
    full = [key_batches(loader), key_batches(loader)]
    assert [len(epoch) for epoch in full] == [9, 9] and full[0] != full[1]

    interrupted = make_loader(cfg)
    key_batches(interrupted)
    before = key_batches(interrupted, limit=5)
    resumed = make_loader(cfg)
    resumed.load_state_dict(interrupted.state_dict())
    assert before + key_batches(resumed) == full[1]


def test_resampled_mode_gives_every_rank_the_same_number_of_batches(tmp_path):
    # 3 shards of very different sizes for 2 ranks: exact passes would give the ranks different batch counts
    entries = []
    for i in range(13):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, tone(0.5), 16000)
        entries.append(ManifestEntry(id=f"u{i}", audio=str(path), text="hello", speaker="s"))
    write_shards(entries[:10], tmp_path / "big", AUDIO, shard_size=10, workers=1)
    write_shards(entries[10:], tmp_path / "small", AUDIO, shard_size=2, workers=1)
    lists = [str(tmp_path / "big" / "train.list"), str(tmp_path / "small" / "train.list")]
    exact_counts = []
    for rank in range(2):
        with pytest.warns(UserWarning):
            exact = make_loader(config(lists[0], shards=lists, num_workers=0, max_samples=1), rank, 2)
        exact_counts.append(len(key_batches(exact)))
    assert exact_counts[0] != exact_counts[1]  # the imbalance that would hang a collective

    for rank in range(2):
        loader = make_loader(config(lists[0], shards=lists, resampled=True, steps_per_epoch=7, max_samples=1),
                             rank, 2)
        assert [len(key_batches(loader)) for _ in range(2)] == [7, 7]


def test_resampled_stream_that_drops_everything_fails_instead_of_spinning(shards):
    loader = make_loader(config(shards, num_workers=0, resampled=True, steps_per_epoch=3, min_duration=1.9))
    with pytest.raises(DataError, match="in a row had no sample left"):
        key_batches(loader)


def test_exact_mode_needs_a_shard_for_every_worker_of_every_rank(shards):
    with pytest.raises(ValueError, match="world_size x num_workers = 2 x 8 = 16 shards"):
        make_loader(config(shards, num_workers=8), rank=0, world_size=2)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        make_loader(config(shards, resampled=True))
    with pytest.raises(ValueError, match="max_frames"):
        make_loader(config(shards, max_duration=None))


def test_resume_refuses_a_changed_stream(shards):
    state = make_loader(config(shards)).state_dict()
    with pytest.raises(ValueError, match="num_workers: saved 2 now 1"):
        make_loader(config(shards, num_workers=1)).load_state_dict(state)


def write_hand_made_shard(path, first=()):
    """Two good samples and seven broken ones; the keys in ``first`` are written first."""
    good = tone(0.8)
    samples = [
        ("good1", {"audio.flac": encode_flac(good, 16000), "json": {"text": "one", "speaker": "a", "language": "en"}}),
        ("corrupt", {"audio.flac": b"fLaC" + bytes(300), "json": {"text": "two", "speaker": "a", "language": "en"}}),
        ("nojson", {"audio.flac": encode_flac(good, 16000)}),
        ("nan", {"audio.wav": _float_wav(np.where(np.arange(8000) == 5, np.nan, 0.1)),
                 "json": {"text": "three", "speaker": "a", "language": "en"}}),
        ("empty", {"audio.flac": encode_flac(good, 16000), "json": {"text": "", "speaker": "a", "language": "en"}}),
        ("short", {"audio.flac": encode_flac(tone(0.1), 16000),
                   "json": {"text": "four", "speaker": "a", "language": "en"}}),
        ("long", {"audio.flac": encode_flac(good, 16000),  # the declared duration is enough to drop it
                  "json": {"text": "five", "speaker": "a", "language": "en", "duration": 60.0}}),
        ("undeclared_long", {"audio.flac": encode_flac(tone(21.0), 16000),  # found out after decoding
                             "json": {"text": "seven", "speaker": "a", "language": "en"}}),
        ("good2", {"audio.flac": encode_flac(good, 16000), "json": {"text": "six", "speaker": "b", "language": "en"}}),
    ]
    samples.sort(key=lambda sample: sample[0] not in first)
    with wds.TarWriter(str(path)) as writer:
        for key, members in samples:
            writer.write({"__key__": key, **members})


def _float_wav(samples):
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), 16000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_broken_samples_inside_a_shard_are_counted_by_reason(tmp_path):
    write_hand_made_shard(tmp_path / "hand.tar")
    cfg = DataConfig(shards=[str(tmp_path / "hand.tar")], num_workers=0, max_error_fraction=1.0)
    loader = make_loader(cfg)
    keys = [key for batch in key_batches(loader) for key in batch]
    assert sorted(keys) == ["good1", "good2"]
    assert loader.skipped == {"unreadable": 1, "missing_json": 1, "nan_or_inf": 1, "empty_text": 1, "too_short": 1,
                              "duration_above_max": 1, "too_long": 1}

    strict = make_loader(DataConfig(shards=[str(tmp_path / "hand.tar")], num_workers=0))
    with pytest.raises(DataError, match="4 of 9 samples were broken"):
        key_batches(strict)


def test_drops_after_the_last_batch_of_a_worker_are_reported(tmp_path):
    write_hand_made_shard(tmp_path / "hand.tar", first=("good1", "good2"))
    # unshuffled, chunks of 2: one batch from the first chunk, then four chunks with nothing to batch
    cfg = DataConfig(shards=[str(tmp_path / "hand.tar")], num_workers=1, shuffle_buffer=0, sort_buffer=2,
                     max_error_fraction=1.0)
    loader = make_loader(cfg)
    assert key_batches(loader) == [["good1", "good2"]]
    assert sum(loader.skipped.values()) == 7


def test_a_truncated_shard_is_counted_and_its_readable_samples_are_kept(shards, tmp_path):
    data = open(read_shard_list(shards)[0], "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) // 2])
    loader = make_loader(DataConfig(shards=[str(tmp_path / "cut.tar")], num_workers=0, max_error_fraction=1.0))
    keys = [key for batch in key_batches(loader) for key in batch]
    assert 0 < len(keys) < 6 and loader.skipped["shard_read_error"] == 1


def test_duration_and_text_filters_count_what_they_drop(shards):
    loader = make_loader(config(shards, min_duration=0.75, max_duration=1.2, max_text_length=14))
    kept = sorted(key for batch in key_batches(loader) for key in batch)
    too_short = [i for i in range(NUM_SAMPLES) if seconds_of(i) < 0.75]
    too_long = [i for i in range(NUM_SAMPLES) if seconds_of(i) > 1.2]
    wordy = [i for i in range(NUM_SAMPLES) if len(normalize_text(text_of(i))) > 14]
    expected = [f"utt{i:02d}" for i in range(NUM_SAMPLES) if i not in too_short + too_long + wordy]
    assert kept == expected and 0 < len(expected) < NUM_SAMPLES
    # durations are checked first (from the metadata), then the text
    assert loader.skipped == {"duration_below_min": len(too_short), "duration_above_max": len(too_long),
                              "text_above_max_length": len(set(wordy) - set(too_short) - set(too_long))}


def test_rank_comes_from_arguments_or_environment(monkeypatch):
    # Other tests may have started a process group in this process; the environment is the fallback without one.
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resolve_rank() == (3, 4)
    assert resolve_rank(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="both"):
        resolve_rank(rank=1)
    with pytest.raises(ValueError, match="rank must be"):
        resolve_rank(2, 2)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_epoch_with_no_batch_is_an_error_naming_the_filters(shards, num_workers):
    """Every utterance is longer than max_duration: the loop used to start empty epochs forever."""
    loader = make_loader(config(shards, num_workers=num_workers, min_duration=0.1, max_duration=0.3))
    with pytest.raises(DataError) as err:
        key_batches(loader)
    message = str(err.value)
    assert f"all {NUM_SAMPLES} samples read were dropped: duration_above_max {NUM_SAMPLES} (max_duration=0.3)" \
        in message
    assert "epoch 0 (rank 0) has no batch" in message and shards in message
