"""Recogniser WER, phone error rate and speaker similarity against training time, from a run's exports.

    python tools/wer_curve.py exp/tiny_seed0 --meta exp/tiny_seed0/eval/meta.lst --limit 20 \
        --out exp/tiny_seed0/wer_curve.json --plot exp/tiny_seed0/wer_curve.png

A run trained with ``engine.export_every=N`` holds ``<stage>/exports/step_<k>`` beside each stage's final
``<stage>/export``. Every export of the synthesis stages found (in pipeline order) synthesises the first
``--limit`` lines of ``--meta`` into ``<run>/curve/<stage>_step_<k>/`` (kept, so a rerun only scores what is new)
and is scored by the Seed-TTS-Eval harness and the phone judge (e2e_tts.eval.phones: word WER stays above 100 %
until speech is nearly intelligible, phone error rate moves earlier). The time axis is the run's cumulative training
wall time, read from the stages' ``metrics.jsonl`` (a resumed stage's clock restarts; the segments are added up).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from e2e_tts.eval.phones import PocketsphinxPhones, mean_phone_error_rate
from e2e_tts.eval.seedtts import (ground_truth_wav_paths, read_seedtts_meta, run_seedtts, synthesize_missing,
                                  synthesized_wav_paths)
from e2e_tts.eval.similarity import build_similarity
from e2e_tts.scoring.verifiers import build_asr
from e2e_tts.synth import Synthesizer
from e2e_tts.synthesis_config import SynthesisConfig

PIPELINE = ("joint", "cascade", "separate", "e2e")  # stages whose exports can synthesise (no vocoder stage)
STEP_DIR = re.compile(r"step_(\d+)$")


def cumulative_seconds(metrics_path: Path) -> dict[int, float]:
    """Optimizer update -> training seconds since the stage began, adding up the segments of resumed runs."""
    seconds, offset, previous = {}, 0.0, 0.0
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if row["time"] < previous:  # the clock restarted: a resumed process
            offset += previous
        previous = row["time"]
        seconds[row["step"]] = offset + row["time"]
    return seconds


def stage_exports(stage_dir: Path, seconds: dict[int, float]) -> list[tuple[int, Path]]:
    """``(step, export dir)`` of a stage, intermediate ones first and the final export last (at the last step
    of ``seconds``, the stage's :func:`cumulative_seconds`)."""
    found = []
    for path in sorted((stage_dir / "exports").glob("step_*")):
        match = STEP_DIR.search(path.name)
        if match and (path / "config.yaml").is_file():
            found.append((int(match.group(1)), path))
    if (stage_dir / "export").is_dir() and seconds:
        found.append((max(seconds), stage_dir / "export"))
    return found


def curve_points(run: Path) -> list[dict]:
    """Every export of the run with its stage, step and cumulative training seconds."""
    points, elapsed = [], 0.0
    for stage in PIPELINE:
        stage_dir = run / stage
        if not (stage_dir / "metrics.jsonl").is_file():
            continue
        seconds = cumulative_seconds(stage_dir / "metrics.jsonl")
        for step, export in stage_exports(stage_dir, seconds):
            if step not in seconds:
                raise SystemExit(f"{export}: step {step} is not in {stage_dir / 'metrics.jsonl'}; export at "
                                 f"multiples of engine.log_every")
            points.append({"stage": stage, "step": step, "export": str(export),
                           "train_seconds": elapsed + seconds[step]})
        elapsed += seconds[max(seconds)]
    return points


def plot(points: list[dict], ground_truth: dict | None, path: Path) -> None:
    figure = Figure(figsize=(13, 3.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    minutes = [p["train_seconds"] / 60 for p in points]
    panels = (("wer", "recogniser WER (%)"), ("per", "phone error rate (%)"), ("sim", "speaker similarity"))
    for axis, (key, label) in zip(axes, panels):
        axis.plot(minutes, [p[key] for p in points], marker="o", color="black")
        for stage in dict.fromkeys(p["stage"] for p in points):
            first = next(p for p in points if p["stage"] == stage)
            axis.axvline(first["train_seconds"] / 60, color="grey", alpha=0.3)
            axis.annotate(stage, (first["train_seconds"] / 60, 1.0), xycoords=("data", "axes fraction"),
                          va="top", fontsize=8)
        if ground_truth and ground_truth.get(key) is not None:
            axis.axhline(ground_truth[key], color="green", linestyle="--", label="ground-truth audio")
            axis.legend(fontsize=8)
        axis.set_xlabel("training wall time (min)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory with <stage>/export(s)")
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list of held-out sentences")
    parser.add_argument("--limit", type=int, default=20, help="first N lines of --meta")
    parser.add_argument("--vocoder", default="griffin-lim", choices=("griffin-lim", "model"))
    parser.add_argument("--asr", default="pocketsphinx")
    parser.add_argument("--similarity", default="resemblyzer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON of the curve")
    parser.add_argument("--plot", type=Path, help="PNG of the curve")
    args = parser.parse_args()

    points = curve_points(args.run)
    if not points:
        raise SystemExit(f"no exports of {', '.join(PIPELINE)} under {args.run}")
    # beside the full list: its wav paths are relative to the list's folder
    meta = Path(args.meta).with_name(f"{Path(args.meta).stem}.first{args.limit}.lst")
    lines = Path(args.meta).read_text(encoding="utf-8").splitlines()[:args.limit]
    meta.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = read_seedtts_meta(meta)
    asr, similarity, phone_judge = build_asr(args.asr), build_similarity(args.similarity), PocketsphinxPhones()
    texts = [item.text for item in items]
    config = SynthesisConfig(seed=args.seed, vocoder=args.vocoder)
    ground_truth = None
    for index, point in enumerate(points):
        wavs = args.run / "curve" / f"{point['stage']}_step_{point['step']:06d}"
        synthesizer = Synthesizer.from_pretrained(point["export"])
        _, missing = synthesize_missing(items, wavs, synthesizer, config)
        result = run_seedtts(meta, wavs, asr, similarity, "en", ground_truth=index == 0, missing_reasons=missing)
        summary = result["summary"]
        point.update(wer=summary["seedtts_wer"], sim=summary["sim"], num_scored=summary["num_wer_scored"],
                     per=mean_phone_error_rate(phone_judge, texts, synthesized_wav_paths(items, wavs)))
        if index == 0:
            truth = result["ground_truth"]["summary"]
            ground_truth = {"wer": truth["seedtts_wer"], "sim": truth["sim"],
                            "per": mean_phone_error_rate(phone_judge, texts, ground_truth_wav_paths(items))}
        print(f"{point['stage']:>9} step {point['step']:6d}  {point['train_seconds'] / 60:6.1f} min  "
              f"WER {point['wer']} %  PER {point['per']} %  SIM {point['sim']}  "
              f"({point['num_scored']} of {len(items)} scored)", flush=True)
    args.out.write_text(json.dumps({"run": str(args.run), "meta": str(meta), "vocoder": args.vocoder,
                                    "asr": args.asr, "similarity": args.similarity, "ground_truth": ground_truth,
                                    "points": points}, indent=1))
    if args.plot:
        plot(points, ground_truth, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
