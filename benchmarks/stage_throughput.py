"""Optimizer updates per minute of each training stage of a recipe, through the real training command.

    .venv/bin/python benchmarks/stage_throughput.py --shards data/tiny/shards/train.list --out exp/bench/stages
    .venv/bin/python benchmarks/stage_throughput.py --shards ... --out ... --stages separate --steps 60 -- \
        model.flow.depth=6      # overrides after -- go to every stage

Each stage runs ``e2e-tts train`` for ``--steps`` updates (joint from scratch, separate from the joint export, e2e
from the separate export, as the recipe chains them) and the rate is read from its ``metrics.jsonl``: the updates
between the first logged step past ``--skip`` and the last, over the wall time between them, so start-up (DeepSpeed
initialisation, op builds, the first batches) is not counted. Compare commits by running it in a checkout of each,
on otherwise idle cores; the numbers go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STAGES = ("joint", "separate", "e2e")
INIT_FROM = {"separate": "joint", "e2e": "separate"}


def updates_per_minute(metrics_file: Path, skip: int) -> tuple[float, int]:
    """``(updates per minute, updates timed)`` from a run's metrics: steps after ``skip``, training records only."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    timed = [(r["step"], r["time"]) for r in records if "loss" in r and r["step"] > skip]
    if len(timed) < 2:
        raise SystemExit(f"{metrics_file}: fewer than two logged steps after step {skip}; raise --steps")
    (first_step, first_time), (last_step, last_time) = timed[0], timed[-1]
    return 60.0 * (last_step - first_step) / (last_time - first_time), last_step - first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="training shard list")
    parser.add_argument("--out", required=True, help="folder for the runs")
    parser.add_argument("--config", default="recipes/tiny/config.yaml")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in recipe order")
    parser.add_argument("--steps", type=int, default=80, help="updates per stage")
    parser.add_argument("--skip", type=int, default=10, help="updates left out of the timing (warm-up)")
    parser.add_argument("--json", help="also write the rates here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every stage (after --)")
    args = parser.parse_args()

    out = Path(args.out)
    rows = []
    for stage in args.stages.split(","):
        run = out / stage
        command = [sys.executable, "-m", "e2e_tts.cli", "train", "-c", args.config, "-c", f"stages/{stage}.yaml",
                   f"data.shards=[{args.shards}]", f"output_dir={run}", f"stage.max_steps={args.steps}",
                   f"stage.optim.total_steps={args.steps}", "stage.optim.warmup_steps=0", "engine.log_every=5",
                   "engine.valid_every=0", "engine.export_every=0", f"engine.save_every={args.steps}",
                   "engine.progress_bar=false",
                   *args.overrides]
        if stage in INIT_FROM:
            command.append(f"stage.init_from={out / INIT_FROM[stage] / 'export'}")
        if (run / "metrics.jsonl").exists():
            raise SystemExit(f"{run} exists: a resumed run would not be timed from its start; use a new --out")
        print(f"[{stage}] {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rate, timed = updates_per_minute(run / "metrics.jsonl", args.skip)
        rows.append((stage, rate, 60.0 / rate, timed))
    print("\n| stage | updates/min | s/update | updates timed |\n|---|---:|---:|---:|")
    for stage, rate, seconds, timed in rows:
        print(f"| {stage} | {rate:.1f} | {seconds:.3f} | {timed} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{"stage": stage, "updates_per_min": rate, "s_per_update": seconds,
                                                "updates_timed": timed} for stage, rate, seconds, timed in rows]))


if __name__ == "__main__":
    main()
