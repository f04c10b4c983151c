"""The one training loop (``e2e-tts train``), driven by a stage spec.

    e2e-tts train -c recipes/tiny/config.yaml -c stages/joint.yaml output_dir=exp/tiny/joint
    torchrun --nproc_per_node 2 -m e2e_tts.train -c ...  (or: deepspeed --num_gpus 2 --module e2e_tts.train -c ...)

What it does, in order:
 0. check the paths it will read (``stage.init_from``, ``data.shards``, ``data.valid_shards``: :func:`check_paths`);
 1. start torch.distributed through DeepSpeed (a lone process becomes rank 0 of 1);
 2. build the text tokenizer and the system, load the previous stage's export (``stage.init_from``: every file
    of it checked, a damaged one named, before any training step) and freeze what the stage does not train;
 3. wrap the stage's objective in the DeepSpeed engine; build the rank's data loader;
 4. resume from ``<output_dir>/checkpoints/latest`` if it exists (the newest complete checkpoint if that one is
    damaged): engine state, data position, RNG states; only then write ``<output_dir>/config.yaml``;
 5. step until ``stage.max_steps`` optimizer updates, logging every ``engine.log_every``, checkpointing
    every ``engine.save_every`` and, with ``data.valid_shards``, validating every ``engine.valid_every``
    (:mod:`e2e_tts.validation`);
 6. write a final checkpoint and the export (``<output_dir>/export``) that the next stage starts from
    (and, with ``engine.export_every``, intermediate exports in ``<output_dir>/exports/step_<N>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from e2e_tts.config import ConfigError, load_config, save_config, to_object
from e2e_tts.data.loader import DataError, SpeechDataLoader, resolve_shards
from e2e_tts.engine import (CheckpointError, TrainingEngine, capture_rng, consolidated_state_dict, restore_rng,
                            setup_distributed)
from e2e_tts.metrics import MetricsLogger
from e2e_tts.objectives import build_objective
from e2e_tts.system import MODULES, TTSSystem, read_trained
from e2e_tts.text import TextTokenizer, build_text_tokenizer
from e2e_tts.validation import Validator

logger = logging.getLogger("e2e_tts.train")

OBJECTIVE_PREFIX = "system."  # the system's keys inside the objective's state dict


def speakers_from_shards(sources: Sequence[str]) -> list[str]:
    """Speaker names from the ``<prefix>.stats.json`` that ``e2e-tts shards`` writes beside each ``.list``.

    Raises:
        FileNotFoundError: a source has no stats file (the speaker head must know every training speaker).
        ValueError: naming a stats file that is not such a record.
    """
    speakers: set[str] = set()
    for source in sources:
        stats = Path(source).with_suffix(".stats.json")
        if not (source.endswith(".list") and stats.is_file()):
            raise FileNotFoundError(f"no shard statistics for {source}: give data.shards as the .list files written "
                                    f"by `e2e-tts shards` (their .stats.json names the speakers)")
        try:
            per_speaker = json.loads(stats.read_text(encoding="utf-8"))["per_speaker"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{stats}: not the shard statistics `e2e-tts shards` writes: {err!r}") from None
        if not isinstance(per_speaker, dict):
            raise ValueError(f"{stats}: per_speaker is not a mapping of speaker names")
        speakers.update(per_speaker)
    return sorted(speakers)


def check_paths(config: Any) -> None:
    """Refuses, naming the key and the path, a path of the config that training reads and cannot: an
    ``stage.init_from`` that is no folder, a shard or ``.list`` of ``data.shards`` / ``data.valid_shards`` that
    does not exist (a list naming a missing shard included), and without ``init_from`` shards without the
    statistics that name the speakers. Cheap (no shard is opened), so a launcher fails here, before DeepSpeed
    starts, instead of once training starts.

    This belongs to training, not to :func:`e2e_tts.config.load_config`: ``e2e-tts config`` prints and saves
    configs before their data or the previous stage's export exist (a recipe's later stages name an export that
    an earlier one has yet to write), and an export's ``config.yaml`` keeps the paths of the run that wrote it,
    which ``synth`` and ``eval`` load on other machines where those paths do not exist.

    Raises:
        ConfigError: naming the key and the path.
    """
    init_from = config.stage.init_from
    if init_from and not Path(init_from).is_dir():
        problem = "is not a folder" if Path(init_from).exists() else "does not exist"
        raise ConfigError(f"stage.init_from: {init_from} {problem}: it names the export of the previous stage")
    for key in ("shards", "valid_shards"):
        sources = [str(source) for source in config.data[key]]
        if key == "valid_shards" and not sources:
            continue  # no validation
        try:
            resolve_shards(sources)
            if key == "shards" and not init_from:
                speakers_from_shards(sources)
        except (OSError, ValueError) as err:  # UnicodeDecodeError of a list is a ValueError
            raise ConfigError(f"data.{key}: {err}") from None


class InitExportError(ValueError):
    """The export ``stage.init_from`` names cannot be trained from; the message names the file and what is wrong."""


class _ExportFiles(TTSSystem):
    """What :meth:`TTSSystem.from_export` reads of an export besides the weights, without building the modules:
    its ``config.yaml``, speaker list and text tokenizer, through the same readers, which name a damaged file.
    A stage builds its own modules from ``config.model`` (their sizes may differ, see ``stage.init_modules``) and
    loads the weights into those with :meth:`TTSSystem.load_modules`."""

    def __init__(self, models: Any, text_tokenizer: TextTokenizer, speakers: Sequence[str], audio: Any = None,
                 llm_decoder_config: Any = None):
        nn.Module.__init__(self)
        self.text_tokenizer, self.speakers = text_tokenizer, list(speakers)

    def load_modules(self, directory: str | Path, modules: Sequence[str] = MODULES) -> None:
        """Nothing: the stage's own system loads the weights."""


