"""recipes/paper/slurm.sh, run unchanged on two simulated nodes of one machine, trains like one process.

Slurm is simulated by the job's variables (two nodes, one rank each: SLURM_GPUS_PER_NODE=1) and two executables on
PATH: ``scontrol show hostnames`` names the two nodes, and ``srun`` runs a command on the first node (the head
address query) or once per node, in parallel, each with its SLURM_NODEID and SLURM_PROCID (the launch line). So the
script's own torch.distributed.run line starts two torchrun agents that meet by c10d rendezvous at the address the
head query returned, and their ranks train the stage through ``-m e2e_tts.train`` with the paper config and the
test's overrides.

The reference is the same stage in this process: one rank that accumulates two micro-batches per update, its two
loader workers reading the shards that the two ranks read (exact epochs, no shuffle, chunks of one batch), so
that both runs follow the gradients of the same global batches. The stage is deterministic (the joint stage's
tokenizer, LLM and reward model without the flow, whose loss draws noise from each rank's own RNG, and without
dropout). The training loss in metrics.jsonl is rank 0's own micro-batch's, so the runs are compared by what both
compute over all ranks: the gradient norm of each update, the validation losses after each update (every rank
scores the same held-out shard) and the exported weights. Tolerances as in test_distributed; measured
bit-identical. The ranks run one OpenMP thread each (THREADS_PER_RANK=1), as this process does: with the script's
default of 8 a matmul sums its terms in another order, and after 3 Adam updates weights differ by up to 1.5e-5.
"""

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shared import MICRO_MODEL_OVERRIDES, child_env, speech_like_shards
from test_distributed import free_port

from e2e_tts.config import load_config
from e2e_tts.system import MODULES
from e2e_tts.train import train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "paper" / "slurm.sh"
STEPS = 3
DEADLINE_S = 300

pytestmark = pytest.mark.slow

SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames LIST: the job's two nodes, in one write as scontrol's buffered output comes (the script
# reads the first line with head under pipefail: a second write after head has exited would be a SIGPIPE)
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: unexpected arguments $*" >&2; exit 2; }
cat <<NODES
node0
node1
NODES
"""
SRUN = """#!/usr/bin/env bash
# srun --nodes=1 --ntasks=1 -w NODE COMMAND: the command once (every node is this machine);
# srun COMMAND: the command once per node, in parallel, with that node's Slurm variables
if [ "$1" = --nodes=1 ]; then shift 4; exec "$@"; fi
pids=()
for node in 0 1; do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""

# Deterministic: no flow (its loss draws noise and times), no dropout, no input noise (the stage's default).
STAGE = """stage:
  name: slurm-test
  objective: multitask
  trainable: [tokenizer, llm, reward]
  loss_weights: {llm: 0.1, reward: 1.0}
  optim: {lr: 3.0e-3, warmup_steps: 4, total_steps: 100}
"""


def fake_slurm(directory: Path) -> Path:
    """A folder with the fake ``scontrol`` and ``srun``."""
    directory.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (directory / name).write_text(text)
        (directory / name).chmod(stat.S_IRWXU)
    return directory


def metrics(out: Path) -> dict[int, dict]:
    """metrics.jsonl of a run by step (training and validation records merged)."""
    by_step: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(record)
    return by_step


def test_slurm_script_on_two_simulated_nodes_trains_like_one_process(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "valid").mkdir()
    train_list = speech_like_shards(tmp_path / "train", 12)  # two shards of 6 utterances: one per rank
    valid_list = speech_like_shards(tmp_path / "valid", 3)
    stage = tmp_path / "stage.yaml"
    stage.write_text(STAGE)
    overrides = MICRO_MODEL_OVERRIDES + [
        "model.llm.head_dim=null", "model.flow.encoder_depth=1", "model.reward.dropout=0.0",
        "model.reward.max_text_length=64",
        f"data.shards=[{train_list}]", f"data.valid_shards=[{valid_list}]", "data.resampled=false",
        "data.steps_per_epoch=null", "data.shuffle_buffer=0", "data.sort_buffer=3", "data.max_samples=3",
        "data.prefetch_factor=2", f"stage.max_steps={STEPS}",
        "engine.log_every=1", "engine.valid_every=1", "engine.tensorboard=false", "engine.progress_bar=false",
    ]
    env = child_env(PATH=f"{fake_slurm(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1",
                    SLURM_JOB_NODELIST="node[0-1]", SLURM_NNODES="2", SLURM_GPUS_PER_NODE="1",
                    SLURM_JOB_ID=str(os.getpid()), RDZV_PORT=str(free_port()), THREADS_PER_RANK="1")
    log = tmp_path / "slurm.log"
    with open(log, "w") as handle:
        job = subprocess.Popen(["bash", str(SCRIPT), str(stage), str(tmp_path / "nodes"), *overrides,
                                "data.num_workers=1"],
                               cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Meanwhile the reference, in this process.
        train(load_config([REPO / "recipes" / "paper" / "config.yaml", stage],
                          [*overrides, "data.num_workers=2", "engine.gradient_accumulation_steps=2",
                           f"output_dir={tmp_path / 'single'}"]))
        job.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the Slurm job did not finish within {DEADLINE_S} s (hung?)\n{log.read_text()[-5000:]}")
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)  # its own session: the script, srun, both agents and their ranks
            job.wait()
    assert job.returncode == 0, log.read_text()[-5000:]

    nodes, single = metrics(tmp_path / "nodes"), metrics(tmp_path / "single")
    assert sorted(nodes) == sorted(single) == list(range(1, STEPS + 1))
    assert single[STEPS]["valid/loss"] < single[1]["valid/loss"]  # the stage trains
    for step, expected in single.items():
        got = nodes[step]
        assert got["samples_seen"] == expected["samples_seen"] / 2  # each rank read half of every global batch
        assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5), step
        for key in [key for key in expected if key.startswith("valid/")]:
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), (step, key)
    for module in MODULES:
        exported = load_file(str(tmp_path / "nodes" / "export" / f"{module}.safetensors"))
        reference = load_file(str(tmp_path / "single" / "export" / f"{module}.safetensors"))
        assert exported.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-6, msg=f"{module}.{key}")
