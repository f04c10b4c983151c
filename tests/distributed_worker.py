"""A tiny, deterministic DeepSpeed training run: shared by tests/test_engine.py, launched by tests/test_distributed.py.

The setup: a :class:`TTSSystem` of 0.18 M parameters, trained by the joint multitask objective on the
tokenizer, LLM and reward model (``0.1 * llm + 1.0 * reward``, dropout 0, token noise 0; flow and vocoder frozen)
so that the loss is a deterministic function of the weights and the batch. Synthetic batches (random log-mel,
text ids and speaker names) come from fixed seeds, identical in every process.

Data parallelism without changing the maths: every optimizer step consumes one global batch made of
``MICRO_BATCHES`` micro-batches. Rank ``r`` of ``W`` takes micro-batches ``r, r + W, ...`` and accumulates
``MICRO_BATCHES / W`` of them, so one process (accumulation 2) and two ranks (accumulation 1) both follow the
gradient of the mean micro-batch loss. (Splitting one batch by rows would not: the losses are means over tokens,
so the mean of two half-batch losses is not the loss of the whole batch.)

Run as a script it trains ``--steps`` optimizer updates and writes ``--out`` on rank 0 (JSON: per-step global mean
loss and gradient norm, world size) and, on every rank, its final full weights (:func:`weights_path`)::

    python tests/distributed_worker.py --zero-stage 2 --steps 3 --out run.json
    torchrun --nproc_per_node 2 tests/distributed_worker.py --zero-stage 3 --steps 3 --out run.json
    deepspeed --num_gpus 2 tests/distributed_worker.py --zero-stage 2 --steps 3 --out run.json

With ``--resume-after K`` it checkpoints after ``K`` updates, throws the engine away and trains the rest in a fresh
one (new weights and optimizer) resumed from that checkpoint; with ``--export`` it then checkpoints and exports
like ``e2e-tts train`` after its last update (:func:`export_path`; under ZeRO-3 consolidated from the checkpoint).

With ``--shards`` it trains one resampled epoch of the project's data loader instead (each rank its own stream)
and records every rank's batch count, gathered after the epoch. With ``--grpo`` it trains the grpo stage on
batches that make the ranks' forwards differ (:func:`train_grpo_unevenly`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the LLM is built from a config: nothing may be downloaded

from omegaconf import OmegaConf  # noqa: E402

from e2e_tts.config import ExperimentConfig, ModelsConfig, model_preset  # noqa: E402
from e2e_tts.engine import DistInfo, EngineConfig, OptimConfig, TrainingEngine, setup_distributed  # noqa: E402
from e2e_tts.models.llm import MAX_LEN_RATIO, MIN_LEN_RATIO, new_token_limits  # noqa: E402
from e2e_tts.objectives import build_objective as objective_of  # noqa: E402
from e2e_tts.stage import GRPOConfig, StageConfig  # noqa: E402
from e2e_tts.system import TTSSystem  # noqa: E402
from e2e_tts.text import ByteTokenizer, TextConfig  # noqa: E402
from e2e_tts.train import export  # noqa: E402

SPEAKERS = ("alice", "bob", "carol")
TRAINABLE = ("tokenizer", "llm", "reward")
FROZEN = ("flow", "vocoder")  # loss weight 0: frozen modules with a loss are refused by the objective
LOSS_WEIGHTS = {"llm": 0.1, "reward": 1.0}  # no flow loss: it draws random noise and times
MICRO_BATCHES = 2  # per global batch (= optimizer step); must be a multiple of the world size
MICRO_BATCH_SIZE = 3
WEIGHT_SEED = 0


def tiny_models() -> ModelsConfig:
    """The ``tiny`` preset shrunk to widths of 32 and one block per stack (0.18 M parameters, 0.12 M trained)."""
    preset = model_preset("tiny")
    return ModelsConfig(
        tokenizer=dataclasses.replace(preset.tokenizer, dim=32, depth=1, heads=2, levels=[5, 5, 5]),
        llm=dataclasses.replace(preset.llm, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, max_position_embeddings=256),
        flow=dataclasses.replace(preset.flow, dim=32, depth=1, heads=2, upsample_conv_layers=1),
        reward=dataclasses.replace(preset.reward, encoder_dim=32, encoder_depth=1, encoder_heads=2, decoder_dim=32,
                                   decoder_depth=1, decoder_heads=2, dropout=0.0,
                                   num_emotions=0, num_quality_classes=0, max_text_length=64),
        vocoder=dataclasses.replace(preset.vocoder, dim=16, intermediate_dim=32, num_blocks=1),
    )


def tiny_stage(**optim: Any) -> StageConfig:
    """The joint stage of the tests: deterministic losses, flow and vocoder frozen."""
    return StageConfig(name="engine-test", objective="multitask", trainable=list(TRAINABLE),
                       loss_weights=dict(LOSS_WEIGHTS), optim=OptimConfig(**optim))


def grpo_stage() -> StageConfig:
    """The grpo stage of the tests: the LLM trains on 2 rollouts per text scored by the frozen reward model."""
    return StageConfig(name="grpo-test", objective="grpo", trainable=["llm"], kl_beta=0.0,
                       grpo=GRPOConfig(num_samples=2, reward_weights={"cer": 1.0}), optim=OptimConfig(lr=3e-3))


def build_objective(stage: StageConfig) -> nn.Module:
    """The stage's objective over a freshly built system; the same weights in every process and every call."""
    torch.manual_seed(WEIGHT_SEED)
    system = TTSSystem(tiny_models(), ByteTokenizer(), SPEAKERS)
    system.set_trainable(list(stage.trainable))
    return objective_of(stage, system)


