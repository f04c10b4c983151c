"""The measurement tools' own logic (their model-running parts are exercised by the recipe and the benchmarks)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_stage(run: Path, stage: str, rows: list[tuple[int, float]], exports: list[int]) -> None:
    directory = run / stage
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": t}) + "\n" for s, t in rows))
    (directory / "export").mkdir()
    for step in exports:
        (directory / "exports" / f"step_{step:06d}").mkdir(parents=True)
        (directory / "exports" / f"step_{step:06d}" / "config.yaml").write_text("{}")


def test_wer_curve_adds_up_resumed_segments_and_stages(tmp_path):
    wer_curve = load_tool("wer_curve")
    # joint: 4 updates, killed after step 2 and resumed (its clock restarts); separate: 2 updates.
    write_stage(tmp_path, "joint", [(1, 10.0), (2, 20.0), (3, 12.0), (4, 24.0)], exports=[2])
    write_stage(tmp_path, "separate", [(1, 5.0), (2, 9.0)], exports=[])
    (tmp_path / "joint" / "exports" / "step_000003").mkdir()  # an export cut off before its config: ignored
    points = wer_curve.curve_points(tmp_path)
    assert [(p["stage"], p["step"], p["train_seconds"]) for p in points] == [
        ("joint", 2, 20.0), ("joint", 4, 44.0), ("separate", 2, 53.0)]


def test_wer_curve_refuses_an_export_at_an_unlogged_step(tmp_path):
    wer_curve = load_tool("wer_curve")
    write_stage(tmp_path, "joint", [(2, 10.0), (4, 20.0)], exports=[3])
    with pytest.raises(SystemExit, match="log_every"):
        wer_curve.curve_points(tmp_path)
