"""TrainingEngine in one process: schedule, checkpoint layout and refusals, exact resume, ZeRO-3 export, freezing.

The model and data are the deterministic tiny setup of tests/distributed_worker.py (joint stage on tokenizer, LLM
and reward model; flow and vocoder frozen), so a loss is a pure function of the weights and the step.
"""

import json
import logging
import random
import re
import shutil

import numpy as np
import pytest
import torch
from distributed_worker import (FROZEN, MICRO_BATCHES, build_engine, build_objective, full_state_dict, micro_batch,
                                tiny_stage, train_global_batches)

from e2e_tts.engine import (COMPLETE, LATEST, RANK_STATE, CheckpointError, EngineConfig, OptimConfig, TrainingEngine,
                            capture_rng, consolidated_state_dict, load_checkpoint_file, lr_factor, restore_rng,
                            setup_distributed)
from e2e_tts.train import move_to

PEAK_LR = 3e-3
OPTIM = dict(lr=PEAK_LR, warmup_steps=5, total_steps=100)  # every update of these short runs has its own lr


def expected_lr(step):
    return PEAK_LR * lr_factor(step, OptimConfig(**OPTIM))


@pytest.fixture(scope="module")
def dist():
    return setup_distributed()


def new_engine(dist, zero_stage=2, keep_last=2, accumulation=MICRO_BATCHES, **optim):
    stage = tiny_stage(**{**OPTIM, **optim})
    return build_engine(build_objective(stage), stage, dist, zero_stage, accumulation, keep_last)


def save(engine, directory):
    return engine.save(directory, {"step": engine.global_step, "stage": "engine-test"},
                       {"data": {"batches": engine.global_step}, "rng": capture_rng()})


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def frozen_parameters(module):
    """(name, parameter) of the frozen modules of the objective (names ``system.<module>.*``)."""
    return [(n, p) for n, p in module.named_parameters() if n.split(".")[1] in FROZEN]


# ---- learning-rate schedule --------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, expected", [
    # warm-up 4 (steps 0..3: 1/4 .. 4/4), then from step 4 a decay to min_lr_ratio 0.1 at step 12 (held after)
    ("cosine", {0: 0.25, 2: 0.75, 3: 1.0, 4: 1.0, 6: 0.1 + 0.9 * 0.5 * (1 + 2 ** -0.5), 8: 0.55, 12: 0.1, 50: 0.1}),
    ("linear", {0: 0.25, 3: 1.0, 4: 1.0, 6: 0.775, 8: 0.55, 10: 0.325, 12: 0.1, 50: 0.1}),
    ("constant", {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 12: 1.0, 50: 1.0}),
])
def test_lr_factor_warms_up_linearly_then_decays(schedule, expected):
    config = OptimConfig(schedule=schedule, warmup_steps=4, total_steps=12, min_lr_ratio=0.1)
    assert {step: lr_factor(step, config) for step in expected} == pytest.approx(expected, abs=1e-12)


def test_lr_factor_without_warm_up_starts_at_peak_and_unknown_schedules_are_refused():
    assert lr_factor(0, OptimConfig(warmup_steps=0, total_steps=10)) == 1.0
    assert lr_factor(10, OptimConfig(warmup_steps=0, total_steps=10, min_lr_ratio=0.2)) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="schedule must be one of constant, linear, cosine, got 'step'"):
        OptimConfig(schedule="step", warmup_steps=2)


