"""Streaming, rank-safe, deterministic and resumable batches from WebDataset shards.

Each data-loader worker runs its own copy of this webdataset pipeline::

    exact:     shard list -> seeded per-epoch shard shuffle -> split by rank -> split by worker
    resampled: shard list -> shards drawn with replacement, seeded per (epoch, rank, worker)
      -> tar expansion -> seeded sample shuffle buffer -> skip the samples a checkpoint already consumed
      -> chunks of ``sort_buffer`` samples -> decode + validate + features + filters (each drop counted)
      -> sort by length, dynamic batches under the frame budget, seeded batch order -> padding/collation

Epochs. In **exact** mode (``resampled=False``) an epoch is one pass in which every sample of every shard is
read exactly once across all ranks and workers (each rank/worker gets whole shards, so there must be at least
``world_size * num_workers`` shards). Ranks then see different numbers of batches, which would hang a
collective at the end of the epoch (webdataset #188/#225): use exact mode for one process or for evaluation.
In **resampled** mode every (rank, worker) draws shards with replacement and an epoch is exactly
``steps_per_epoch`` batches on every rank, whatever the shard counts or sizes, so no rank can run out while
another waits in an all-reduce (webdataset's ``with_epoch``, applied per worker with that worker's share).

Determinism. Everything random is seeded from ``(seed, epoch, rank, worker)``, and the torch DataLoader hands
out worker outputs round-robin, so a given seed, world size and worker count always give the same batches in
the same order.

Position and resume. A worker's stream for an epoch is a fixed sequence of raw samples (after the shuffle
buffer), cut into chunks of ``sort_buffer`` samples; a chunk's batches depend only on that chunk. Every batch
therefore carries a cursor ``(raw_skip, batch_skip)``: the raw samples before the start of its chunk (or
after its end, for a chunk's last batch) and the batches of that chunk already delivered. The loader keeps
the cursor of the last batch it handed out from each worker plus which worker comes next in the round-robin
(:meth:`SpeechDataLoader.state_dict`). On resume each worker re-reads its stream, drops the first
``raw_skip`` samples before decoding anything (only tar bytes are read), rebuilds the one partly consumed
chunk and drops its first ``batch_skip`` batches; the DataLoader's workers are rotated so that the round-robin
continues with the right worker. The resumed run yields exactly the batches the uninterrupted run would have
yielded after the checkpoint: nothing repeated, nothing skipped.

Skipped samples. Workers are other processes, so each batch carries the counts of samples its worker
dropped since its previous batch (by reason); a worker whose stream ends with uncounted drops sends them in a
batch-less message. The loader adds them up (:attr:`SpeechDataLoader.skipped`) and, at the end of an epoch,
raises :class:`DataError` if broken samples (not filtered ones) exceed ``max_error_fraction``, or if the epoch
yielded no batch at all (every sample filtered or broken: the next epoch would be empty too), naming the drops
by reason and the filter settings behind them.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from e2e_tts.audio import LOG_FLOOR, AudioConfig
from e2e_tts.checks import FieldError, at_least, positive, within
from e2e_tts.data.features import ERROR_REASONS, SampleFeaturizer, SampleFilter, SampleRejected
from e2e_tts.data.shards import read_shard_list
from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.text import TextTokenizer

logger = logging.getLogger(__name__)

MEL_PAD_VALUE = math.log(LOG_FLOOR)  # padded mel frames read as silence
TEXT_PAD_ID = 0  # padded text positions; text_mask tells them from a real id 0
# Drops that mean broken data, as opposed to the duration/text filters the config chose.
BROKEN_DATA_REASONS = ERROR_REASONS | {"shard_read_error"}
MAX_EMPTY_CHUNKS = 100  # resampled streams never end: give up when this many chunks in a row are all dropped


@dataclass
class DataConfig:
    """Where the shards are and how they are streamed and batched (defaults: the tiny CPU recipe).

    Attributes:
        shards: shard paths and/or ``.list`` files (one shard path per line, see ``read_shard_list``).
        valid_shards: held-out shards the training loop validates on (``e2e_tts.validation``); not read by
            this loader.
        max_frames: mel-frame budget of a batch: padded length x batch size.
        max_samples: most utterances in a batch.
        sort_buffer: raw samples sorted together by length before batching (also the resume granularity).
        shuffle_buffer: samples in the shuffle buffer (0 or 1: no sample shuffling).
        num_workers: data-loader worker processes (0: in the training process).
        prefetch_factor: batches each worker prepares ahead.
        seed: seed of every shuffle; combined with the epoch, rank and worker.
        resampled: draw shards with replacement with a fixed number of batches per epoch (multi-rank training)
            instead of exact passes.
        steps_per_epoch: batches per rank and epoch; required with ``resampled``, not allowed without.
        min_duration: shortest utterance kept, seconds (``None``: ``AudioConfig.min_duration``).
        max_duration: longest utterance kept, seconds (``None``: ``AudioConfig.max_duration``).
        max_text_length: most text ids kept (``None``: no bound).
        return_wav: also return padded waveforms (the vocoder needs them).
        max_error_fraction: largest tolerated fraction of broken samples in an epoch (not counting the
            duration/text filters) before the loader raises.
    """

    shards: list[str] = field(default_factory=list)
    valid_shards: list[str] = field(default_factory=list)
    max_frames: int = 3000
    max_samples: int = 32
    sort_buffer: int = 256
    shuffle_buffer: int = 512
    num_workers: int = 1
    prefetch_factor: int = 2
    seed: int = 0
    resampled: bool = False
    steps_per_epoch: Optional[int] = None
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None
    max_text_length: Optional[int] = 512
    return_wav: bool = False
    max_error_fraction: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_frames", "max_samples", "sort_buffer", "prefetch_factor"):
            at_least(self, name, 1)
        for name in ("num_workers", "shuffle_buffer"):
            at_least(self, name, 0)
        if self.resampled and (self.steps_per_epoch is None or self.steps_per_epoch < 1):
            raise FieldError("resampled", "needs steps_per_epoch >= 1 (batches per rank and epoch)")
        if not self.resampled and self.steps_per_epoch is not None:
            raise FieldError("steps_per_epoch", "only applies with resampled=true; an exact epoch is one pass over "
                                                "the shards")
        for name in ("min_duration", "max_duration"):
            if getattr(self, name) is not None:
                positive(self, name)
        if self.max_text_length is not None:
            at_least(self, "max_text_length", 1)
        within(self, "max_error_fraction", 0, 1)


PRESETS: dict[str, DataConfig] = {
    "tiny": DataConfig(),
    # Per GPU: 4 min of 50 Hz mel per batch, 8 workers, fixed-length epochs so that ranks stay in step.
    "paper": DataConfig(max_frames=12000, max_samples=128, sort_buffer=1000, shuffle_buffer=4000, num_workers=8,
                        prefetch_factor=4, resampled=True, steps_per_epoch=10000, max_text_length=1024),
}


class DataError(RuntimeError):
    """Too many samples of the data are broken, or none is left to batch."""


def resolve_shards(sources: Sequence[str]) -> list[str]:
    """Shard paths from a mix of ``.tar`` paths and ``.list`` files, in the given order.

    Raises:
        FileNotFoundError: a shard or list does not exist.
        ValueError: ``sources`` names no shard at all.
    """
    if isinstance(sources, str):
        sources = [sources]
    shards = []
    for source in sources:
        if str(source).endswith(".list"):
            shards.extend(read_shard_list(source))
        elif os.path.isfile(source):
            shards.append(str(source))
        else:
            raise FileNotFoundError(f"shard not found: {source}")
    if not shards:
        raise ValueError(f"no shards in DataConfig.shards={list(sources)!r}")
    return shards


def resolve_rank(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """Rank and world size: as given, else from torch.distributed when initialised, else from the
    ``RANK``/``WORLD_SIZE`` environment, else ``(0, 1)``."""
    if (rank is None) != (world_size is None):
        raise ValueError(f"pass both rank and world_size or neither, got rank={rank} world_size={world_size}")
    if rank is None:
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
    return rank, world_size


def dynamic_batches(lengths: Sequence[int], keys: Sequence[str], max_frames: int,
                    max_samples: int) -> list[list[int]]:
    """Groups samples of similar length so that padded length x batch size stays within the budget.

    Args:
        lengths: mel frames per sample.
        keys: sample keys; they break ties so that the grouping never depends on arrival order.
        max_frames: budget of ``max(lengths in batch) * len(batch)``.
        max_samples: most samples per batch.
    Returns:
        batches of indices into ``lengths``, shortest first.
    Raises:
        ValueError: a single sample is longer than ``max_frames``.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (lengths[i], keys[i])):
        if lengths[index] > max_frames:
            raise ValueError(f"sample {keys[index]} has {lengths[index]} frames, more than max_frames={max_frames}")
        # Sorted ascending, so the newcomer sets the padded length of the batch it joins.
        if current and (lengths[index] * (len(current) + 1) > max_frames or len(current) >= max_samples):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def collate(samples: Sequence[dict[str, Any]], return_wav: bool = False) -> dict[str, Any]:
    """Pads featurized samples into a batch.

    Returns:
        ``mel`` ``(B, T, n_mels)`` (padding: log-silence), ``mel_mask`` ``(B, T)`` bool, ``mel_lengths`` ``(B,)``,
        ``text_ids`` ``(B, L)`` int64 (padding: 0), ``text_mask`` ``(B, L)`` bool, ``text_lengths`` ``(B,)``,
        ``durations`` ``(B,)`` seconds, the lists ``keys``, ``texts`` (as written; ``text_ids`` are of the
        normalised text), ``speaker``, ``language``, ``emotion``, ``quality``; with ``return_wav`` also
        ``wav`` ``(B, N)`` (padding: 0) and ``wav_lengths`` ``(B,)``.
    """
    mel_lengths = torch.tensor([s["mel"].shape[0] for s in samples], dtype=torch.long)
    text_lengths = torch.tensor([len(s["text_ids"]) for s in samples], dtype=torch.long)
    mel = torch.full((len(samples), int(mel_lengths.max()), samples[0]["mel"].shape[1]), MEL_PAD_VALUE)
    text_ids = torch.full((len(samples), int(text_lengths.max())), TEXT_PAD_ID, dtype=torch.long)
    for row, sample in enumerate(samples):
        mel[row, :mel_lengths[row]] = sample["mel"]
        text_ids[row, :text_lengths[row]] = sample["text_ids"]
    batch = {
        "mel": mel, "mel_mask": lengths_to_mask(mel_lengths), "mel_lengths": mel_lengths,
        "text_ids": text_ids, "text_mask": lengths_to_mask(text_lengths), "text_lengths": text_lengths,
        "durations": torch.tensor([s["duration"] for s in samples], dtype=torch.float32),
        "keys": [s["key"] for s in samples], "texts": [s["text"] for s in samples],
        **{name: [s[name] for s in samples] for name in ("speaker", "language", "emotion", "quality")},
    }
    if return_wav:
        wav_lengths = torch.tensor([len(s["wav"]) for s in samples], dtype=torch.long)
        wav = torch.zeros(len(samples), int(wav_lengths.max()))
        for row, sample in enumerate(samples):
            wav[row, :wav_lengths[row]] = sample["wav"]
        batch.update(wav=wav, wav_lengths=wav_lengths)
    return batch


