"""Draws the loss curves of a run's stages from their metrics.jsonl files into one PNG.

    python tools/plot_metrics.py exp/tiny_seed0 --out exp/tiny_seed0/loss_curves.png

One panel per stage found under the run directory (joint/cascade, separate, e2e, grpo, vocoder), each with
the losses that stage logs (grpo: its rewards, which rise), against optimizer updates; where the stage validated
(``data.valid_shards``), the same losses on the validation set as dashed lines with markers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from e2e_tts.validation import PREFIX as VALID

STAGES = ("joint", "cascade", "separate", "e2e", "grpo", "vocoder")
CURVES = {  # what each stage optimises, in the names its objective logs
    "joint": ("loss", "llm_nll", "llm_guide", "flow_cfm", "flow_prior", "reward"), "cascade": ("loss", "reward"),
    "separate": ("loss", "llm_nll", "llm_guide", "flow_cfm", "flow_prior", "reward"),
    "e2e": ("loss", "flow", "asr", "speaker", "kl"),
    "grpo": ("reward", "reward_cer", "reward_asr", "reward_speaker", "kl", "rollout_eos"),
    "vocoder": ("vocoder_mel", "vocoder_adversarial", "vocoder_feature_matching", "discriminator"),
}
LINEAR = {"grpo"}  # rewards can be negative (log-probabilities): no log axis


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory holding <stage>/metrics.jsonl")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    stages = [s for s in STAGES if (Path(args.run) / s / "metrics.jsonl").is_file()]
    if not stages:
        raise SystemExit(f"no <stage>/metrics.jsonl under {args.run}")
    figure = Figure(figsize=(4.2 * len(stages), 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    for axis, stage in zip(figure.subplots(1, len(stages), squeeze=False)[0], stages):
        rows = [json.loads(line) for line in (Path(args.run) / stage / "metrics.jsonl").read_text().splitlines()]
        for name in CURVES[stage]:
            points = [(row["step"], row[name]) for row in rows if name in row]
            if not points:
                continue
            line, = axis.plot(*zip(*points), label=name)
            held_out = [(row["step"], row[VALID + name]) for row in rows if VALID + name in row]
            if held_out:
                axis.plot(*zip(*held_out), "o--", color=line.get_color(), markersize=3, label=f"{name} (valid)")
        axis.set_title(stage)
        axis.set_xlabel("optimizer updates")
        axis.set_yscale("linear" if stage in LINEAR else "log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
