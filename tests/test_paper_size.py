"""The paper's sizes train: one optimizer update of each module at its ``paper`` preset, on CPU, through
``e2e-tts train`` with ``recipes/paper/config.yaml``.

Each update is ``python -m e2e_tts.train`` in a process of its own, so that its memory is returned before the next
module's: the module under test at the paper size with real (randomly initialised) weights, the other modules at
the micro sizes of ``shared.MICRO_MODEL_OVERRIDES`` (which keeps the paper's FSQ codebook of 3^8 codes: it sizes the
LLM's vocabulary and the consumers' embeddings), the recipe's phoneme text front end, a batch of one utterance of
about a second. The stage is the one that trains the module (``separate`` with the module alone trainable; ``cascade`` for
the tokenizer, which only learns through a consumer; ``vocoder``), and the process writes its checkpoint and export
as any stage does. Its peak memory (maximum resident set, from ``os.wait4``) is printed and recorded as the test's
``peak_rss_gib`` property (``--junitxml``).

Memory: ZeRO-2 in fp32 on one rank holds 27-30 bytes per trained parameter at the optimizer step (weights, the
gradient bucket and partition, the flat gradient, the fp32 master copy, AdamW's two moments and its temporary), ZeRO-3
34, so a 0.6B module peaks at 16-17.5 GiB: the modules run one at a time, and a case is skipped, saying so, when the
machine has less memory available than it was measured to take (:data:`PEAK_GIB`; another process may hold it).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2e_tts.config import load_config, to_object
from e2e_tts.system import TTSSystem
from e2e_tts.text import build_text_tokenizer
from shared import MICRO_MODEL_OVERRIDES, child_env, speech_like_shards

REPO = Path(__file__).resolve().parents[1]
PAPER_RECIPE = REPO / "recipes" / "paper" / "config.yaml"
STAGES = {"tokenizer": "cascade", "llm": "separate", "flow": "separate", "reward": "separate", "vocoder": "vocoder"}
KEPT_AT_PAPER_SIZE = ("model.tokenizer.levels", "model.reward.max_text_length")  # codebook; the phoneme texts fit
SHORT_UPDATE = [
    "data.num_workers=0", "data.max_samples=1", "data.max_duration=1.2", "data.max_frames=60", "data.sort_buffer=4",
    "data.shuffle_buffer=0", "stage.max_steps=1", "stage.optim.warmup_steps=0",
    # Decoupled weight decay moves every trained matrix by lr * 0.01 of itself, well above float32's resolution
    # (the stages' 1e-5 would not show a matrix that got no gradient but is in the optimizer).
    "stage.optim.lr=1e-3",
    "engine.log_every=1", "engine.progress_bar=false", "engine.tensorboard=false",
]

# The highest peak resident memory of each case in two runs on CPU (torch 2.13, DeepSpeed 0.19; it varies by up to
# 1.8 GiB between runs) plus at least 0.5 GiB, rounded up: 12.5 GiB (LLM, 449M parameters with the phoneme
# vocabulary), 15.7 (LLM, ZeRO-3), 15.9 (flow, 515M), 16.4 (reward model, 605M), 17.3 (tokenizer, 594M), 2.7
# (vocoder, 13.5M, and its discriminators, 41M).
PEAK_GIB = {("llm", 2): 13, ("llm", 3): 17, ("flow", 2): 17, ("reward", 2): 17, ("tokenizer", 2): 18,
            ("vocoder", 2): 4}

# The child: `e2e-tts train` as it runs, with the initial weights of the module under test sampled as it is built
# (up to 4096 evenly spaced elements of each parameter, with their positions) into argv[2].
CHILD = """
import sys
import torch
import e2e_tts.train as loop

def build_and_record(config, build=loop.build_system):
    system = build(config)
    record = {}
    for key, value in getattr(system, sys.argv[1]).named_parameters():
        index = torch.linspace(0, value.numel() - 1, min(value.numel(), 4096)).long()
        record[key] = (index, value.detach().flatten()[index].clone())
    torch.save(record, sys.argv[2])
    return system