# ----------------------------------------------------------------------------------------------------------------
# The per-worker pipeline
# ----------------------------------------------------------------------------------------------------------------

def _seed(*parts: Any) -> int:
    """A 63-bit seed from any parts, identical in every process (unlike ``hash`` of a string)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1


def _take_every(items: Iterable[Any], start: int, step: int) -> Iterator[Any]:
    """``split_by_node``/``split_by_worker`` with an explicit position instead of one read from the
    environment, so that ranks can be simulated and workers rotated on resume."""
    return islice(items, start, None, step)


def _skip_consumed(samples: Iterable[dict], count: int, skipped: Counter) -> Iterator[dict]:
    """Numbers a worker's samples and drops the first ``count`` unread (tar bytes only, no decoding)."""
    for index, sample in enumerate(samples):
        if index < count:
            if index == count - 1:
                skipped.clear()  # drops counted up to here reached the main process before the checkpoint
            continue
        sample["__index__"] = index
        yield sample


@dataclass
class _Chunk:
    """Consecutive raw samples ``[start, end)`` of a worker's stream, sorted and batched together."""

    start: int
    end: int
    samples: list[dict]
    batches: list[list[dict]] = field(default_factory=list)


def _chunked(samples: Iterable[dict], size: int) -> Iterator[_Chunk]:
    chunk: list[dict] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield _Chunk(chunk[0]["__index__"], chunk[-1]["__index__"] + 1, chunk)
            chunk = []
    if chunk:
        yield _Chunk(chunk[0]["__index__"], chunk[-1]["__index__"] + 1, chunk)


