"""The training loop: every stage runs, resumes exactly, and survives SIGKILL during training and checkpointing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import e2e_tts.train
from e2e_tts.cli import main as cli_main
from e2e_tts.config import load_config
from e2e_tts.train import build_system, main, train
from shared import MICRO_MODEL_OVERRIDES, child_env, speech_like_shards

REPO = Path(__file__).resolve().parents[1]
MICRO = MICRO_MODEL_OVERRIDES + [  # these tests check the loop, not learning
    "model.reward.max_text_length=64", "data.max_frames=300", "data.max_duration=2.0", "data.max_samples=3", "data.num_workers=0",
    "data.shuffle_buffer=8", "data.sort_buffer=6",
    "engine.log_every=1", "engine.progress_bar=false", "engine.tensorboard=false",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return speech_like_shards(tmp_path_factory.mktemp("corpus"), 18)


def stage_config(shards: str, out: Path, stage: str, steps: int, *extra: str):
    return load_config([REPO / "stages" / f"{stage}.yaml"],
                       MICRO + [f"data.shards=[{shards}]", f"output_dir={out}", f"stage.max_steps={steps}",
                                f"stage.optim.total_steps=4", "stage.optim.warmup_steps=1", "stage.optim.lr=1e-3",
                                *extra])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def joint_export(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("joint")
    return train(stage_config(shards, out, "joint", 2))


STAGES = {"joint": (), "cascade": (), "separate": ("init",), "e2e": ("init",), "grpo": ("init",), "vocoder": ("init",)}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_is_exact(stage, precision, shards, joint_export, tmp_path):
    """4 steps straight == 2 steps + a new process state (resume from checkpoint) + 2 steps, in fp32 and in bf16
    (DeepSpeed's bf16 weights with fp32 master copies, the precision GPUs train in; the loop casts the batch)."""
    extra = [f"stage.init_from={joint_export}"] if STAGES[stage] else []
    extra.append(f"engine.precision={precision}")
    torch.manual_seed(123)  # the loop must not depend on the caller's RNG state: disturb it
    train(stage_config(shards, tmp_path / "straight", stage, 4, *extra))
    train(stage_config(shards, tmp_path / "resumed", stage, 2, *extra))
    torch.manual_seed(456)
    train(stage_config(shards, tmp_path / "resumed", stage, 4, *extra))
    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert a["samples_seen"] == b["samples_seen"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), f"step {a['step']}"
    final = {name: load_file(str(tmp_path / "straight" / "export" / f"{name}.safetensors"))
             for name in ("tokenizer", "llm", "flow", "reward", "vocoder")}
    for name, tensors in final.items():
        other = load_file(str(tmp_path / "resumed" / "export" / f"{name}.safetensors"))
        for key, value in tensors.items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)
    if precision == "bf16":  # the export holds the bf16 weights that trained (in float32 files)
        trained = load_config([REPO / "stages" / f"{stage}.yaml"]).stage.trainable
        for name in trained:
            for key, value in final[name].items():
                assert torch.equal(value, value.bfloat16().float()), f"{name}.{key} is not a bf16 weight"


def test_a_failed_resume_says_what_is_missing_and_touches_nothing(shards, tmp_path, capsys):
    """A resume that cannot go on (data settings changed since the checkpoint; `latest` names a deleted folder and
    no complete checkpoint is left to fall back to): `e2e-tts train` exits 2 saying why, and the run's files are as
    they were (config.yaml was overwritten with the new settings before the checks)."""
    out = tmp_path / "run"
    train(stage_config(shards, out, "joint", 1))
    checkpoints = out / "checkpoints"
    args = ["-c", str(REPO / "stages" / "joint.yaml"), *MICRO, f"data.shards=[{shards}]", f"output_dir={out}",
            "stage.max_steps=2", "stage.optim.lr=2e-3"]
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(args + ["data.max_samples=2"]) == 2  # the data stream cannot continue exactly
    assert "settings changed: max_samples: saved 3 now 2" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before

    shutil.rmtree(checkpoints / (checkpoints / "latest").read_text())
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert main(args) == 2
    assert f"error: {checkpoints / 'latest'} names step_00000001, which does not exist, and {checkpoints} holds no " \
           f"other complete checkpoint" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_training_on_data_that_is_all_filtered_stops_saying_why(shards, tmp_path, capsys):
    """Every utterance (0.5-1.2 s) is longer than data.max_duration: the loop used to start empty epochs forever."""
    args = ["-c", str(REPO / "stages" / "joint.yaml"), *MICRO, f"data.shards=[{shards}]",
            f"output_dir={tmp_path / 'run'}", "stage.max_steps=2", "data.min_duration=0.1", "data.max_duration=0.4"]
    assert main(args) == 2
    assert "error: epoch 0 (rank 0) has no batch: all 18 samples read were dropped: duration_above_max 18 " \
           "(max_duration=0.4)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "export").exists()