def build_engine(objective: nn.Module, stage: StageConfig, dist: DistInfo, zero_stage: int,
                 gradient_accumulation_steps: int = 1, keep_last: int = 2) -> TrainingEngine:
    """Wraps the objective like e2e_tts.train does."""
    config = EngineConfig(zero_stage=zero_stage, precision="fp32", keep_last=keep_last, tensorboard=False,
                          progress_bar=False, gradient_accumulation_steps=gradient_accumulation_steps)
    return TrainingEngine(objective, stage.optim, config, dist, objective.system.external_parameters())


def synthetic_batch(seed: int, size: int = MICRO_BATCH_SIZE) -> dict[str, Any]:
    """A padded batch in the data loader's layout, a pure function of ``seed``.

    Returns:
        ``mel`` ``(B, T, 80)`` log-mel, ``mel_mask`` ``(B, T)``, ``text_ids`` ``(B, L)`` byte ids,
        ``text_mask`` ``(B, L)``, ``texts`` (their B strings), ``speaker`` (B names) and ``keys``. Rows have
        different lengths (right padding).
    """
    generator = torch.Generator().manual_seed(seed)
    mel_lengths = torch.randint(16, 41, (size,), generator=generator)
    text_lengths = torch.randint(2, 7, (size,), generator=generator)
    mel = torch.randn(size, int(mel_lengths.max()), 80, generator=generator) * 2.0 - 5.0
    text_ids = torch.randint(0, 256, (size, int(text_lengths.max())), generator=generator)
    speakers = [SPEAKERS[int(i)] for i in torch.randint(0, len(SPEAKERS), (size,), generator=generator)]
    texts = [ByteTokenizer().decode(row[:n].tolist()) for row, n in zip(text_ids, text_lengths)]
    return {"mel": mel, "mel_mask": torch.arange(mel.shape[1]) < mel_lengths[:, None],
            "text_ids": text_ids, "text_mask": torch.arange(text_ids.shape[1]) < text_lengths[:, None],
            "texts": texts, "speaker": speakers, "keys": [f"seed{seed}_{i}" for i in range(size)]}