def _featurize(chunks: Iterable[_Chunk], featurizer: SampleFeaturizer, skipped: Counter) -> Iterator[_Chunk]:
    for chunk in chunks:
        kept = []
        for raw in chunk.samples:
            try:
                kept.append(featurizer(raw))
            except SampleRejected as rejection:
                skipped[rejection.reason] += 1
                level = logging.WARNING if rejection.reason in BROKEN_DATA_REASONS else logging.DEBUG
                logger.log(level, "skipped sample from %s: %s", raw.get("__url__"), rejection)
        chunk.samples = kept
        yield chunk


def _batch(chunks: Iterable[_Chunk], max_frames: int, max_samples: int, seed: int) -> Iterator[_Chunk]:
    for chunk in chunks:
        samples = chunk.samples
        groups = dynamic_batches([s["num_frames"] for s in samples], [s["key"] for s in samples], max_frames,
                                 max_samples)
        random.Random(_seed(seed, chunk.start)).shuffle(groups)  # no short-to-long ramp within a chunk
        chunk.batches = [[samples[i] for i in group] for group in groups]
        yield chunk


def _envelopes(chunks: Iterable[_Chunk], worker: int, cursor: tuple[int, int], skipped: Counter,
               return_wav: bool, max_empty_chunks: Optional[int] = None) -> Iterator[dict[str, Any]]:
    """Collated batches with their resume cursor and the drop counts since the previous message.

    Raises:
        DataError: ``max_empty_chunks`` chunks in a row gave no batch (an endless resampled stream would
            otherwise spin forever on data that is all dropped).
    """
    raw_skip, batch_skip = cursor
    end, empty_chunks = raw_skip, 0
    for chunk in chunks:
        empty_chunks = 0 if chunk.batches else empty_chunks + 1
        if max_empty_chunks is not None and empty_chunks >= max_empty_chunks:
            raise DataError(f"worker {worker}: {empty_chunks} chunks in a row had no sample left to batch; "
                            f"dropped so far: {dict(skipped)}")
        for index, samples in enumerate(chunk.batches):
            if chunk.start == raw_skip and index < batch_skip:
                skipped.clear()  # delivered before the checkpoint, like the batch itself
                continue
            last = index == len(chunk.batches) - 1
            position = (chunk.end, 0) if last else (chunk.start, index + 1)
            yield {"worker": worker, "cursor": position, "skipped": dict(skipped),
                   "batch": collate(samples, return_wav)}
            skipped.clear()
        end = chunk.end
    if skipped:
        yield {"worker": worker, "cursor": (end, 0), "skipped": dict(skipped), "batch": None}


