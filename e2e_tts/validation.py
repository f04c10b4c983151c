"""Validation inside the training loop: the stage's objective on held-out shards, without updates.

With ``data.valid_shards`` set, the loop runs the objective in eval mode over those shards every
``engine.valid_every`` updates and after the last, and logs the utterance-weighted mean of each metric the
objective reports as ``valid/<name>`` (metrics.jsonl and TensorBoard). The multitask objective adds, in eval
mode, the LLM's accuracy behind a same-speaker prompt, the layout synthesis uses.

Every pass draws its randomness (flow noise and time, Gumbel noise, rollouts) from the same fixed seed inside a
forked RNG: successive passes see the same noise, so their curve moves only with the weights, and training's own
random stream is untouched, so a run trains and resumes exactly as it would without validation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from e2e_tts.audio import AudioConfig
from e2e_tts.data.loader import DataConfig, SpeechDataLoader
from e2e_tts.text import TextTokenizer

PREFIX = "valid/"


class Validator:
    """One pass over the validation shards per call.

    Every rank reads all of them in the same order: validation sets are small, and identical forward passes
    on every rank keep ZeRO-3's parameter gathers in step.

    Args:
        data: the stage's data settings; ``valid_shards`` are read, with its batching and filters, unshuffled.
        audio: sample rate and mel analysis.
        tokenizer: the system's text tokenizer.
        seed: seed of every pass's randomness.
        device: where the forward passes run (its RNG is forked too when it is a GPU).
    Raises:
        ValueError: ``data.valid_shards`` is empty.
    """

    def __init__(self, data: DataConfig, audio: AudioConfig, tokenizer: TextTokenizer, seed: int,
                 device: torch.device):
        if not data.valid_shards:
            raise ValueError("no validation shards: set data.valid_shards")
        config = dataclasses.replace(data, shards=list(data.valid_shards), shuffle_buffer=0, num_workers=0,
                                     resampled=False, steps_per_epoch=None)
        self.loader = SpeechDataLoader(config, audio, tokenizer, rank=0, world_size=1)
        self.seed = seed
        self.devices = [device.index or 0] if device.type == "cuda" else []

    def run(self, evaluate: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, float]:
        """Means over the validation set of the metrics ``evaluate(batch)`` returns, weighted by utterances.

        Returns:
            ``{"valid/<name>": mean}`` plus ``valid/utterances`` (how many were scored) and ``valid/skipped``
            (how many the loader dropped, by its filters or as broken).
        """
        self.loader.set_epoch(0)
        skipped_before = sum(self.loader.skipped.values())
        sums: dict[str, float] = {}
        weights: dict[str, int] = {}  # per metric: an objective may report some metrics only for some batches
        utterances = 0
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(self.seed)
            for batch in self.loader:
                count = len(batch["keys"])
                utterances += count
                for name, value in evaluate(batch).items():
                    sums[name] = sums.get(name, 0.0) + value * count
                    weights[name] = weights.get(name, 0) + count
        means = {PREFIX + name: total / weights[name] for name, total in sums.items()}
        means[PREFIX + "utterances"] = utterances
        means[PREFIX + "skipped"] = sum(self.loader.skipped.values()) - skipped_before
        return means
