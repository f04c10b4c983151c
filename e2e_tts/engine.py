"""DeepSpeed ZeRO wrapper: distributed start-up, optimizer and schedule, step, checkpoints, export.

One code path from one CPU process to many GPU nodes:

* ``setup_distributed`` fills in the launcher environment for a lone process (DeepSpeed otherwise falls back
  to MPI discovery), then ``deepspeed.init_distributed`` with gloo on CPU or NCCL on GPU. Under ``torchrun`` or
  the ``deepspeed`` launcher (single or multi node) the environment is already there.
* The optimizer is a client ``torch.optim.AdamW`` (no JIT-compiled op to build on CPU) and the learning-rate
  schedule is a ``LambdaLR`` stepped by DeepSpeed once per optimizer update, so warm-up and decay are counted
  in global optimizer updates whatever the world size or accumulation.
* The data loader yields whole dynamic batches, so DeepSpeed's micro batch is 1 "batch" per rank and gradient
  accumulation is DeepSpeed's own.
* Checkpoints: ``save_checkpoint(save_latest=False)``, then every rank writes its own state (data position,
  RNG) into the tag directory, then a barrier, then rank 0 lists every file with its size in ``complete.json``
  and replaces ``latest`` atomically. DeepSpeed's own ``latest`` is written by rank 0 before the final barrier,
  while other ranks may still be writing, and not atomically: a kill at that moment would leave ``latest``
  naming a torn checkpoint. A resume whose ``latest`` names a checkpoint with a file missing or cut falls back
  to the newest complete one, with a warning.
* A checkpoint folder may come from someone else, so reading it can run no code: the ranks' own state is JSON,
  and DeepSpeed's files are unpickled with ``weights_only=True`` and an allow-list of the few DeepSpeed types
  they hold (:func:`load_checkpoint_file`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from e2e_tts.checks import FieldError, at_least, one_of, positive, within

logger = logging.getLogger(__name__)

LATEST = "latest"
RANK_STATE = "rank_state_{rank:05d}.json"
COMPLETE = "complete.json"
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "fp32", "bf16")
BACKENDS = ("auto", "gloo", "nccl")
SCHEDULES = ("constant", "linear", "cosine")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names the file or folder and what is wrong."""


@dataclass
class EngineConfig:
    """How training runs (not what it trains)."""

    zero_stage: int = 2
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU (bf16 is slower on CPUs without AMX)
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 5.0
    offload_optimizer: bool = False
    log_every: int = 10
    save_every: int = 200
    keep_last: int = 2
    # Also export the live weights every N updates to <output_dir>/exports/step_<N> (0: only the final export),
    # so a run's quality can be measured against its training time (tools/wer_curve.py).
    export_every: int = 0
    # Run the stage's objective on data.valid_shards every N updates and after the last (0: after the last only).
    valid_every: int = 0
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        one_of(self, "zero_stage", ZERO_STAGES)
        one_of(self, "precision", PRECISIONS)
        one_of(self, "backend", BACKENDS)
        for name in ("gradient_accumulation_steps", "log_every", "save_every", "keep_last"):
            at_least(self, name, 1)
        for name in ("gradient_clipping", "export_every", "valid_every"):
            at_least(self, name, 0)


