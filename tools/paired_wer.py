"""Paired comparison of two evaluations of the same list: per utterance, the change in WER and speaker
similarity from a base run to a new one, with its standard error. Two systems that both sit near 100 % WER
differ by a few points; pairing removes the sentences' own difficulty from the spread, so the change is
measured far more tightly than the difference of two means.

    python tools/paired_wer.py --base exp/retime_seed0/eval/results.json --new exp/fsq64_seed0/eval/results.json

Both files are ``e2e-tts eval seedtts`` outputs. Only utterances scored in both count; the others are
reported by id, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence


def paired_change(base: Sequence[float], new: Sequence[float]) -> dict[str, float]:
    """Mean and standard error of ``new - base`` over pairs, and how many pairs went down, up or stayed.

    Args:
        base, new: equal-length sequences of per-utterance values.
    Returns:
        ``{"n", "mean", "stderr", "down", "up", "same"}`` (stderr is 0 for one pair).
    Raises:
        ValueError: for unequal lengths or no pairs.
    """
    if len(base) != len(new):
        raise ValueError(f"need as many base values as new ones, got {len(base)} and {len(new)}")
    if not base:
        raise ValueError("no pairs to compare")
    changes = [b_new - b_old for b_old, b_new in zip(base, new)]
    n = len(changes)
    mean = sum(changes) / n
    variance = sum((c - mean) ** 2 for c in changes) / (n - 1) if n > 1 else 0.0
    return {"n": n, "mean": mean, "stderr": math.sqrt(variance / n),
            "down": sum(c < 0 for c in changes), "up": sum(c > 0 for c in changes),
            "same": sum(c == 0 for c in changes)}


def compare(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Paired WER (percent) and similarity changes between two ``results.json`` contents.

    Returns:
        ``{"wer": paired_change | None, "sim": paired_change | None, "only_in_base": [...],
        "only_in_new": [...]}``: a metric is None when no utterance has it in both runs.
    """
    def by_utt(results: dict[str, Any], metric: str) -> dict[str, float]:
        return {row["utt"]: row[metric] for row in results["utterances"] if row.get(metric) is not None}

    report: dict[str, Any] = {}
    for metric, scale in (("wer", 100.0), ("sim", 1.0)):
        old, fresh = by_utt(base, metric), by_utt(new, metric)
        common = sorted(old.keys() & fresh.keys())
        report[metric] = paired_change([old[u] * scale for u in common],
                                       [fresh[u] * scale for u in common]) if common else None
        if metric == "wer":
            report["only_in_base"] = sorted(old.keys() - fresh.keys())
            report["only_in_new"] = sorted(fresh.keys() - old.keys())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="results.json of the reference run")
    parser.add_argument("--new", type=Path, required=True, help="results.json of the run compared with it")
    parser.add_argument("--out", type=Path, help="also write the comparison here as JSON")
    args = parser.parse_args()
    report = compare(json.loads(args.base.read_text()), json.loads(args.new.read_text()))
    for metric, unit in (("wer", " points"), ("sim", "")):
        change = report[metric]
        if change is None:
            print(f"{metric}: no utterance scored in both")
            continue
        print(f"{metric}: {change['mean']:+.3f} +- {change['stderr']:.3f}{unit} over {change['n']} utterances "
              f"(down {change['down']}, up {change['up']}, same {change['same']})")
    for side in ("only_in_base", "only_in_new"):
        if report[side]:
            print(f"{side.replace('_', ' ')}: {', '.join(report[side])}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