def micro_batch(step: int, index: int) -> dict[str, Any]:
    """Micro-batch ``index`` of the global batch of optimizer step ``step``."""
    return synthetic_batch(1000 * step + index)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def full_state_dict(engine: TrainingEngine) -> dict[str, torch.Tensor]:
    """Every weight and buffer of the wrapped module, gathered under ZeRO-3, as CPU copies on every rank."""
    import deepspeed

    module = engine.module
    gathered = contextlib.nullcontext()
    if engine.engine.zero_optimization_stage() == 3:
        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train_global_batches(engine: TrainingEngine, dist: DistInfo, steps: int) -> tuple[list[float], list[float]]:
    """Runs ``steps`` optimizer updates on this rank's share of each global batch.

    Returns:
        per update, the mean loss over all micro-batches of the global batch (all-reduced over ranks), and the
        global gradient norm before clipping.
    """
    if MICRO_BATCHES % dist.world_size:
        raise ValueError(f"{MICRO_BATCHES} micro-batches cannot be split evenly over {dist.world_size} ranks")
    losses, grad_norms = [], []
    for step in range(engine.global_step, engine.global_step + steps):
        total = torch.zeros((), dtype=torch.float64, device=dist.device)
        for index in range(dist.rank, MICRO_BATCHES, dist.world_size):
            engine.module.step = engine.global_step
            loss, metrics, updated = engine.train_step(to_device(micro_batch(step, index), dist.device))
            total += loss.double()
        if not updated or engine.global_step != step + 1:
            raise RuntimeError(f"step {step}: the global batch did not end with exactly one optimizer update")
        torch.distributed.all_reduce(total)
        losses.append(total.item() / MICRO_BATCHES)
        grad_norms.append(metrics["grad_norm"])
    return losses, grad_norms


def train_loader_epoch(engine: TrainingEngine, dist: DistInfo, shards: Sequence[str], steps_per_epoch: int
                       ) -> list[int]:
    """Trains one resampled epoch of SpeechDataLoader batches; returns every rank's batch count."""
    from e2e_tts.audio import AudioConfig
    from e2e_tts.data.loader import DataConfig, SpeechDataLoader

    data = DataConfig(shards=list(shards), resampled=True, steps_per_epoch=steps_per_epoch, num_workers=1,
                      sort_buffer=4, shuffle_buffer=4, max_samples=2, max_frames=200, max_duration=2.0)
    loader = SpeechDataLoader(data, AudioConfig(), engine.module.system.text_tokenizer, dist.rank,
                              dist.world_size)
    batches = 0
    for batch in loader:
        engine.module.step = engine.global_step
        engine.train_step(to_device(batch, dist.device))  # reduces gradients: a rank that ran out would hang
        batches += 1
    counts = [None] * dist.world_size
    torch.distributed.all_gather_object(counts, batches)
    torch.distributed.barrier()
    return counts


def train_grpo_unevenly(engine: TrainingEngine, dist: DistInfo, steps: int) -> dict[str, list]:
    """``steps`` updates of the grpo stage on batches that make the ranks' forwards differ unless the code keeps
    them in step (ZeRO-3 gathers weights collectively in every forward): rank 0 reads the same batch at every
    step, so from the second its frozen tokenizer's ids come from the token cache, while the other ranks read new
    batches; and each rank's texts cap its rollouts at another length.

    Returns:
        every rank's token-cache size at the end and, per update, its rollouts' cap (the most tokens generate
        may sample for its longest text), gathered on every rank.
    """
    caps = []
    for step in range(steps):
        batch = synthetic_batch(0 if dist.rank == 0 else 1000 * (step + 1) + dist.rank)
        caps.append(max(new_token_limits(int(n), MIN_LEN_RATIO, MAX_LEN_RATIO)[1] for n in batch["text_mask"].sum(1)))
        engine.module.step = engine.global_step
        engine.train_step(to_device(batch, dist.device))
    gathered = [None] * dist.world_size
    torch.distributed.all_gather_object(gathered, {"cached": len(engine.module.frozen_tokens), "caps": caps})
    return {key: [rank[key] for rank in gathered] for key in ("cached", "caps")}


