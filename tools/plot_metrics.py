"""Draws the loss curves of a run's stages from their metrics.jsonl files into one PNG.

    python tools/plot_metrics.py exp/tiny_seed0 --out exp/tiny_seed0/loss_curves.png

One panel per stage found under the run directory (joint/cascade, separate, e2e, grpo, vocoder), each with
the losses that stage logs (grpo: its rewards, which rise), against optimizer updates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STAGES = ("joint", "cascade", "separate", "e2e", "grpo", "vocoder")
CURVES = {  # what each stage optimises, in the names its objective logs
    "joint": ("loss", "llm", "llm_guide", "flow_cfm", "flow_prior", "reward"), "cascade": ("loss", "reward"),
    "separate": ("loss", "llm", "llm_guide", "flow_cfm", "flow_prior", "reward"),
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
        steps = [row["step"] for row in rows]
        for name in CURVES[stage]:
            if name in rows[0]:
                axis.plot(steps, [row[name] for row in rows], label=name)
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
