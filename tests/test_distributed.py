"""Several processes train like one: plain python vs torchrun vs the deepspeed launcher vs two simulated nodes,
under ZeRO-2 and ZeRO-3.

Every run executes tests/distributed_worker.py (the deterministic tiny setup, CPU, gloo): one process accumulates
both micro-batches of each global batch, two ranks take one each, so all runs follow the same gradients. Each
two-rank run is also interrupted by a checkpoint and resumed in a fresh engine, and ends with the export that
``e2e-tts train`` writes (under ZeRO-3 consolidated from the ranks' checkpoint shards): its losses, final weights
and export must equal the uninterrupted one-process run's of the same ZeRO stage. Another run trains the grpo
stage under ZeRO-3 on batches that make the ranks' forwards differ, and a last one trains one epoch of the
project's data loader on shards of uneven sizes.

All launches of the selected tests start together at the first test (module fixture) and each test waits for its
own: on a shared 2-core machine the launches are dominated by imports (~6 CPU-seconds per process) and overlap
well. Each launch has a deadline, so a hang (e.g. ranks disagreeing on the number of collectives) fails the test
instead of blocking CI.

Tolerances: with two micro-batches the data-parallel gradient is ``(g0 + g1) / 2`` and the accumulated one
``g0 / 2 + g1 / 2``: the same in floating point (halving is exact, a two-term sum commutes). What may differ is
the reduction order of the global gradient norm (partitioned across ranks under ZeRO-2), which only enters
through the clipping coefficient at ~1e-7 relative. Losses and norms are compared at rtol 1e-5, weights at
atol 1e-6 (a 300th of one Adam step of size lr=3e-3). They are measured bit-identical on CPU, for each stage
against its own one-process run (ZeRO-2 and ZeRO-3 runs differ from each other by ~1e-6, from their norms on).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distributed_worker import MICRO_BATCH_SIZE, build_objective, export_path, grpo_stage, weights_path
from shared import child_env

from e2e_tts.system import TTSSystem
from e2e_tts.train import OBJECTIVE_PREFIX

WORKER = Path(__file__).with_name("distributed_worker.py")
BIN = Path(sys.executable).parent  # torchrun and deepspeed live beside the interpreter
STEPS = 3
RESUME_AFTER = 2  # two-rank runs checkpoint after this many updates and resume in a fresh engine
STEPS_PER_EPOCH = 4
DEADLINE_S = 300  # per launch, from the common start; measured 60-120 s each, all together, on a loaded 2-core machine

pytestmark = pytest.mark.slow


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_commands(name: str, worker_args: list[str]) -> list[list[str]]:
    """The processes that make up one launch (two for the simulated two-node run)."""
    script = [str(WORKER), *worker_args]
    if name == "single":
        return [[sys.executable, *script]]
    if name in ("torchrun", "uneven_shards", "grpo_zero3"):
        return [[str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                 "--master_port", str(free_port()), *script]]
    if name == "deepspeed":
        # --num_gpus is an alias of --num_accelerators: with DS_ACCELERATOR=cpu it is the number of CPU ranks.
        return [[str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), *script]]
    if name == "two_nodes":
        endpoint = f"127.0.0.1:{free_port()}"
        return [[str(BIN / "torchrun"), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                 "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", f"test-{os.getpid()}", *script]
                for node in range(2)]
    raise ValueError(f"unknown launch {name!r}")


class Launch:
    """A running launch: its processes, logs and result file; ``name`` is the launcher, ``label`` names its files."""

    def __init__(self, name: str, label: str, directory: Path, worker_args: list[str]):
        self.label, self.worker_args, self.out = label, worker_args, directory / f"{label}.json"
        self.logs = [directory / f"{label}.{i}.log" for i in range(2)]
        self.started = time.monotonic()
        self.processes = []
        for command, log in zip(launch_commands(name, [*worker_args, "--out", str(self.out)]), self.logs):
            with open(log, "w") as handle:  # the child keeps its own descriptor
                self.processes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                                       env=child_env(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"),
                                                       start_new_session=True))
        self.seconds = None

    def result(self) -> dict:
        """Waits until the deadline; the result JSON, or a failure that shows the end of the logs."""
        for process in self.processes:
            try:
                process.wait(timeout=max(1.0, DEADLINE_S - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"{self.label} did not finish within {DEADLINE_S} s (hung?)\n{self.log_tail()}")
        self.seconds = self.seconds or time.monotonic() - self.started
        codes = [process.returncode for process in self.processes]
        if any(codes) or not self.out.is_file():
            pytest.fail(f"{self.label} exited with {codes}\n{self.log_tail()}")
        return json.loads(self.out.read_text())

    def weights(self, rank: int) -> dict[str, torch.Tensor]:
        return torch.load(weights_path(self.out, rank))

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-30:]) for log in self.logs
                         if log.is_file())

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the launcher and its ranks
                process.wait()


def uneven_shards(directory: Path) -> list[str]:
    """Three shards of 8, 2 and 1 utterances: no split of them over two ranks is even."""
    from e2e_tts.audio import AudioConfig
    from e2e_tts.data.manifest import ManifestEntry
    from e2e_tts.data.shards import write_shards

    entries = []
    for i in range(11):
        seconds = 0.5 + 0.1 * (i % 5)
        wave = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * np.arange(int(seconds * 16000)) / 16000)
        sf.write(directory / f"u{i}.wav", wave.astype(np.float32), 16000)
        entries.append(ManifestEntry(id=f"u{i:02d}", audio=str(directory / f"u{i}.wav"), text=f"take {i}",
                                     speaker=("alice", "bob")[i % 2]))
    write_shards(entries[:8], directory / "big", AudioConfig(), shard_size=8, workers=1)
    write_shards(entries[8:], directory / "small", AudioConfig(), shard_size=2, workers=1)
    return [str(directory / "big" / "train.list"), str(directory / "small" / "train.list")]


@pytest.fixture(scope="module")
def launches(request, tmp_path_factory):
    """Starts, together, the launches that the selected tests of this module name, each with the one-process
    reference of its ZeRO stage; keyed by ``(launcher, zero_stage)`` (None for the launches that set their own
    arguments: grpo_zero3, uneven_shards)."""
    wanted = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec is not None and "launch" in callspec.params:
            zero_stage = callspec.params.get("zero_stage")
            wanted |= {(callspec.params["launch"], zero_stage)} | ({("single", zero_stage)} if zero_stage else set())
    directory = tmp_path_factory.mktemp("launches")
    started = {}
    try:
        for name, zero_stage in sorted(wanted, key=str):
            if name == "uneven_shards":
                label, args = name, ["--shards", *uneven_shards(directory), "--steps-per-epoch", str(STEPS_PER_EPOCH)]
            elif name == "grpo_zero3":
                label, args = name, ["--zero-stage", "3", "--grpo", "--steps", str(STEPS)]
            else:
                label, args = f"{name}_zero{zero_stage}", ["--zero-stage", str(zero_stage), "--steps", str(STEPS)]
                if name != "single":
                    args += ["--resume-after", str(RESUME_AFTER), "--export"]
            started[name, zero_stage] = Launch(name, label, directory, args)
        yield started
    finally:
        for launch in started.values():
            launch.kill()
        print("launch wall times (s):", {launch.label: launch.seconds and round(launch.seconds) for launch in
                                         started.values()})


@pytest.mark.parametrize("launch, zero_stage", [("torchrun", 2), ("deepspeed", 2), ("two_nodes", 2), ("torchrun", 3)])
def test_two_ranks_train_resume_and_export_exactly_like_one_process(launches, launch, zero_stage):
    single, run = launches["single", zero_stage], launches[launch, zero_stage]
    reference, result = single.result(), run.result()
    assert (reference["world_size"], result["world_size"]) == (1, 2)
    assert reference["zero_stage"] == result["zero_stage"] == zero_stage
    assert reference["global_step"] == result["global_step"] == STEPS
    assert reference["losses"][-1] < reference["losses"][0]  # the run trains

    # The updates after the resume included: a checkpoint that lost any state would show here.
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=1e-5, atol=0)
    np.testing.assert_allclose(result["grad_norms"], reference["grad_norms"], rtol=1e-5, atol=0)
    expected = single.weights(0)
    rank0, rank1 = run.weights(0), run.weights(1)
    assert rank0.keys() == rank1.keys() == expected.keys()
    for key in expected:
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        torch.testing.assert_close(rank0[key], expected[key], rtol=0, atol=1e-6, msg=key)

    exported = TTSSystem.from_export(export_path(run.out))[0].state_dict()
    assert {OBJECTIVE_PREFIX + key for key in exported} == expected.keys()
    for key, value in exported.items():
        torch.testing.assert_close(value, expected[OBJECTIVE_PREFIX + key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("launch", ["grpo_zero3"])
def test_zero3_ranks_stay_in_step_where_their_data_would_make_their_forwards_differ(launches, launch):
    """Under ZeRO-3 every forward gathers the weights from all ranks, so every rank must run the same forwards.
    In this grpo run rank 0 re-reads one batch, whose frozen tokenizer ids its token cache holds after the first
    update, while rank 1 reads new utterances; and the ranks' texts cap their rollouts at other lengths. Unless the
    cache and the generation loop keep the ranks in step, gloo aborts on mismatched tensors or the ranks hang."""
    run = launches[launch, None]
    result = run.result()
    assert result["global_step"] == STEPS
    assert result["cached"] == [MICRO_BATCH_SIZE, STEPS * MICRO_BATCH_SIZE]  # rank 0 hit its cache, rank 1 never
    assert any(cap0 != cap1 for cap0, cap1 in zip(*result["caps"]))  # and their generate loops would differ

    initial = build_objective(grpo_stage()).state_dict()
    rank0, rank1 = run.weights(0), run.weights(1)
    assert rank0.keys() == rank1.keys() == initial.keys()
    assert all(torch.equal(rank0[key], rank1[key]) for key in initial)
    moved = {key for key in initial if not torch.equal(rank0[key], initial[key])}
    assert moved and all(key.startswith("system.llm.") for key in moved)  # the LLM trains, nothing else


@pytest.mark.parametrize("launch", ["uneven_shards"])
def test_uneven_shards_cannot_hang_a_collective_at_the_end_of_an_epoch(launches, launch):
    from e2e_tts.audio import AudioConfig
    from e2e_tts.data.loader import DataConfig, SpeechDataLoader
    from e2e_tts.text import ByteTokenizer

    shards = [arg for arg in launches[launch, None].worker_args if arg.endswith(".list")]
    samples = Counter()
    for rank in range(2):
        with pytest.warns(UserWarning, match="resampled"):
            exact = SpeechDataLoader(DataConfig(shards=shards, num_workers=0, max_duration=2.0, max_frames=200),
                                     AudioConfig(), ByteTokenizer(), rank, 2)
        samples[rank] = sum(len(batch["keys"]) for batch in exact)
    assert samples[0] != samples[1] and samples[0] + samples[1] == 11  # exact passes would be uneven

    # Resampled: every rank trains exactly STEPS_PER_EPOCH batches (one gradient all-reduce each), then the
    # worker all-gathers the counts and passes a barrier; a rank short of batches would hang before the deadline.
    assert launches[launch, None].result()["batches_per_rank"] == [STEPS_PER_EPOCH, STEPS_PER_EPOCH]