@dataclass
class OptimConfig:
    """AdamW and its schedule; steps are global optimizer updates."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    eps: float = 1e-8
    schedule: str = "cosine"  # constant | linear | cosine (after linear warm-up)
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.05

    def __post_init__(self) -> None:
        positive(self, "lr")
        positive(self, "eps")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise FieldError("betas", f"must be two values in [0, 1), got {list(self.betas)}")
        at_least(self, "weight_decay", 0)
        one_of(self, "schedule", SCHEDULES)
        at_least(self, "warmup_steps", 0)
        at_least(self, "total_steps", 1)
        within(self, "min_lr_ratio", 0, 1)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed(backend: str = "auto") -> DistInfo:
    """Initialises torch.distributed through DeepSpeed (idempotent).

    A process started without a launcher becomes rank 0 of 1 on a free local port. The device is chosen by
    ``LOCAL_RANK``, never the global rank (which is wrong on every node but the first).
    """
    import deepspeed

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def lr_factor(step: int, config: OptimConfig) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer updates."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps))
    if config.schedule == "linear":
        decay = 1.0 - progress
    else:  # cosine (OptimConfig refuses other names)
        decay = 0.5 * (1.0 + np.cos(np.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * float(decay)


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters; no weight decay on biases, norms and 1-D parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach (CUDA's default) also on CPU: the same arithmetic as the per-tensor loop, which holds two temporaries
    # the size of ZeRO's flat partition at the step where foreach holds one (2.4 GB less for a 0.6B module).
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=tuple(config.betas),
                             eps=config.eps, foreach=True)


def deepspeed_config(config: EngineConfig, world_size: int, use_bf16: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,  # one dynamic batch per rank per micro step
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.gradient_accumulation_steps * world_size,
        "gradient_clipping": config.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # offload works with the client AdamW (no cpu_adam build)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def capture_rng() -> dict[str, Any]:
    """Every RNG state as JSON values (a checkpoint's rank state is JSON: nothing in it can run code)."""
    version, python, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": [version, list(python), gauss],
             "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng` captured."""
    version, python, gauss = state["python"]
    random.setstate((version, tuple(python), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _deepspeed_checkpoint_types() -> list[type]:
    """The types besides tensors and plain containers in DeepSpeed 0.19's checkpoints, found by saving ZeRO
    stages 0 to 3 in fp32 and bf16, with and without optimizer offload."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def _refusal(err: pickle.UnpicklingError) -> str:
    """The useful line of torch's weights-only error (the rest suggests loading the file unsafely)."""
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global|\n\n|$)", str(err), re.DOTALL)
    return found.group(1).strip() if found else str(err).splitlines()[0]


def load_checkpoint_file(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` of a DeepSpeed checkpoint file that cannot run code.

    Raises:
        CheckpointError: naming the file, when it holds any other type (unpickling it could run code) or
            cannot be read.
    """
    try:
        with torch.serialization.safe_globals(_deepspeed_checkpoint_types()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused: it holds more than tensors and DeepSpeed's state, and loading it "
                              f"could run code ({_refusal(err)})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read it as a checkpoint file: {str(err).splitlines()[0]}") from None


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Makes every ``torch.load`` weights-only with DeepSpeed's types allowed, for DeepSpeed code that calls
    ``torch.load(weights_only=False)`` itself (zero_to_fp32); torch's own switch overrides the argument."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_checkpoint_types()):
            yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


class TrainingEngine:
    """A model wrapped by DeepSpeed, with the step, checkpoint and resume logic of the project.

    Args:
        model: module whose ``forward(batch)`` returns ``(loss, metrics)``; only parameters with
            ``requires_grad`` are optimised (frozen modules get no optimizer state).
        optim: optimizer and schedule.
        config: engine settings.
        dist: from :func:`setup_distributed`.
        external_parameters: (module, parameter) pairs where a module reads a parameter it does not own.
    """

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, config: EngineConfig, dist: DistInfo,
                 external_parameters: Sequence[tuple[torch.nn.Module, torch.nn.Parameter]] = ()):
        import deepspeed

        self.config, self.dist = config, dist
        if config.zero_stage == 3:
            # ZeRO-3 gathers only a module's own parameters around its forward (see TTSSystem.external_parameters).
            for module, param in external_parameters:
                deepspeed.zero.register_external_parameter(module, param)
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if dist.device.type == "cuda" else "fp32"
        self.precision = precision
        optimizer = build_optimizer(model, optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(dist.device), optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(config, dist.world_size, precision == "bf16"))
        # DeepSpeed reads every file of a checkpoint through its checkpoint engine, with weights_only=False.
        self.engine.checkpoint_engine.load = load_checkpoint_file
        self.checkpoint_tag: str | None = None  # of the checkpoint last saved or resumed from

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def global_step(self) -> int:
        """Optimizer updates so far (the unit of every schedule)."""
        return self.engine.global_steps

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights, which floating inputs must match."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], bool]:
        """Forward, backward and (at an accumulation boundary) an optimizer update.

        Returns:
            the loss, the objective's metrics, and whether an optimizer update happened.
        """
        self.engine.train()
        loss, metrics = self.engine(batch)
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            if norm is not None:
                metrics["grad_norm"] = float(norm)
        return loss.detach(), metrics, boundary

    def eval_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """The objective's metrics on a batch in eval mode, without gradients or an update."""
        self.engine.eval()
        with torch.no_grad():
            _, metrics = self.engine(batch)
        return metrics

    # ---- checkpoints -------------------------------------------------------------------------------

    def save(self, directory: str | Path, client_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """Writes a complete checkpoint ``<directory>/step_<N>`` and only then points ``latest`` at it.

        Args:
            client_state: global training state (same on every rank), saved by DeepSpeed.
            rank_state: this rank's own state (data position, RNG), saved as one file per rank.
        """
        directory = Path(directory)
        tag = f"step_{self.global_step:08d}"
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
        (directory / tag / RANK_STATE.format(rank=self.dist.rank)).write_text(json.dumps(rank_state))
        torch.distributed.barrier()
        if self.dist.rank == 0:
            # The sizes let a resume tell a complete checkpoint from one with a file lost or cut since.
            files = {p.name: p.stat().st_size for p in sorted((directory / tag).iterdir()) if p.is_file()}
            (directory / tag / COMPLETE).write_text(json.dumps({"step": self.global_step,
                                                                 "world_size": self.dist.world_size, "files": files}))
            _atomic_write(directory / LATEST, tag)
            self._prune(directory)
        torch.distributed.barrier()
        self.checkpoint_tag = tag
        return directory / tag

    def _prune(self, directory: Path) -> None:
        """Keeps the newest ``keep_last`` complete checkpoints (and never the one ``latest`` names)."""
        latest = (directory / LATEST).read_text().strip()
        tags = sorted(p.name for p in directory.glob("step_*") if p.is_dir())
        # After the barrier an incomplete directory is debris of a killed save: it must not take a kept slot.
        complete = [tag for tag in tags if _checkpoint_problem(directory, tag) is None]
        keep = set(complete[len(complete) - self.config.keep_last:]) | {latest}
        for tag in tags:
            if tag not in keep:
                shutil.rmtree(directory / tag, ignore_errors=True)

    def load(self, directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Restores the checkpoint named by ``latest`` (or, when a file of it is missing or cut, the newest
        complete one, with a warning); returns ``(client_state, rank_state)`` or None. Writes nothing.

        Raises:
            CheckpointError: no complete checkpoint to fall back to; the checkpoint was written by a different
                world size (the data position of each rank cannot be carried over); a file holds something
                other than a checkpoint's state (it could run code) or cannot be read.
        """
        directory = Path(directory)
        if not (directory / LATEST).is_file():
            return None
        tag = self._resumable_tag(directory)
        saved_world = json.loads((directory / tag / COMPLETE).read_text())["world_size"]
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"checkpoint {directory / tag} was written by {saved_world} ranks, this run has "
                                  f"{self.dist.world_size}: resume with the same world size, or start a new stage "
                                  f"from its export")
        rank_file = directory / tag / RANK_STATE.format(rank=self.dist.rank)
        try:
            rank_state = json.loads(rank_file.read_text())
        except (OSError, ValueError) as err:  # ValueError: not JSON, or not text
            raise CheckpointError(f"{rank_file}: not a rank state written by e2e-tts train: {err}") from None
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {directory / tag}")
        self.checkpoint_tag = tag
        return client_state, rank_state

    def _resumable_tag(self, directory: Path) -> str:
        """The tag ``latest`` names if that checkpoint is complete, else the newest complete one."""
        latest = directory / LATEST
        tag = latest.read_text(errors="replace").strip()
        problem = _checkpoint_problem(directory, tag)
        if problem is None:
            return tag
        others = {p.name: _checkpoint_problem(directory, p.name) for p in directory.glob("step_*") if p.name != tag}
        complete = sorted(name for name, other in others.items() if other is None)
        if not complete:
            details = "; ".join(f"{name} {other}" for name, other in sorted(others.items()))
            raise CheckpointError(f"{latest} names {tag}, which {problem}, and {directory} holds no other complete "
                                  f"checkpoint" + (f" ({details})" if details else ""))
        if self.dist.rank == 0:
            logger.warning("%s names %s, which %s; resuming from %s, the newest complete checkpoint", latest, tag,
                           problem, complete[-1])
        return complete[-1]


def _checkpoint_problem(directory: Path, tag: str) -> str | None:
    """What keeps ``<directory>/<tag>`` from being resumed, as the end of a sentence; None when complete."""
    if not re.fullmatch(r"step_\d+", tag):
        return "is not a checkpoint name"
    path = directory / tag
    if not path.is_dir():
        return "does not exist"
    if not (path / COMPLETE).is_file():
        return f"is incomplete (no {COMPLETE}: its save did not finish)"
    try:
        marker = json.loads((path / COMPLETE).read_text())
        int(marker["world_size"])
        if "files" not in marker:
            return f"was written by an older e2e-tts ({COMPLETE} lists no files; its rank state was a pickle)"
        recorded = {str(name): int(size) for name, size in marker["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"has an unreadable {COMPLETE}"
    missing = [name for name in recorded if not (path / name).is_file()]
    if missing:
        return f"is missing {', '.join(missing)}"
    cut = [f"{name} of {(path / name).stat().st_size} bytes, {size} were written" for name, size in recorded.items()
           if (path / name).stat().st_size != size]
    return f"has {'; '.join(cut)}" if cut else None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def consolidated_state_dict(checkpoint_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint, whatever its ZeRO stage (ZeRO-3 shards are gathered)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    tag = tag or (checkpoint_dir / LATEST).read_text().strip()
    try:
        with _weights_only_loads():
            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag,
                                                            exclude_frozen_parameters=False)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{checkpoint_dir / tag}: refused: a file holds more than tensors and DeepSpeed's "
                              f"state, and loading it could run code ({_refusal(err)})") from None