def _expand_shards(shards: Iterable[dict], skipped: Counter) -> Iterator[dict]:
    """Tar expansion one shard at a time, so that a broken shard counts once and the next one is still read."""
    for shard in shards:
        try:
            yield from wds.tarfile_samples([shard])  # raises on the first error in this shard
        except Exception as error:  # whatever broke this shard, count it and go on with the next
            skipped["shard_read_error"] += 1
            logger.warning("error reading shard %s, rest of it skipped: %r", shard["url"], error)


class _WorkerStreams(IterableDataset):
    """The dataset a torch DataLoader runs: in each worker, that worker's pipeline from its cursor.

    Args:
        shards: all shard paths.
        config: the data settings.
        featurizer: per-sample step.
        rank, world_size: this process's place in the job.
        epoch: the epoch to stream.
        cursors: ``(raw_skip, batch_skip)`` per logical worker.
        first_worker: logical worker run by DataLoader worker 0 (the round-robin continues from it).
        budgets: batches per DataLoader worker (resampled mode), ``None`` in exact mode.
    """

    def __init__(self, shards: list[str], config: DataConfig, featurizer: SampleFeaturizer, rank: int,
                 world_size: int, epoch: int, cursors: list[tuple[int, int]], first_worker: int,
                 budgets: Optional[list[int]]):
        super().__init__()
        self.shards, self.config, self.featurizer = shards, config, featurizer
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.cursors, self.first_worker, self.budgets = cursors, first_worker, budgets

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if num_workers != len(self.cursors):
            raise RuntimeError(f"DataLoader runs {num_workers} workers, the stream state has {len(self.cursors)}")
        worker = (physical + self.first_worker) % num_workers
        budget = None if self.budgets is None else self.budgets[physical]
        if budget == 0:
            return iter(())
        cfg, skipped = self.config, Counter()
        stream_seed = _seed(cfg.seed, self.epoch, self.rank, worker)
        if cfg.resampled:
            source = [wds.ResampledShards(self.shards, seed=0, worker_seed=lambda: stream_seed, deterministic=True)]
        else:
            source = [wds.SimpleShardList(self.shards, seed=_seed(cfg.seed, self.epoch)),  # same order on all ranks
                      functools.partial(_take_every, start=self.rank, step=self.world_size),
                      functools.partial(_take_every, start=worker, step=num_workers)]
        shuffle = []
        if cfg.shuffle_buffer > 1:
            shuffle = [wds.shuffle(cfg.shuffle_buffer, cfg.shuffle_buffer, rng=random.Random(stream_seed))]
        pipeline = wds.DataPipeline(
            *source,
            functools.partial(_expand_shards, skipped=skipped),
            *shuffle,
            functools.partial(_skip_consumed, count=self.cursors[worker][0], skipped=skipped),
            functools.partial(_chunked, size=cfg.sort_buffer),
            functools.partial(_featurize, featurizer=self.featurizer, skipped=skipped),
            functools.partial(_batch, max_frames=cfg.max_frames, max_samples=cfg.max_samples, seed=stream_seed),
            functools.partial(_envelopes, worker=worker, cursor=self.cursors[worker], skipped=skipped,
                              return_wav=cfg.return_wav, max_empty_chunks=MAX_EMPTY_CHUNKS if cfg.resampled else None),
        )
        if budget is not None:
            pipeline = pipeline.with_epoch(nbatches=budget)  # counts this worker's batches
        return iter(pipeline)