def export_problem(err: Exception) -> InitExportError:
    """``err`` of reading the ``stage.init_from`` export as the error ``e2e-tts train`` reports: ``<file>: <what>``."""
    if isinstance(err, OSError) and err.filename:  # e.g. a missing speakers.json, read without a check
        return InitExportError(f"{err.filename}: {err.strerror or err}")
    return InitExportError(str(err))


def read_init_export(directory: Path) -> tuple[TextTokenizer, list[str]]:
    """The text tokenizer and speakers of the export a stage starts from, once every file of it but the weights
    (which :func:`build_system` loads) is known to be sound: ``config.yaml``, ``speakers.json``,
    ``text_tokenizer.json`` and ``trained.json`` (otherwise only read when the stage exports, after training).

    Raises:
        InitExportError: naming the file and what is wrong with it.
    """
    try:
        files, _ = _ExportFiles.from_export(directory)
        read_trained(directory)
    except (OSError, ValueError) as err:  # ConfigError (a damaged config.yaml) is a ValueError
        raise export_problem(err) from err
    return files.text_tokenizer, files.speakers


def move_to(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Moves tensors to the device and floating ones to the weights' dtype (DeepSpeed bf16 casts weights only)."""
    return {k: v.to(device, dtype=dtype if v.is_floating_point() else None, non_blocking=True)
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_system(config: Any) -> TTSSystem:
    """The system of a stage: from the previous stage's export, or new (text tokenizer and speakers from data).

    Raises:
        InitExportError: a file of the ``stage.init_from`` export is missing or damaged (named), found before
            any training step.
    """
    stage = config.stage
    models = to_object(config.model)
    if stage.init_from:
        export = Path(stage.init_from)
        text_tokenizer, speakers = read_init_export(export)
        system = TTSSystem(models, text_tokenizer, speakers, to_object(config.audio))
        try:
            system.load_modules(export, MODULES if stage.init_modules is None else list(stage.init_modules))
        except (OSError, ValueError) as err:  # named: missing, not safetensors, NaN, does not fit
            raise export_problem(err) from err
    else:
        system = TTSSystem(models, build_text_tokenizer(to_object(config.text)),
                           speakers_from_shards(list(config.data.shards)), to_object(config.audio))
    system.set_trainable(list(stage.trainable))
    return system


def data_config(config: Any, system: TTSSystem) -> Any:
    """The data settings, with texts longer than the reward model accepts filtered (and counted) by the loader
    instead of failing a training step."""
    data = to_object(config.data)
    limit = system.reward.config.max_text_length
    if data.max_text_length is None or data.max_text_length > limit:
        data = dataclasses.replace(data, max_text_length=limit)
    return data


def train(config: Any) -> Path:
    """Runs (or resumes) one stage; returns its export directory."""
    check_paths(config)
    dist = setup_distributed(config.engine.backend)
    stage, out = config.stage, Path(config.output_dir)
    checkpoints = out / "checkpoints"
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    system = build_system(config)
    objective = build_objective(to_object(stage), system, config)
    engine = TrainingEngine(objective, to_object(stage.optim), to_object(config.engine), dist,
                            system.external_parameters())
    data = data_config(config, system)
    loader = SpeechDataLoader(data, to_object(config.audio), system.text_tokenizer, dist.rank, dist.world_size)
    validator = (Validator(data, to_object(config.audio), system.text_tokenizer, config.seed, dist.device)
                 if data.valid_shards else None)
    torch.manual_seed(config.seed + 1000 * dist.rank)  # dropout/noise differ per rank, reproducibly

    resumed = engine.load(checkpoints)
    start_step = engine.global_step
    samples_seen = 0  # by this rank, over the whole stage: logged so that a resume can be audited
    if resumed is not None:
        _, rank_state = resumed
        try:
            loader.load_state_dict(rank_state["data"])
            restore_rng(rank_state["rng"])
            samples_seen = int(rank_state["samples_seen"])
        except (KeyError, TypeError, ValueError) as err:  # e.g. data settings changed since the checkpoint
            raise CheckpointError(f"cannot resume this rank's data position and RNG from "
                                  f"{checkpoints / engine.checkpoint_tag}: {err}") from None
        if dist.rank == 0:
            print(f"resumed {stage.name} at step {engine.global_step} from {checkpoints / engine.checkpoint_tag}",
                  file=sys.stderr)
    if dist.rank == 0:  # only now: a resume that fails must leave the run's files as they were
        save_config(config, out / "config.yaml")

    log = MetricsLogger(out, dist.rank == 0, config.engine.tensorboard, stage.max_steps, engine.global_step,
                        config.engine.progress_bar)
    window: dict[str, list[float]] = {}

    def save() -> None:
        engine.save(checkpoints, {"step": engine.global_step, "stage": stage.name},
                    {"data": loader.state_dict(), "rng": capture_rng(), "samples_seen": samples_seen})

    while engine.global_step < stage.max_steps:
        for batch in loader:
            objective.step = engine.global_step
            _, metrics, updated = engine.train_step(move_to(batch, dist.device, engine.dtype))
            samples_seen += len(batch["keys"])
            for key, value in metrics.items():
                window.setdefault(key, []).append(value)
            if not updated:
                continue
            log.advance()
            step = engine.global_step
            if step % config.engine.log_every == 0 or step == stage.max_steps:
                averaged = {k: sum(v) / len(v) for k, v in window.items()}
                averaged.update(lr=engine.lr, epoch=loader.epoch, samples_seen=samples_seen,
                                skipped=sum(loader.skipped.values()))
                log.log(step, averaged)
                window.clear()
            if validator is not None and (step == stage.max_steps or (
                    config.engine.valid_every and step % config.engine.valid_every == 0)):
                log.log(step, validator.run(lambda held_out: engine.eval_step(
                    move_to(held_out, dist.device, engine.dtype))))
            if step % config.engine.save_every == 0 and step < stage.max_steps:
                save()
            if config.engine.export_every and step % config.engine.export_every == 0 and step < stage.max_steps:
                if engine.engine.zero_optimization_stage() == 3 and step % config.engine.save_every:
                    save()  # ZeRO-3 exports are consolidated from the latest checkpoint
                export(engine, system, config, checkpoints, dist, out / "exports" / f"step_{step:06d}")
            if step >= stage.max_steps:
                break
    if engine.global_step > start_step or resumed is None:
        save()
    log.close()
    return export(engine, system, config, checkpoints, dist, out / "export")


def export(engine: TrainingEngine, system: TTSSystem, config: Any, checkpoints: Path, dist: Any,
           directory: Path) -> Path:
    """Writes an export of the live weights to ``directory`` (ZeRO-3: gathered from the last checkpoint)."""
    if engine.engine.zero_optimization_stage() == 3:
        state_dict = consolidated_state_dict(checkpoints, engine.checkpoint_tag) if dist.rank == 0 else None
    else:
        state_dict = engine.module.state_dict()
    if dist.rank == 0:
        system.export(directory, config, state_dict, prefix=OBJECTIVE_PREFIX)
    torch.distributed.barrier()
    return directory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one stage (resumes from its latest checkpoint)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", action="append", default=[], help="YAML file (repeatable, in order)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        check_paths(config)  # before train() starts DeepSpeed
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        directory = train(config)
    except (ConfigError, CheckpointError, DataError, InitExportError) as err:  # what cannot be trained from
        print(f"error: {err}", file=sys.stderr)
        return 2
    if torch.distributed.get_rank() == 0:
        print(f"export: {directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e_tts.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