loop.build_system = build_and_record
raise SystemExit(loop.main(sys.argv[3:]))
"""


def others_micro(module: str) -> list[str]:
    """The micro sizes of every module but ``module``."""
    return [item for item in MICRO_MODEL_OVERRIDES if item.startswith("model.")
            and item.split(".")[1] != module and not item.startswith(KEPT_AT_PAPER_SIZE)]


def paper_shapes(module: str, speakers: list[str]) -> dict[str, torch.Size]:
    """The shapes of ``module``'s weights at the paper preset (built on the meta device: no memory)."""
    config = load_config([PAPER_RECIPE])
    with torch.device("meta"):
        system = TTSSystem(to_object(config.model), build_text_tokenizer(to_object(config.text)), speakers,
                           to_object(config.audio))
    return {key: value.shape for key, value in getattr(system, module).state_dict().items()}


def available_gib() -> float:
    """The memory the kernel can give a new process without swapping (``MemAvailable``), in GiB."""
    with open("/proc/meminfo") as handle:
        kib = next(int(line.split()[1]) for line in handle if line.startswith("MemAvailable:"))
    return kib / 2**20


def run_measured(args: list[str], log: Path) -> tuple[int, float]:
    """Runs ``args`` with its output in ``log``; returns its exit code and peak resident memory in GiB."""
    with open(log, "w") as handle:
        child = subprocess.Popen(args, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                 env=child_env(OMP_NUM_THREADS=str(os.cpu_count() or 1)))
        _, status, usage = os.wait4(child.pid, 0)  # this child's own maximum RSS (KiB on Linux)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 2**20


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return speech_like_shards(tmp_path_factory.mktemp("corpus"), 4)


@pytest.mark.slow
@pytest.mark.parametrize("module, zero_stage", [("llm", 2), ("llm", 3), ("flow", 2), ("reward", 2),
                                                ("tokenizer", 2), ("vocoder", 2)])
def test_one_update_at_the_paper_size(module, zero_stage, shards, tmp_path, record_property):
    """The loss is finite, the gradient norm finite and non-zero, and every weight matrix of the module moved."""
    if available_gib() < PEAK_GIB[module, zero_stage]:
        pytest.skip(f"needs about {PEAK_GIB[module, zero_stage]} GiB of memory, {available_gib():.1f} GiB available")
    out = tmp_path / "run"
    stage = STAGES[module]
    alone = [f"stage.trainable=[{module}]"] + [f"stage.loss_weights.{other}=0" for other in ("llm", "flow", "reward")
                                              if other != module] if stage == "separate" else []
    args = ["-c", str(PAPER_RECIPE), "-c", str(REPO / "stages" / f"{stage}.yaml"), *others_micro(module), *alone,
            *SHORT_UPDATE, f"data.shards=[{shards}]", f"engine.zero_stage={zero_stage}", f"output_dir={out}"]
    try:
        code, peak = run_measured([sys.executable, "-c", CHILD, module, str(tmp_path / "initial.pt"), *args],
                                  tmp_path / "train.log")
        record_property("peak_rss_gib", round(peak, 2))
        print(f"{module} ZeRO-{zero_stage}: peak RSS {peak:.2f} GiB")
        assert code == 0, (tmp_path / "train.log").read_text()[-3000:]
        [update] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert update["step"] == 1 and math.isfinite(update["loss"]), update
        assert math.isfinite(update["grad_norm"]) and update["grad_norm"] > 0, update
        trained = load_file(str(out / "export" / f"{module}.safetensors"))
        speakers = json.loads((out / "export" / "speakers.json").read_text())
        assert {key: value.shape for key, value in trained.items()} == paper_shapes(module, speakers)
        initial = torch.load(tmp_path / "initial.pt")
        matrices = [key for key, (_, before) in initial.items() if trained[key].dim() >= 2]
        unmoved = [key for key in matrices if torch.equal(trained[key].flatten()[initial[key][0]], initial[key][1])]
        assert matrices and not unmoved, unmoved
    finally:
        shutil.rmtree(out, ignore_errors=True)  # checkpoints of a 0.6B module take ~10 GB