@pytest.fixture(scope="module")
def fresh_export(shards, tmp_path_factory) -> Path:
    """An export of untrained weights of the micro sizes: something to damage without training first."""
    config = stage_config(shards, tmp_path_factory.mktemp("fresh"), "joint", 1)
    torch.manual_seed(0)
    return build_system(config).export(tmp_path_factory.mktemp("export"), config)


def no_training(*args, **kwargs):
    raise AssertionError("training started from an export that should have been refused")


DAMAGED_EXPORT_FILES = {  # id: (file, its new bytes, or None: deleted)
    "speakers-json-cut": ("speakers.json", b'["a"'),  # was a JSONDecodeError traceback not naming the file
    "speakers-a-mapping": ("speakers.json", b'{"a": 1}'),  # was taken for a list of one speaker
    "speakers-not-utf8": ("speakers.json", b'["\xff"]'),
    "speakers-missing": ("speakers.json", None),
    "trained-json-cut": ("trained.json", b"{"),  # was read when exporting, after the whole stage trained
    "trained-other-keys": ("trained.json", b'{"llm": true}'),
    "text-tokenizer-missing": ("text_tokenizer.json", None),  # named, but a traceback
    "text-tokenizer-json-cut": ("text_tokenizer.json", b'{"kind": '),
    "text-tokenizer-unknown-kind": ("text_tokenizer.json", b'{"kind": "x"}'),
    "llm-truncated": ("llm.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"),  # named, but a traceback
    "flow-missing": ("flow.safetensors", None),
    "config-not-yaml": ("config.yaml", b"model: {llm: [1, 2\n"),
}


