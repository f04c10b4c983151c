"""The tiny recipe end to end in quick mode: corpus, shards, every stage, synthesis, evaluation, report."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from shared import child_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
def test_quick_recipe_runs_every_stage(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    # A schedule flag and an override after "--" (every stage logs every update) ride along.
    run = subprocess.run(["bash", "recipes/tiny/run.sh", "--quick", "--data", str(data), "--exp", str(exp),
                          "--separate-steps", "3", "--", "engine.log_every=1"],
                         cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = Path(f"{exp}_quick_seed0")
    assert json.loads(Path(f"{data}_quick/corpus/corpus.json").read_text())["domain"] == "demo"  # the default
    for stage, steps in (("joint", 4), ("separate", 3), ("e2e", 2), ("grpo", 2), ("vocoder", 2)):
        records = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        metrics = [m for m in records if "loss" in m]
        assert [m["step"] for m in metrics] == list(range(1, steps + 1)), stage
        assert all(m["loss"] == m["loss"] for m in metrics), stage  # not NaN
        # the valid split, scored after the last update (the quick schedule ends before engine.valid_every)
        held_out = [m for m in records if "valid/loss" in m]
        assert [m["step"] for m in held_out] == [steps] and held_out[0]["valid/utterances"] > 0, stage
        assert sorted(p.name for p in (out / stage / "export").glob("*.safetensors")) == [
            "flow.safetensors", "llm.safetensors", "reward.safetensors", "tokenizer.safetensors",
            "vocoder.safetensors"]
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["summary"]["num_items"] == results["summary"]["num_ok"] == 3  # synthesised and scored
    phones = json.loads((out / "eval" / "per.json").read_text())
    assert phones["num_synthesized"] == 3 and 0 <= phones["ground_truth_mean_per"] < 100
    assert (out / "eval" / "report" / "index.html").stat().st_size > 1000
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert "stage 7" in (out / "stage_times.txt").read_text()
    # A partial re-run (the report alone) replaces its own stage's time and keeps the others'.
    rerun = subprocess.run(["bash", "recipes/tiny/run.sh", "--quick", "--data", str(data), "--exp", str(exp),
                            "--stage", "7"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    times = [line.split(":")[0] for line in (out / "stage_times.txt").read_text().splitlines()]
    assert times == [f"stage {n}" for n in range(8)]