def test_lr_follows_optimizer_updates_not_micro_steps(dist):
    engine = new_engine(dist, zero_stage=1, accumulation=2)
    assert engine.lr == pytest.approx(expected_lr(0))
    lrs, updates = [], []
    for micro_step in range(6):
        _, metrics, updated = engine.train_step(micro_batch(micro_step // 2, micro_step % 2))
        updates.append(updated)
        lrs.append(engine.lr)
        assert engine.global_step == (micro_step + 1) // 2
        assert engine.lr == pytest.approx(expected_lr(engine.global_step))
        assert ("grad_norm" in metrics) == updated
    assert updates == [False, True] * 3
    assert lrs[0] < lrs[1] == lrs[2] < lrs[3] == lrs[4] < lrs[5]  # one change per update, warming up


# ---- checkpoints -------------------------------------------------------------------------------------------------

def test_save_writes_a_complete_tag_then_points_latest_at_it(dist, tmp_path):
    engine = new_engine(dist, zero_stage=2)
    assert engine.load(tmp_path) is None  # nothing to resume
    train_global_batches(engine, dist, 1)
    path = save(engine, tmp_path)
    assert path == tmp_path / "step_00000001"
    expected = draws()  # the RNG state saved is the one before these draws
    assert (tmp_path / LATEST).read_text() == "step_00000001"
    marker = json.loads((path / COMPLETE).read_text())
    assert marker["step"] == 1 and marker["world_size"] == 1
    assert marker["files"] == {p.name: p.stat().st_size for p in path.iterdir() if p.name != COMPLETE}
    assert {RANK_STATE.format(rank=0), "mp_rank_00_model_states.pt"} <= marker["files"].keys()
    assert not list(tmp_path.glob("*.tmp"))

    client_state, rank_state = new_engine(dist, zero_stage=2).load(tmp_path)
    assert client_state["step"] == 1 and client_state["stage"] == "engine-test"
    assert rank_state["data"] == {"batches": 1}
    restore_rng(rank_state["rng"])
    assert draws() == expected


def test_load_refuses_an_incomplete_checkpoint_and_another_world_size(dist, tmp_path):
    engine = new_engine(dist, zero_stage=2)
    train_global_batches(engine, dist, 1)
    path = save(engine, tmp_path)
    marker = json.loads((path / COMPLETE).read_text())

    (path / COMPLETE).write_text(json.dumps({**marker, "world_size": 2}))
    with pytest.raises(RuntimeError, match="written by 2 ranks, this run has 1"):
        new_engine(dist, zero_stage=2).load(tmp_path)

    (path / COMPLETE).write_text(json.dumps({"step": 1, "world_size": 1}))  # before markers listed the files
    with pytest.raises(CheckpointError, match="names step_00000001, which was written by an older e2e-tts"):
        new_engine(dist, zero_stage=2).load(tmp_path)

    (path / COMPLETE).unlink()  # as if killed after DeepSpeed's files but before the marker
    with pytest.raises(CheckpointError, match=f"names step_00000001, which is incomplete \\(no {COMPLETE}: its "
                                              f"save did not finish\\), and .* holds no other complete checkpoint"):
        new_engine(dist, zero_stage=2).load(tmp_path)


def test_latest_naming_a_broken_checkpoint_says_what_is_missing_and_falls_back(dist, tmp_path, caplog):
    engine = new_engine(dist, zero_stage=2)
    for _ in range(2):
        train_global_batches(engine, dist, 1)
        save(engine, tmp_path)
    newest = tmp_path / "step_00000002"
    optim = next(newest.glob("*optim_states.pt"))
    for damage, missing in [(lambda: optim.write_bytes(optim.read_bytes()[:100]),
                             f"has {optim.name} of 100 bytes, {optim.stat().st_size} were written"),
                            (optim.unlink, f"is missing {optim.name}"),
                            (lambda: shutil.rmtree(newest), "does not exist")]:
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="e2e_tts.engine"):
            _, rank_state = new_engine(dist, zero_stage=2).load(tmp_path)
        assert rank_state["data"] == {"batches": 1}  # the older checkpoint
        assert f"{tmp_path / LATEST} names step_00000002, which {missing}; resuming from step_00000001, the " \
               f"newest complete checkpoint" in caplog.text
    assert (tmp_path / LATEST).read_text() == "step_00000002"  # nothing is rewritten by a load

    (tmp_path / "step_00000001" / RANK_STATE.format(rank=0)).unlink()
    with pytest.raises(CheckpointError, match=re.escape(
            f"{tmp_path / LATEST} names step_00000002, which does not exist, and {tmp_path} holds no other "
            f"complete checkpoint (step_00000001 is missing {RANK_STATE.format(rank=0)})")):
        new_engine(dist, zero_stage=2).load(tmp_path)


@pytest.mark.parametrize("zero_stage, precision, offload", [(0, "bf16", False), (1, "bf16", False),
                                                         (3, "bf16", False), (2, "fp32", True)])
def test_deepspeed_checkpoints_of_every_kind_load_under_the_allow_list(dist, tmp_path, zero_stage, precision,
                                                                      offload):
    """The allow-list of DeepSpeed types is complete for the settings the engine offers (ZeRO 1-3 in fp32 are
    resumed by the tests above)."""
    stage = tiny_stage(**OPTIM)
    objective = build_objective(stage)
    config = EngineConfig(zero_stage=zero_stage, precision=precision, offload_optimizer=offload, tensorboard=False,
                          progress_bar=False)
    engine = TrainingEngine(objective, stage.optim, config, dist, objective.system.external_parameters())
    engine.train_step(move_to(micro_batch(0, 0), dist.device, engine.dtype))
    files = sorted(save(engine, tmp_path).glob("*.pt"))
    assert files
    for file in files:
        load_checkpoint_file(file)


class PlantedCode:
    """What a checkpoint crafted to run code holds: unpickling it creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_resume_refuses_code_planted_in_any_checkpoint_file(dist, tmp_path, zero_stage):
    """A checkpoint someone hands over cannot run code: each file with a planted pickle (beside the real state,
    so that the file is otherwise valid) is refused with an error naming it, and the code never runs."""
    engine = new_engine(dist, zero_stage)
    train_global_batches(engine, dist, 1)
    path = save(engine, tmp_path / "checkpoints")
    marker = tmp_path / "code_ran"
    loader = new_engine(dist, zero_stage)
    files = sorted(p for p in path.iterdir() if p.name != COMPLETE)
    assert len(files) == 3
    for file in files:
        original = file.read_bytes()
        if file.suffix == ".pt":
            state = torch.load(file, weights_only=False)  # written by this test: trusted
            torch.save({**state, "planted": PlantedCode(marker)}, file)
        else:
            torch.save({"planted": PlantedCode(marker)}, file)
        _refresh_sizes(path)  # planted by someone who also fixed the sizes: only the content check is left
        with pytest.raises(CheckpointError, match=re.escape(str(file))):
            loader.load(tmp_path / "checkpoints")
        assert not marker.exists(), file.name
        if zero_stage == 3 and file.suffix == ".pt":
            with pytest.raises(CheckpointError, match=re.escape(str(path))):
                consolidated_state_dict(tmp_path / "checkpoints")
            assert not marker.exists(), file.name
        file.write_bytes(original)
    _refresh_sizes(path)
    assert loader.load(tmp_path / "checkpoints") is not None and loader.global_step == 1


def _refresh_sizes(path):
    marker = json.loads((path / COMPLETE).read_text())
    marker["files"] = {name: (path / name).stat().st_size for name in marker["files"]}
    (path / COMPLETE).write_text(json.dumps(marker))


def test_keep_last_prunes_older_tags_but_never_the_one_latest_names(dist, tmp_path):
    engine = new_engine(dist, zero_stage=2, keep_last=2)
    for _ in range(3):
        train_global_batches(engine, dist, 1)
        save(engine, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]

    # A torn directory from an earlier, longer run sorts after every new tag.
    (tmp_path / "step_00000099").mkdir()
    train_global_batches(engine, dist, 1)
    save(engine, tmp_path)
    assert (tmp_path / LATEST).read_text() == "step_00000004"
    assert (tmp_path / "step_00000004" / COMPLETE).is_file()
    assert not (tmp_path / "step_00000002").exists()


def test_keep_last_counts_complete_checkpoints_only(dist, tmp_path):
    """A torn directory must not cost a complete fallback checkpoint (TrainingEngine._prune's docstring)."""
    engine = new_engine(dist, zero_stage=2, keep_last=2)
    train_global_batches(engine, dist, 1)
    save(engine, tmp_path)
    (tmp_path / "step_00000099").mkdir()  # torn, newer than anything this run will write
    train_global_batches(engine, dist, 1)
    save(engine, tmp_path)
    complete = sorted(p.parent.name for p in tmp_path.glob(f"step_*/{COMPLETE}"))
    assert complete == ["step_00000001", "step_00000002"]


# ---- exact resume ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_resume_continues_exactly_like_an_uninterrupted_run(dist, tmp_path, zero_stage):
    straight = new_engine(dist, zero_stage)
    straight_losses, straight_norms = train_global_batches(straight, dist, 4)

    first = new_engine(dist, zero_stage)
    losses, norms = train_global_batches(first, dist, 2)
    save(first, tmp_path)
    del first
    resumed = new_engine(dist, zero_stage)  # fresh weights and optimizer, overwritten by the checkpoint
    assert resumed.load(tmp_path) is not None
    assert resumed.global_step == 2
    assert resumed.lr == pytest.approx(expected_lr(2))
    more_losses, more_norms = train_global_batches(resumed, dist, 2)

    assert straight_losses[0] != straight_losses[3]  # the run does move
    torch.testing.assert_close(losses + more_losses, straight_losses, rtol=1e-5, atol=0)
    torch.testing.assert_close(norms + more_norms, straight_norms, rtol=1e-5, atol=0)
    assert resumed.global_step == straight.global_step == 4 and resumed.lr == straight.lr
    final, expected = full_state_dict(resumed), full_state_dict(straight)
    assert final.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_eval_step_scores_the_live_weights_without_an_update(dist, zero_stage):
    """Validation's forward: under ZeRO-3 too, the metrics of the partitioned weights equal those of a plain
    copy of them in eval mode, and neither the weights nor the step move; training goes on afterwards."""
    engine = new_engine(dist, zero_stage)
    train_global_batches(engine, dist, 1)
    before = full_state_dict(engine)
    batch = micro_batch(99, 0)
    metrics = engine.eval_step(batch)
    reference = build_objective(tiny_stage(**OPTIM))
    reference.load_state_dict(before)
    with torch.no_grad():
        _, expected = reference.eval()(batch)
    assert metrics.keys() == expected.keys() and "llm_acc_prompted" in metrics
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert engine.global_step == 1
    assert all(torch.equal(value, before[key]) for key, value in full_state_dict(engine).items())
    train_global_batches(engine, dist, 1)
    assert engine.global_step == 2


# ---- ZeRO-3 export and frozen modules ----------------------------------------------------------------------------

def test_consolidated_zero3_checkpoint_equals_the_live_weights_including_frozen_ones(dist, tmp_path):
    engine = new_engine(dist, zero_stage=3)
    train_global_batches(engine, dist, 2)
    save(engine, tmp_path)
    live = full_state_dict(engine)
    consolidated = consolidated_state_dict(tmp_path)
    frozen = [name for name, _ in frozen_parameters(engine.module)]
    assert frozen and set(frozen) <= consolidated.keys()
    params = {name for name, _ in engine.module.named_parameters()}
    assert params <= consolidated.keys() and consolidated.keys() <= live.keys()
    for key, value in consolidated.items():
        assert value.shape == live[key].shape and torch.equal(value, live[key]), key


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_frozen_modules_get_no_optimizer_state_and_stay_bit_identical(dist, zero_stage):
    engine = new_engine(dist, zero_stage, weight_decay=0.1)  # decay would move any frozen weight it reached
    before = {name: weight.clone() for name, weight in full_state_dict(engine).items()}
    train_global_batches(engine, dist, 2)
    after = full_state_dict(engine)

    frozen = [name for name, _ in frozen_parameters(engine.module)]
    assert frozen and all(torch.equal(after[name], before[name]) for name in frozen)
    trainable = [name for name, p in engine.module.named_parameters() if p.requires_grad]
    assert all(not torch.equal(after[name], before[name]) for name in trainable)

    optimizer = engine.optimizer
    groups = optimizer.fp16_groups if zero_stage == 3 else optimizer.bit16_groups
    optimized = {id(p) for group in groups for p in group}
    assert optimized == {id(p) for p in engine.module.parameters() if p.requires_grad}
    state_numel = sum(state["exp_avg"].numel() for state in optimizer.optimizer.state.values())
    trainable_numel = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters() if p.requires_grad)
    assert state_numel == trainable_numel
