"""Model FLOPs utilisation (MFU) of training updates: the tiny recipe's stages and the paper-size LLM and flow.

    .venv/bin/python benchmarks/mfu.py stages --shards data/tiny/shards/train.list --out /tmp/mfu
    .venv/bin/python benchmarks/mfu.py paper --modules llm,flow      # one update of each, short rows (CPU)
    python3 benchmarks/mfu.py paper --precision bf16 --batch 16 --speech-len 512 --warmup 3 --steps 10   # a GPU
    .venv/bin/python benchmarks/mfu.py peak                          # the matmul peak alone

MFU is the model FLOPs of the updates (e2e_tts.flops: counted from the shapes of each module at the rows' valid
lengths, forward and backward) per second, over the peak matmul rate measured in the same run on the same threads
(fp32 on a CPU, bf16 on a GPU: a large square product, the best of a few seconds of repeats, before and after the
updates; the higher of the two is the peak, so a machine that others load makes MFU look lower, never higher).
Beside it: the executed FLOPs (rows at their padded lengths) per second, whose ratio to the model FLOPs is the
cost of padding.

``stages`` builds each stage exactly as ``e2e-tts train`` does (the recipe's config, the stage spec, the same
system, objective, DeepSpeed engine and data loader; joint from scratch, separate from the joint weights, e2e from
the separate weights), reads ``--batches`` batches from the shards into memory, runs one pass over them as
warm-up (which also fills a frozen tokenizer's token cache, as every epoch after the first finds it) and times a
second pass, update by update. Data loading is therefore not timed: it runs in its own worker during training.

Under ``torchrun`` (``OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 benchmarks/mfu.py stages
--threads 1 ... data.resampled=true data.steps_per_epoch=100``) every rank trains on its own batches, as ``NPROC=2
bash recipes/tiny/run.sh`` does. The rates are the ranks' FLOPs together over the slowest rank's time, against the
sum of the peaks the ranks measure at the same moment (each on its own threads while the others measure too); only
rank 0 prints, exports and writes.

``paper`` trains one module of the paper preset alone (its real size, random weights) on synthetic rows of fixed
length through the same engine, each module in its own process so that its memory is returned; it reports the peak
memory of that process (CPU: resident set; GPU: the allocator's peak).

Every subcommand prints a table and, with ``--json``, writes the numbers. Run on otherwise idle cores: the load
average before and after is printed with them.
"""

from __future__ import annotations

import os

# As recipes/tiny/run.sh sets it: idle OpenMP threads sleep instead of spinning on cores that other jobs share. Read
# when torch loads its OpenMP runtime, so before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from e2e_tts import flops
from e2e_tts.config import load_config, to_object
from e2e_tts.data.loader import SpeechDataLoader
from e2e_tts.engine import OptimConfig, TrainingEngine, setup_distributed
from e2e_tts.models.flow import FlowDecoder
from e2e_tts.models.llm import SpeechLLM
from e2e_tts.models.tokenizer import SpeechTokenizer
from e2e_tts.objectives import build_objective
from e2e_tts.text import build_text_tokenizer
from e2e_tts.train import OBJECTIVE_PREFIX, build_system, data_config, move_to
from e2e_tts.vocab import TokenLayout