@pytest.mark.parametrize("name, content", list(DAMAGED_EXPORT_FILES.values()), ids=list(DAMAGED_EXPORT_FILES))
def test_a_damaged_init_from_export_is_named_before_training(shards, fresh_export, tmp_path, capsys, monkeypatch,
                                                             name, content):
    """Every file of the export a stage starts from is checked before any training step: `e2e-tts train` exits 2
    with `error: <file>: <what is wrong>`, no traceback, and writes nothing."""
    export = tmp_path / "export"
    shutil.copytree(fresh_export, export)
    path = export / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    monkeypatch.setattr(e2e_tts.train, "TrainingEngine", no_training)
    out = tmp_path / "run"
    args = ["-c", str(REPO / "stages" / "separate.yaml"), *MICRO, f"data.shards=[{shards}]", f"output_dir={out}",
            f"stage.init_from={export}", "stage.max_steps=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert str(path) in err or (str(export) in err and name in err), err
    assert not out.exists()


def test_paths_training_cannot_read_are_refused_naming_key_and_path_before_deepspeed(shards, tmp_path, capsys,
                                                                                     monkeypatch):
    """`stage.init_from` and `data.shards` that do not exist passed the config and failed once training started;
    `e2e-tts train` now refuses them before DeepSpeed starts, while `e2e-tts config` still prints them (a config may
    be written before its data or the previous stage's export exist)."""
    monkeypatch.setattr(e2e_tts.train, "setup_distributed", no_training)
    missing_list, missing_dir = tmp_path / "nonexistent.list", tmp_path / "nonexistent"
    dangling = tmp_path / "dangling.list"
    dangling.write_text("gone-000000.tar\n")
    tar = tmp_path / "lone.tar"
    tar.write_bytes(b"")
    cases = [  # (overrides, the key and the path the error names)
        ([f"stage.init_from={missing_dir}", f"data.shards=[{shards}]"], "stage.init_from", missing_dir),
        ([f"stage.init_from={tar}", f"data.shards=[{shards}]"], "stage.init_from", tar),  # a file, not an export
        ([f"data.shards=[{missing_list}]"], "data.shards", missing_list),
        ([f"data.shards=[{shards},{missing_dir}.tar]"], "data.shards", f"{missing_dir}.tar"),
        ([f"data.shards=[{dangling}]"], "data.shards", tmp_path / "gone-000000.tar"),
        ([f"data.shards=[{tar}]"], "data.shards", tar),  # no .stats.json to name the speakers (no init_from)
        ([f"data.shards=[{shards}]", f"data.valid_shards=[{missing_list}]"], "data.valid_shards", missing_list),
    ]
    for overrides, key, path in cases:
        args = ["-c", str(REPO / "stages" / "joint.yaml"), *MICRO, f"output_dir={tmp_path / 'run'}", *overrides]
        assert main(args) == 2, overrides
        err = capsys.readouterr().err
        assert err.startswith(f"error: {key}: ") and str(path) in err and "Traceback" not in err, err
        assert cli_main(["config", *args]) == 0
        capsys.readouterr()
    assert not (tmp_path / "run").exists()


def test_intermediate_exports_hold_the_weights_of_their_step(shards, tmp_path):
    """``engine.export_every`` exports mid-stage weights: step 2 of a 3-step run equals a 2-step run's export."""
    train(stage_config(shards, tmp_path / "long", "joint", 3, "engine.export_every=2"))
    train(stage_config(shards, tmp_path / "short", "joint", 2))
    assert sorted(p.name for p in (tmp_path / "long" / "exports").iterdir()) == ["step_000002"]
    for name in ("tokenizer", "llm", "flow", "reward"):
        middle = load_file(str(tmp_path / "long" / "exports" / "step_000002" / f"{name}.safetensors"))
        short = load_file(str(tmp_path / "short" / "export" / f"{name}.safetensors"))
        for key, value in short.items():
            torch.testing.assert_close(middle[key], value, rtol=1e-5, atol=1e-6)


def test_validation_is_logged_and_leaves_training_untouched(shards, tmp_path):
    """Validating every 2 updates logs the held-out means at steps 2 and 3 (the last) and changes neither the
    training losses nor the weights: its randomness comes from a forked RNG."""
    train(stage_config(shards, tmp_path / "plain", "joint", 3))
    train(stage_config(shards, tmp_path / "validated", "joint", 3, f"data.valid_shards=[{shards}]",
                       "engine.valid_every=2"))
    plain, validated = metrics(tmp_path / "plain"), metrics(tmp_path / "validated")
    held_out = [m for m in validated if "valid/loss" in m]
    assert [m["step"] for m in held_out] == [2, 3]
    assert all(m["valid/utterances"] == 18 and m["valid/skipped"] == 0 for m in held_out)
    assert {"valid/llm_nll", "valid/llm_acc_prompted", "valid/flow_cfm", "valid/reward"} <= held_out[0].keys()
    assert held_out[0]["valid/loss"] != held_out[1]["valid/loss"]  # the weights moved in between
    trained = [m for m in validated if "loss" in m]
    assert [m["loss"] for m in trained] == pytest.approx([m["loss"] for m in plain], rel=1e-6)
    for name in ("tokenizer", "llm", "flow", "reward"):
        a = load_file(str(tmp_path / "plain" / "export" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "validated" / "export" / f"{name}.safetensors"))
        for key, value in a.items():
            torch.testing.assert_close(b[key], value, rtol=1e-6, atol=1e-7)


def test_init_modules_loads_only_the_named_modules(shards, joint_export, tmp_path):
    """A consumer can restart from scratch (here at another size) on the previous stage's frozen tokenizer."""
    config = stage_config(shards, tmp_path / "fresh", "separate", 1, f"stage.init_from={joint_export}",
                          "stage.init_modules=[tokenizer,llm,reward]", "model.flow.depth=2")
    train(config)
    export = tmp_path / "fresh" / "export"
    for key, value in load_file(str(joint_export / "tokenizer.safetensors")).items():
        assert torch.equal(load_file(str(export / "tokenizer.safetensors"))[key], value)
    # the joint flow has one block: loading it into this two-block flow would have failed
    assert any(key.startswith("transformer.blocks.1.") for key in load_file(str(export / "flow.safetensors")))
    with pytest.raises(ValueError, match=r"stage.init_modules: names unknown \['tokenizr'\]"):
        train(stage_config(shards, tmp_path / "typo", "separate", 1, f"stage.init_from={joint_export}",
                           "stage.init_modules=[tokenizr]"))


def frozen_modules_are_untouched(stage: str, init: Path, out: Path, trainable: set[str]) -> None:
    for name in ("tokenizer", "llm", "flow", "reward", "vocoder"):
        before = load_file(str(init / f"{name}.safetensors"))
        after = load_file(str(out / "export" / f"{name}.safetensors"))
        changed = any(not torch.equal(before[k], after[k]) for k in before)
        assert changed == (name in trainable), f"{stage}: {name} changed={changed}"


@pytest.mark.slow
def test_separate_e2e_and_grpo_train_only_their_modules(shards, joint_export, tmp_path):
    for stage, trainable in (("separate", {"llm", "flow", "reward"}), ("e2e", {"llm"}), ("grpo", {"llm"})):
        out = tmp_path / stage
        train(stage_config(shards, out, stage, 2, f"stage.init_from={joint_export}"))
        frozen_modules_are_untouched(stage, joint_export, out, trainable)


def launch(config_path: Path, prelude: str = "") -> subprocess.Popen:
    code = f"{prelude}\nfrom e2e_tts.train import main\nraise SystemExit(main(['-c', {str(config_path)!r}]))"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def write_config(config, path: Path) -> Path:
    from e2e_tts.config import save_config

    save_config(config, path)
    return path


@pytest.mark.slow
def test_sigkill_during_training_and_during_checkpoint_write(shards, tmp_path):
    steps = ["engine.save_every=2"]
    train(stage_config(shards, tmp_path / "straight", "joint", 6, *steps))
    reference = metrics(tmp_path / "straight")

    # 1. Killed mid-training, after the step-2 checkpoint: the rerun resumes from step 2.
    out = tmp_path / "killed"
    config = write_config(stage_config(shards, out, "joint", 6, *steps), tmp_path / "killed.yaml")
    child = launch(config)
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        if (out / "metrics.jsonl").is_file() and any(m["step"] >= 3 for m in metrics(out)):
            break
        time.sleep(0.2)
    assert child.poll() is None, child.stdout.read()
    child.send_signal(signal.SIGKILL)
    child.wait()
    rerun = launch(config)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "resumed joint at step" in output

    # 2. Killed while writing the step-4 checkpoint (its files written, `latest` not yet moved).
    out_torn = tmp_path / "torn"
    torn = write_config(stage_config(shards, out_torn, "joint", 6, *steps), tmp_path / "torn.yaml")
    prelude = ("import os, signal, e2e_tts.engine as engine\n"
               "original = engine._atomic_write\n"
               "def killed_midway(path, text):\n"
               "    if text.endswith('00000004'): os.kill(os.getpid(), signal.SIGKILL)\n"
               "    original(path, text)\n"
               "engine._atomic_write = killed_midway")
    child = launch(torn, prelude)
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL
    assert (out_torn / "checkpoints" / "latest").read_text() == "step_00000002"
    rerun = launch(torn)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output

    for run in (out, out_torn):
        by_step = {m["step"]: m for m in metrics(run)}  # a resumed step is logged again: keep the last
        assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
        for ref in reference:
            got = by_step[ref["step"]]
            assert got["samples_seen"] == ref["samples_seen"], f"{run.name} step {ref['step']}"
            assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), f"{run.name} step {ref['step']}"