def train_and_resume(new_engine: Callable[[], TrainingEngine], dist: DistInfo, steps: int, resume_after: int,
                     checkpoints: Path) -> tuple[TrainingEngine, list[float], list[float]]:
    """:func:`train_global_batches` for ``steps`` updates in an engine from ``new_engine()``, interrupted after
    ``resume_after`` updates (0: never) by a checkpoint from which a second fresh engine (new weights and
    optimizer) resumes. Returns the last engine, and per update the loss and the gradient norm."""
    engine = new_engine()
    if resume_after == 0:
        return engine, *train_global_batches(engine, dist, steps)
    losses, grad_norms = train_global_batches(engine, dist, resume_after)
    engine.save(checkpoints, {"step": engine.global_step}, {})
    del engine
    engine = new_engine()
    if engine.load(checkpoints) is None or engine.global_step != resume_after:
        raise RuntimeError(f"the resume from {checkpoints} did not restore step {resume_after}")
    more_losses, more_norms = train_global_batches(engine, dist, steps - resume_after)
    return engine, losses + more_losses, grad_norms + more_norms


def experiment_config(stage: StageConfig) -> Any:
    """The run's settings as ``e2e-tts train`` holds them, which an export records (and rebuilds its system from)."""
    return OmegaConf.structured(ExperimentConfig(model=tiny_models(), stage=stage, text=TextConfig(tokenizer="bytes")))


def weights_path(out: str | Path, rank: int) -> Path:
    """Where rank ``rank`` saves its final full weights, beside the JSON result."""
    return Path(out).with_suffix(f".rank{rank}.pt")


def export_path(out: str | Path) -> Path:
    """Where ``--export`` writes the export (``TTSSystem.from_export`` loads it), beside the JSON result."""
    return Path(out).with_suffix(".export")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero-stage", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--steps", type=int, default=3, help="optimizer updates (global batches)")
    parser.add_argument("--resume-after", type=int, default=0,
                        help="checkpoint after this many updates and resume from it in a fresh engine (0: never)")
    parser.add_argument("--export", action="store_true", help="export the final weights like e2e-tts train")
    parser.add_argument("--out", required=True, help="JSON result written by rank 0")
    parser.add_argument("--shards", nargs="*", help="train one loader epoch on these shards / .list files instead")
    parser.add_argument("--steps-per-epoch", type=int, default=4, help="batches per rank of the loader epoch")
    parser.add_argument("--grpo", action="store_true", help="train the grpo stage on uneven batches instead")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # appended by the deepspeed launcher
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    dist = setup_distributed()
    # A warm-up longer than the run gives every update its own lr: a schedule counted in micro-steps (twice as
    # many in one process as on each of two ranks) would show in the losses.
    stage = grpo_stage() if args.grpo else tiny_stage(lr=3e-3, warmup_steps=max(args.steps, 1) + 1, total_steps=100)
    accumulation = 1 if args.shards or args.grpo else MICRO_BATCHES // dist.world_size

    def new_engine() -> TrainingEngine:
        return build_engine(build_objective(stage), stage, dist, args.zero_stage, accumulation)

    result: dict[str, Any] = {"world_size": dist.world_size, "zero_stage": args.zero_stage}
    if args.shards:
        result["batches_per_rank"] = train_loader_epoch(new_engine(), dist, args.shards, args.steps_per_epoch)
    elif args.grpo:
        engine = new_engine()
        result.update(train_grpo_unevenly(engine, dist, args.steps), global_step=engine.global_step)
        torch.save(full_state_dict(engine), weights_path(args.out, dist.rank))
    else:
        checkpoints = Path(args.out).with_suffix(".checkpoints")
        engine, result["losses"], result["grad_norms"] = train_and_resume(new_engine, dist, args.steps,
                                                                          args.resume_after, checkpoints)
        result["global_step"] = engine.global_step
        torch.save(full_state_dict(engine), weights_path(args.out, dist.rank))
        if args.export:
            engine.save(checkpoints, {"step": engine.global_step}, {})  # as e2e-tts train does before exporting
            export(engine, engine.module.system, experiment_config(stage), checkpoints, dist, export_path(args.out))
    if dist.rank == 0:
        Path(args.out).write_text(json.dumps(result))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