STAGES = ("joint", "separate", "e2e")
INIT_FROM = {"separate": "joint", "e2e": "separate"}
PAPER_MODULES = ("llm", "flow")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """The best rate (FLOP/s) of ``size x size`` matrix products in ``dtype`` over ``seconds`` of repeats."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):  # warm-up: thread pool, library handles, clocks
        torch.mm(a, b, out=out)
    synchronize(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    synchronize(device)
    repeats = max(1, int(0.1 / max(time.perf_counter() - start, 1e-6)))  # ~0.1 s per timed group
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def peak_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the updates multiply in: bf16 where they train in bf16 (auto: on a GPU), else fp32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def measure_peak(device: torch.device, dtype: torch.dtype) -> float:
    return matmul_peak(device, dtype, 8192 if device.type == "cuda" else 2048)


def machine(device: torch.device) -> dict[str, Any]:
    info = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process so far: the GPU allocator's, or the resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def summarize(times: list[float], model_flops: list[int], executed_flops: list[int], units: list[int]
              ) -> dict[str, float]:
    """Rates over the timed updates: ``units`` are the frames or tokens each update processed."""
    total = sum(times)
    return {"updates": len(times), "seconds": total, "updates_per_s": len(times) / total,
            "median_s_per_update": statistics.median(times), "units_per_s": sum(units) / total,
            "model_flops_per_update": sum(model_flops) / len(times), "model_flops_per_s": sum(model_flops) / total,
            "executed_flops_per_s": sum(executed_flops) / total}


def add_utilisation(row: dict[str, Any], before: float, after: float, dtype: torch.dtype) -> None:
    """MFU (and the padded rows' utilisation) against the higher of the peaks measured before and after."""
    peak = max(before, after)
    row.update(mfu=row["model_flops_per_s"] / peak, executed_utilisation=row["executed_flops_per_s"] / peak,
               peak_flops={"before": before, "after": after, "dtype": str(dtype)})


# ---- the tiny recipe's stages --------------------------------------------------------------------------------


def read_batches(loader: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` batches of the loader (across epochs if need be)."""
    batches: list[dict[str, Any]] = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


MATRIX_KERNELS = ("::mm", "::addmm", "::bmm", "::baddbmm", "convolution", "scaled_dot_product", "_euclidean_dist")


def profile_updates(run: Callable[[], None], path: Path, device: torch.device) -> dict[str, float]:
    """Runs ``run`` under torch.profiler and writes the ops with the most self time to ``path``.

    Returns:
        shares of the wall time of ``run``: ``backward`` (the autograd engine's functions), ``optimizer_step``
        (AdamW), ``forward_and_rest`` (the forward pass and DeepSpeed's gradient bookkeeping), and ``matrix_kernels``
        (the self time of products, convolutions and attention kernels, wherever they ran).
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        with torch.profiler.record_function("timed updates"):
            run()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(profiler.key_averages().table(sort_by=sort, row_limit=40))
    events = profiler.events()
    wall = next(event.cpu_time_total for event in events if event.name == "timed updates")
    phases = {"backward": 0.0, "optimizer_step": 0.0}
    for event in events:
        if event.cpu_parent is not None and event.cpu_parent.name == "timed updates":
            if event.name.startswith("autograd::engine::evaluate_function"):
                phases["backward"] += event.cpu_time_total
            elif event.name.startswith("Optimizer.step"):
                phases["optimizer_step"] += event.cpu_time_total
    shares = {name: time_spent / wall for name, time_spent in phases.items()}
    shares["forward_and_rest"] = 1.0 - sum(shares.values())
    if device.type == "cpu":  # on a GPU the kernels overlap the host's time: no share of it
        shares["matrix_kernels"] = sum(event.self_cpu_time_total for event in events
                                       if any(name in event.name for name in MATRIX_KERNELS)) / wall
    return shares


def time_shares(row: dict[str, Any]) -> str:
    """The profile's shares of the time as ``"; time: forward and rest 40 %, ..."``; empty without a profile."""
    if "backward" not in row:
        return ""
    return "; time: " + ", ".join(f"{key.replace('_', ' ')} {100 * row[key]:.0f} %" for key in (
        "forward_and_rest", "backward", "optimizer_step", "matrix_kernels") if key in row)


def time_stage(stage: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Builds a stage as ``e2e-tts train`` does, warms it up on the batches, times a pass over them, exports."""
    run = out / stage
    overrides = [f"data.shards=[{args.shards}]", f"output_dir={run}", *args.overrides]
    if stage in INIT_FROM:
        overrides.append(f"stage.init_from={out / INIT_FROM[stage] / 'export'}")
    config = load_config([args.config, f"stages/{stage}.yaml"], overrides)
    dist = setup_distributed(config.engine.backend)
    torch.manual_seed(config.seed)
    system = build_system(config)
    spec = to_object(config.stage)
    objective = build_objective(spec, system)
    engine = TrainingEngine(objective, spec.optim, to_object(config.engine), dist, system.external_parameters())
    loader = SpeechDataLoader(data_config(config, system), to_object(config.audio), system.text_tokenizer, dist.rank,
                              dist.world_size)
    batches = [move_to(batch, dist.device, engine.dtype) for batch in read_batches(loader, args.batches)]
    cache = getattr(objective, "frozen_tokens", None)

    def update(batch: dict[str, Any]) -> float:
        synchronize(dist.device)
        start = time.perf_counter()
        objective.step = engine.global_step
        engine.train_step(batch)
        synchronize(dist.device)
        return time.perf_counter() - start

    for batch in batches:  # warm-up pass
        update(batch)
    cached = len(cache) if cache is not None else 0
    times, model, executed, frames, tokens = [], [], [], [], []

    def timed_pass() -> None:
        for batch in batches:
            times.append(update(batch))
            mel_frames, text = batch["mel_mask"].sum(1).tolist(), batch["text_mask"].sum(1).tolist()
            # After the warm-up pass a frozen tokenizer's ids all come from its cache: it runs on no row.
            encoded = [] if cache is not None else None
            model.append(sum(flops.update_flops(system, spec, mel_frames, text, encoded).values()))
            executed.append(sum(flops.update_flops(system, spec, mel_frames, text, encoded, padded=True).values()))
            frames.append(sum(mel_frames))
            tokens.append(sum(m // system.tokenizer.config.frames_per_token for m in mel_frames))

    profile: dict[str, float] = {}
    if args.profile:
        run.mkdir(parents=True, exist_ok=True)
        name = "profile.txt" if dist.rank == 0 else f"profile.rank{dist.rank}.txt"
        profile = profile_updates(timed_pass, run / name, dist.device)
    else:
        timed_pass()
    if cache is not None and len(cache) != cached:
        raise RuntimeError("the frozen tokenizer encoded rows in the timed pass: its FLOPs were not counted")
    times, model, executed, frames, tokens = across_ranks(times, model, executed, frames, tokens)
    share = flops.update_flops(system, spec, [m for b in batches for m in b["mel_mask"].sum(1).tolist()],
                               [n for b in batches for n in b["text_mask"].sum(1).tolist()],
                               None if cache is None else [])
    result = {"stage": stage, **summarize(times, model, executed, frames),
              "speech_tokens_per_s": sum(tokens) / sum(times), "batch_rows": statistics.mean(len(b["keys"])
                                                                                              for b in batches),
              "flops_share": {k: v / sum(share.values()) for k, v in share.items()}, **profile}
    result["mel_frames_per_s"] = result.pop("units_per_s")
    if stage != STAGES[-1]:
        if dist.rank == 0:
            system.export(run / "export", config, engine.module.state_dict(), prefix=OBJECTIVE_PREFIX)
        if dist.world_size > 1:
            torch.distributed.barrier()  # the next stage starts from this export on every rank
    return result


def across_ranks(times: list[float], *per_rank: list[int]) -> tuple[list, ...]:
    """The updates of all ranks as one: each update's time is the slowest rank's (they meet in the gradient
    all-reduce), its FLOPs, frames and tokens the ranks' sum. Unchanged in a lone process."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return (times, *per_rank)
    slowest = torch.tensor(times, dtype=torch.float64)
    torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
    summed = []
    for values in per_rank:
        total = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(total)
        summed.append([int(v) for v in total.tolist()])
    return (slowest.tolist(), *summed)


def peak_of_all_ranks(device: torch.device, dtype: torch.dtype) -> float:
    """The matmul peak of the whole run: in a lone process its own; under a launcher every rank measures at the same
    moment on its own threads, and the run's peak is their sum."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return measure_peak(device, dtype)
    torch.distributed.barrier()
    total = torch.tensor([measure_peak(device, dtype)], dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return float(total)


def run_stages(args: argparse.Namespace) -> dict[str, Any]:
    device = default_device()
    dtype = peak_dtype(device, args.precision)
    out = Path(args.out)
    if any((out / stage).exists() for stage in args.stages.split(",")):
        raise SystemExit(f"{out} holds runs already: use a new --out")
    if args.precision != "auto":
        args.overrides.append(f"engine.precision={args.precision}")
    dist = setup_distributed(load_config([args.config]).engine.backend)
    before = peak_of_all_ranks(device, dtype)
    rows = [time_stage(stage, args, out) for stage in args.stages.split(",")]
    after = peak_of_all_ranks(device, dtype)
    for row in rows:
        add_utilisation(row, before, after, dtype)
    if dist.rank != 0:
        return {"stages": rows}
    print(f"\n{dist.world_size} process(es) of {torch.get_num_threads()} thread(s)")
    print(f"\nmatmul peak ({dtype}): {before / 1e9:.1f} GFLOP/s before, {after / 1e9:.1f} after")
    print("| stage | s/update | updates/s | mel frames/s | speech tokens/s | GFLOP/update | GFLOP/s | MFU | "
          "padded GFLOP/s | padded util. |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds'] / r['updates']:.3f} | {r['updates_per_s']:.2f} | "
              f"{r['mel_frames_per_s']:,.0f} | {r['speech_tokens_per_s']:,.0f} | "
              f"{r['model_flops_per_update'] / 1e9:.1f} | {r['model_flops_per_s'] / 1e9:.1f} | "
              f"{100 * r['mfu']:.1f} % | "
              f"{r['executed_flops_per_s'] / 1e9:.1f} | {100 * r['executed_utilisation']:.1f} % |")
    for r in rows:
        shares = ", ".join(f"{k} {100 * v:.0f} %" for k, v in r["flops_share"].items())
        print(f"{r['stage']}: FLOPs {shares}; {r['batch_rows']:.1f} rows per batch{time_shares(r)}")
    return {"stages": rows}


# ---- paper-size modules ----------------------------------------------------------------------------------------


class LoneModule(nn.Module):
    """One consumer of the speech tokens trained alone on its own loss, as the separate stage trains it on a frozen
    tokenizer's ids: ``forward(batch) -> (loss, metrics)`` like the objectives (e2e_tts/objectives).

    Args:
        name: ``llm`` or ``flow``.
        module: the :class:`SpeechLLM` or :class:`FlowDecoder`.
        codebook: the tokenizer's enumerated codebook ``(V, Dc)`` (a buffer: it follows the module's device and
            dtype).
    """

    def __init__(self, name: str, module: nn.Module, codebook: torch.Tensor):
        super().__init__()
        self.name, self.module = name, module
        self.register_buffer("codebook", codebook)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.name == "llm":
            out = self.module(batch["text_ids"], batch["text_mask"], batch["speech_ids"], batch["speech_mask"],
                              self.codebook)
            loss = SpeechLLM.loss(out)
        else:
            loss = self.module.loss(batch["mel"], batch["mel_mask"], batch["speech_ids"], batch["speech_mask"],
                                    self.codebook)
        return loss, {"loss": loss.item()}


def synthetic_rows(batch: int, text_len: int, speech_len: int, text_vocab: int, codes: int, mel_ratio: int,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``batch`` unpadded rows: text ids ``(B, L)``, speech ids ``(B, S)``, mel ``(B, S * ratio, 80)`` and masks."""
    frames = speech_len * mel_ratio
    return {"text_ids": torch.randint(0, text_vocab, (batch, text_len), generator=generator),
            "text_mask": torch.ones(batch, text_len, dtype=torch.bool),
            "speech_ids": torch.randint(0, codes, (batch, speech_len), generator=generator),
            "speech_mask": torch.ones(batch, speech_len, dtype=torch.bool),
            "mel": torch.randn(batch, frames, 80, generator=generator) * 2.0 - 5.0,
            "mel_mask": torch.ones(batch, frames, dtype=torch.bool)}


def time_paper_module(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Builds the paper preset's ``name`` with random weights; for each batch size of ``--batch``, times ``--steps``
    updates after ``--warmup``."""
    config = load_config([args.config], [f"engine.zero_stage={args.zero_stage}",
                                         f"engine.precision={args.precision}"])
    models = to_object(config.model)
    dist = setup_distributed(config.engine.backend)
    torch.manual_seed(0)
    # The frozen tokenizer only supplies the codebook: FSQ's grid does not depend on the encoder, so none is built.
    codebook = SpeechTokenizer(dataclasses.replace(models.tokenizer, depth=0)).codebook()
    codes, code_dim = codebook.shape
    text_vocab = build_text_tokenizer(to_object(config.text)).vocab_size
    if name == "llm":
        module = SpeechLLM(models.llm, TokenLayout(text_vocab, codes), code_dim)
    else:
        module = FlowDecoder(models.flow, code_dim, codes)
    parameters = sum(p.numel() for p in module.parameters())
    engine_config = dataclasses.replace(to_object(config.engine), tensorboard=False, progress_bar=False)
    engine = TrainingEngine(LoneModule(name, module, codebook), OptimConfig(lr=1e-4, warmup_steps=0), engine_config,
                            dist)
    results = []
    for batch in [int(b) for b in str(args.batch).split(",")]:
        rows = synthetic_rows(batch, args.text_len, args.speech_len, text_vocab, codes, models.flow.token_mel_ratio,
                              torch.Generator().manual_seed(0))
        rows = move_to(rows, dist.device, engine.dtype)
        text, speech = [args.text_len] * batch, [args.speech_len] * batch
        if name == "llm":  # rows are unpadded: model and executed FLOPs are the same
            update_flops = flops.TRAINED * flops.llm(module, text, speech)
            units = batch * (args.text_len + 2 + args.speech_len)
        else:
            frames = [args.speech_len * models.flow.token_mel_ratio] * batch
            update_flops = flops.TRAINED * flops.flow_loss(module, speech, frames, codes)
            units = sum(frames)
        times: list[float] = []
        losses: list[float] = []

        def updates(count: int) -> None:
            for _ in range(count):
                synchronize(dist.device)
                start = time.perf_counter()
                loss, _, _ = engine.train_step(rows)
                synchronize(dist.device)
                times.append(time.perf_counter() - start)
                losses.append(float(loss))

        updates(args.warmup)
        del times[:]
        profile: dict[str, float] = {}
        if args.profile:
            table = Path(args.profile).with_suffix(f".{name}{batch}.txt")
            profile = profile_updates(lambda: updates(args.steps), table, dist.device)
        else:
            updates(args.steps)
        result = {"module": name, "parameters": parameters, "batch": batch, "text_len": args.text_len,
                  "speech_len": args.speech_len, "zero_stage": args.zero_stage, "precision": engine.precision,
                  **summarize(times, [update_flops] * len(times), [update_flops] * len(times), [units] * len(times)),
                  "losses": losses, "peak_memory_gib": peak_memory_gib(dist.device), **profile}
        result["tokens_per_s" if name == "llm" else "mel_frames_per_s"] = result.pop("units_per_s")
        results.append(result)
    return results


def run_paper(args: argparse.Namespace) -> dict[str, Any]:
    modules = args.modules.split(",")
    unknown = set(modules) - set(PAPER_MODULES)
    if unknown:
        raise SystemExit(f"unknown module(s) {sorted(unknown)}; known: {', '.join(PAPER_MODULES)}")
    device = default_device()
    dtype = peak_dtype(device, args.precision)
    if len(modules) > 1:  # each module in its own process, so that one's memory is free for the next
        results = []
        for name in modules:
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                command = [sys.executable, __file__, "paper", "--modules", name, "--json", handle.name,
                           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                             if k in ("config", "batch", "text_len", "speech_len", "warmup", "steps", "zero_stage",
                                      "precision", "threads", "profile") and v is not None]]
                subprocess.run(command, check=True)
                results.extend(json.loads(Path(handle.name).read_text())["modules"])
        return {"modules": results}
    before = measure_peak(device, dtype)
    results = time_paper_module(modules[0], args)
    gc.collect()
    after = measure_peak(device, dtype)
    for result in results:
        add_utilisation(result, before, after, dtype)
        unit = "tokens/s" if modules[0] == "llm" else "mel frames/s"
        rate = result.get("tokens_per_s", result.get("mel_frames_per_s"))
        print(f"{modules[0]}: {result['parameters'] / 1e6:.0f} M parameters, {result['batch']} rows, "
              f"ZeRO-{args.zero_stage} {result['precision']}: {result['median_s_per_update']:.3f} s/update, "
              f"{rate:,.0f} {unit}, {result['model_flops_per_update'] / 1e9:,.1f} GFLOP/update, "
              f"{result['model_flops_per_s'] / 1e9:,.1f} GFLOP/s, MFU {100 * result['mfu']:.1f} % of "
              f"{max(before, after) / 1e9:,.1f} GFLOP/s ({dtype}); peak memory {result['peak_memory_gib']:.1f} GiB; "
              f"losses {', '.join(f'{x:.3f}' for x in result['losses'])}")
        if args.profile:
            print(f"  {time_shares(result)[2:]}")
    return {"modules": results}


def run_peak(args: argparse.Namespace) -> dict[str, Any]:
    device = default_device()
    dtype = peak_dtype(device, args.precision)
    peak = measure_peak(device, dtype)
    print(f"matmul peak on {device} ({dtype}, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s")
    return {"peak_flops": {"value": peak, "dtype": str(dtype)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stages = commands.add_parser("stages", help="the tiny recipe's stages, from its shards")
    stages.add_argument("--shards", required=True, help="training shard list")
    stages.add_argument("--out", required=True, help="folder for the stages' exports and profiles (new)")
    stages.add_argument("--config", default="recipes/tiny/config.yaml")
    stages.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in recipe order")
    stages.add_argument("--batches", type=int, default=30, help="batches read; a warm-up pass, then a timed one")
    stages.add_argument("--profile", action="store_true", help="profile the timed pass (<out>/<stage>/profile.txt)")
    stages.add_argument("overrides", nargs="*", help="key=value overrides for every stage (after --)")
    paper = commands.add_parser("paper", help="one module of the paper preset at a time, synthetic rows")
    paper.add_argument("--config", default="recipes/paper/config.yaml")
    paper.add_argument("--modules", default=",".join(PAPER_MODULES))
    paper.add_argument("--batch", default="2", help="rows per update; a comma-separated list times each in turn")
    paper.add_argument("--text-len", type=int, default=32, help="text ids per row")
    paper.add_argument("--speech-len", type=int, default=96, help="speech tokens per row (the flow: x2 mel frames)")
    paper.add_argument("--warmup", type=int, default=0, help="updates before the timed ones")
    paper.add_argument("--steps", type=int, default=1, help="timed updates")
    paper.add_argument("--zero-stage", type=int, default=2)
    paper.add_argument("--profile", help="profile the timed updates: op tables at PROFILE.<module><batch>.txt")
    commands.add_parser("peak", help="the matmul peak alone")
    for command in commands.choices.values():
        command.add_argument("--threads", type=int, default=2, help="intra-op threads (CPU)")
        command.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                             help="auto: bf16 on a GPU, fp32 on a CPU (as engine.precision)")
        command.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    run = {"stages": run_stages, "paper": run_paper, "peak": run_peak}[args.command]
    results = {"command": " ".join(sys.argv), **machine(default_device()), **run(args)}
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    print(f"load average (1, 5, 15 min): before {load_before}, after {results['load_average']['after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