def _unchanged(item: Any) -> Any:
    return item


# ----------------------------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------------------------

class SpeechDataLoader:
    """Padded batches of one rank, epoch by epoch, with a resumable position.

    ``for batch in loader`` yields the rest of the current epoch (all of it, unless resumed or interrupted)
    and then moves to the next epoch. See :func:`collate` for the batch layout and the module docstring for
    the modes, determinism and resume. DataLoader workers are started for each ``for`` (never persistent):
    the stream position they start from travels with them.

    Args:
        config: shards, batching and filters.
        audio_config: sample rate, mel analysis and audio acceptance bounds.
        tokenizer: text tokenizer (texts are normalised first).
        rank, world_size: this process's place; default from torch.distributed / ``RANK``, ``WORLD_SIZE``.
    Raises:
        ValueError: inconsistent settings, or too few shards for exact mode.
        FileNotFoundError: a shard or shard list is missing.
    """

    def __init__(self, config: DataConfig, audio_config: AudioConfig, tokenizer: TextTokenizer,
                 rank: Optional[int] = None, world_size: Optional[int] = None):
        self.config = config
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.shards = resolve_shards(config.shards)
        self.num_streams = max(1, config.num_workers)
        sample_filter = SampleFilter(
            min_duration=audio_config.min_duration if config.min_duration is None else config.min_duration,
            max_duration=audio_config.max_duration if config.max_duration is None else config.max_duration,
            max_text_length=config.max_text_length)
        self._check_config(audio_config, sample_filter)
        self.featurizer = SampleFeaturizer(audio_config, tokenizer, sample_filter, config.return_wav)
        self.skipped: Counter = Counter()  # all drops reported so far, by reason
        self._start_epoch(0)

    def _check_config(self, audio_config: AudioConfig, sample_filter: SampleFilter) -> None:
        cfg = self.config
        longest = math.ceil(min(sample_filter.max_duration, audio_config.max_duration) * audio_config.sample_rate
                            / audio_config.hop_length)
        if cfg.max_frames < longest:
            raise ValueError(f"DataConfig.max_frames={cfg.max_frames} cannot hold the longest accepted utterance "
                             f"({longest} frames); raise max_frames or lower max_duration")
        if not cfg.resampled:
            needed = self.world_size * self.num_streams
            if len(self.shards) < needed:
                raise ValueError(
                    f"exact-epoch mode needs at least world_size x num_workers = {self.world_size} x "
                    f"{self.num_streams} = {needed} shards so that every worker of every rank reads one, got "
                    f"{len(self.shards)}: write smaller shards, use fewer workers or set resampled=true")
            if self.world_size > 1:
                warnings.warn("exact-epoch mode with several ranks: ranks may get different numbers of batches, "
                              "which hangs collectives; train with resampled=true", stacklevel=3)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def steps_per_epoch(self) -> Optional[int]:
        """Batches per epoch on this rank (resampled mode), ``None`` in exact mode."""
        return self.config.steps_per_epoch if self.config.resampled else None

    def set_epoch(self, epoch: int) -> None:
        """Positions the loader at the start of ``epoch``."""
        self._start_epoch(epoch)

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._cursors = [(0, 0)] * self.num_streams
        self._next_worker = 0
        self._batches = 0  # batches of this epoch handed out
        self._samples = 0
        self._epoch_skipped: Counter = Counter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.config
        budgets = None
        if cfg.resampled:
            remaining = cfg.steps_per_epoch - self._batches
            budgets = [len(range(worker, remaining, self.num_streams)) for worker in range(self.num_streams)]
        streams = _WorkerStreams(self.shards, cfg, self.featurizer, self.rank, self.world_size, self._epoch,
                                 list(self._cursors), self._next_worker, budgets)
        # An own generator: the DataLoader's iterator would otherwise draw its base seed from the global torch
        # RNG, and a resumed run (which creates the iterator at another step) would see different noise.
        loader = DataLoader(streams, batch_size=None, collate_fn=_unchanged, num_workers=cfg.num_workers,
                            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
                            generator=torch.Generator().manual_seed(_seed(cfg.seed, self._epoch, self.rank)))
        for message in loader:
            worker = message["worker"]
            self._cursors[worker] = tuple(message["cursor"])
            self._next_worker = (worker + 1) % self.num_streams
            self.skipped.update(message["skipped"])
            self._epoch_skipped.update(message["skipped"])
            batch = message["batch"]
            if batch is not None:
                self._batches += 1
                self._samples += len(batch["keys"])
                yield batch
        if cfg.resampled and self._batches != cfg.steps_per_epoch:
            raise RuntimeError(f"epoch {self._epoch} ended after {self._batches} of {cfg.steps_per_epoch} batches")
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        errors = sum(count for reason, count in self._epoch_skipped.items() if reason in BROKEN_DATA_REASONS)
        seen = self._samples + sum(self._epoch_skipped.values())
        logger.info("epoch %d (rank %d): %d batches, %d samples, skipped %s", self._epoch, self.rank, self._batches,
                    self._samples, dict(self._epoch_skipped))
        epoch, fraction, dropped, empty = self._epoch, errors / max(seen, 1), self._epoch_skipped, not self._batches
        self._start_epoch(epoch + 1)
        if fraction > self.config.max_error_fraction:
            raise DataError(f"epoch {epoch}: {errors} of {seen} samples were broken ({fraction:.1%} > "
                            f"max_error_fraction={self.config.max_error_fraction:.1%}); skipped by reason: "
                            f"{dict(self.skipped)}")
        if empty:  # the next epoch would be empty too: training would loop over empty epochs forever
            sample_filter = self.featurizer.sample_filter
            settings = {"duration_below_min": f"min_duration={sample_filter.min_duration}",
                        "duration_above_max": f"max_duration={sample_filter.max_duration}",
                        "text_above_max_length": f"max_text_length={sample_filter.max_text_length}"}
            reasons = ", ".join(f"{reason} {count}" + (f" ({settings[reason]})" if reason in settings else "")
                                for reason, count in dropped.most_common())
            what = f"all {seen} samples read were dropped: {reasons}" if seen else "no sample was read"
            raise DataError(f"epoch {epoch} (rank {self.rank}) has no batch: {what}; shards: "
                            f"{list(self.config.shards)}")

    # -- checkpointing ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out, as plain Python values (checkpoint client state)."""
        return {"epoch": self._epoch, "batches": self._batches, "samples": self._samples,
                "cursors": [list(cursor) for cursor in self._cursors], "next_worker": self._next_worker,
                "skipped": dict(self.skipped), "epoch_skipped": dict(self._epoch_skipped),
                "stream": self._stream_signature()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from a :meth:`state_dict`; the next batch is the one that would have followed it.

        Raises:
            ValueError: the state was saved with settings that change the sample stream (seed, ranks,
                workers, shards, buffers, batching or filters), so that an exact continuation is impossible.
        """
        saved, current = state["stream"], self._stream_signature()
        changed = sorted(key for key in saved.keys() | current.keys() if saved.get(key) != current.get(key))
        if changed:
            details = ", ".join(f"{key}: saved {saved.get(key)!r} now {current.get(key)!r}" for key in changed)
            raise ValueError(f"cannot resume the data stream exactly, settings changed: {details}")
        self._epoch = int(state["epoch"])
        self._batches, self._samples = int(state["batches"]), int(state["samples"])
        self._cursors = [(int(raw), int(batches)) for raw, batches in state["cursors"]]
        self._next_worker = int(state["next_worker"])
        self.skipped = Counter(state["skipped"])
        self._epoch_skipped = Counter(state["epoch_skipped"])

    def _stream_signature(self) -> dict[str, Any]:
        """Everything that decides which batches come in which order."""
        cfg, featurizer = self.config, self.featurizer
        shard_names = "\n".join(os.path.basename(shard) for shard in self.shards)
        return {"rank": self.rank, "world_size": self.world_size, "num_workers": cfg.num_workers, "seed": cfg.seed,
                "resampled": cfg.resampled, "steps_per_epoch": cfg.steps_per_epoch, "sort_buffer": cfg.sort_buffer,
                "shuffle_buffer": cfg.shuffle_buffer, "max_frames": cfg.max_frames, "max_samples": cfg.max_samples,
                "min_duration": featurizer.sample_filter.min_duration,
                "max_duration": featurizer.sample_filter.max_duration, "max_text_length": cfg.max_text_length,
                "shards": hashlib.sha256(shard_names.encode()).hexdigest()[:16]}
