"""Two measurements of speech quality for attribute control (recipes/tiny/EXPERIMENTS.md, "Attribute control").

``head``: the reward model's quality head on real speech: each utterance of a manifest labelled with MOS
(tools/degrade_corpus.py) is tokenized by the export's tokenizer, the head classifies the tokens, and the accuracy
against the label's MOS bin (:func:`e2e_tts.models.reward.mos_bins`) and the mean expected bin scaled to [0, 1] (the
``quality`` reward's raw score) are reported per label::

    python tools/quality_probe.py head --model exp/quality/export --manifest data/q/test/labelled.jsonl --out head.json

``rollouts``: does the LLM follow a degraded prompt? For each item of a Seed-TTS-Eval list, ``--samples`` token
sequences of the LLM, sampled as the export's synthesis samples them, behind the item's prompt (``--llm-prompt``) or
reading the text alone (``--no-llm-prompt``; the export's setting when neither), and the quality head's mean expected
score of the samples and the share it classes in the lower half of the bins (a diagnostic on tokens, not a measure
of the audio)::

    python tools/quality_probe.py rollouts --model exp/quality/export --meta meta_degraded.lst --llm-prompt --out r.json

``snr``: an estimate of the signal-to-noise ratio of decoded audio that knows nothing of the reward model: the
power of 20 ms frames (10 ms apart), the loud frames' level (90th percentile) over the pauses' floor (10th
percentile), in dB and capped at :data:`SNR_CAP_DB` (digital silence in the pauses). Noise added to an utterance
raises its pauses' floor, so a degraded output has a low estimate::

    python tools/quality_probe.py snr --wavs exp/run/wavs --out snr.json [--base exp/base/wavs]

With ``--base``, the utterances of both folders are paired by name and the paired change reported.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from e2e_tts.audio import load_audio
from e2e_tts.data.manifest import read_manifest
from e2e_tts.models.reward import expected_bin, mos_bins

SNR_CAP_DB = 80.0
FRAME_SECONDS, HOP_SECONDS = 0.02, 0.01


def estimate_snr(wav: np.ndarray, rate: int) -> float:
    """The estimated SNR (dB) of ``wav (N,)`` at ``rate``: 90th over 10th percentile of the frame powers, capped at
    :data:`SNR_CAP_DB`; a clip shorter than one frame or silent throughout gives 0."""
    frame, hop = int(FRAME_SECONDS * rate), int(HOP_SECONDS * rate)
    if len(wav) < frame:
        return 0.0
    starts = np.arange(0, len(wav) - frame + 1, hop)
    power = np.array([np.mean(wav[s:s + frame].astype(np.float64) ** 2) for s in starts])
    loud, floor = np.percentile(power, 90), np.percentile(power, 10)
    if loud <= 0:
        return 0.0
    return float(min(10 * np.log10(loud / max(floor, loud * 10 ** (-SNR_CAP_DB / 10))), SNR_CAP_DB))


def snr_report(wavs: Path, base: Optional[Path] = None) -> dict:
    """Per-utterance estimated SNR of every ``*.wav`` in ``wavs``, its mean and median, and with ``base`` the paired
    change over the names both folders hold."""
    def folder(path: Path) -> dict[str, float]:
        return {wav.stem: estimate_snr(*load_audio(wav)) for wav in sorted(path.glob("*.wav"))}

    values = folder(wavs)
    if not values:
        raise ValueError(f"no .wav file in {wavs}")
    report = {"wavs": str(wavs), "n": len(values), "mean_snr_db": float(np.mean(list(values.values()))),
              "median_snr_db": float(np.median(list(values.values()))), "utterances": values}
    if base is not None:
        old = folder(base)
        common = sorted(old.keys() & values.keys())
        if not common:
            raise ValueError(f"{wavs} and {base} have no utterance in common")
        changes = np.array([values[u] - old[u] for u in common])
        report["paired"] = {"base": str(base), "n": len(common), "mean_change_db": float(changes.mean()),
                            "stderr_db": float(changes.std(ddof=1) / np.sqrt(len(common))) if len(common) > 1 else 0.0,
                            "up": int((changes > 0).sum()), "down": int((changes < 0).sum())}
    return report


def expected_quality(reward: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, codebook: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The quality head's expected bin scaled to [0, 1] (the ``quality`` reward's raw score) ``(B,)`` and its most
    likely bin ``(B,)`` for speech ids ``(B, T)`` with mask ``(B, T)``."""
    logits = reward.task_heads["quality"](reward.encode(ids, mask, codebook), mask)
    return expected_bin(logits), logits.argmax(-1)


@torch.no_grad()
def head_report(model: str, manifest: str, limit: Optional[int] = None) -> dict:
    """The quality head's accuracy and mean expected score per MOS label over a manifest's utterances."""
    from e2e_tts.synth import Synthesizer  # the model's tokenizer and reward model, as synthesis loads them

    synthesizer = Synthesizer.from_pretrained(model)
    reward, codebook = synthesizer.system.reward, synthesizer.system.codebook()
    if "quality" not in reward.task_heads:
        raise ValueError(f"{model}: the reward model has no quality head")
    entries = [entry for entry in read_manifest(manifest) if entry.quality is not None][:limit]
    if not entries:
        raise ValueError(f"{manifest}: no utterance with a quality label")
    classes = reward.task_heads["quality"].classifier.out_features
    labels = mos_bins([entry.quality for entry in entries], classes)
    per_label: dict[str, dict[str, float]] = {}
    for entry, label in zip(entries, labels.tolist()):
        ids = synthesizer.encode_prompt(entry.audio, entry.text).speech_ids.to(codebook.device)[None]
        expected, best = expected_quality(reward, ids, torch.ones_like(ids, dtype=torch.bool), codebook)
        row = per_label.setdefault(f"{entry.quality:g}", {"n": 0, "correct": 0, "expected_sum": 0.0})
        row["n"] += 1
        row["correct"] += int(int(best) == label)
        row["expected_sum"] += float(expected)
    return {"model": model, "manifest": manifest,
            "per_label": {mos: {"n": row["n"], "accuracy": row["correct"] / row["n"],
                                "mean_expected_quality": row["expected_sum"] / row["n"]}
                          for mos, row in sorted(per_label.items())}}


@torch.no_grad()
def rollout_report(model: str, meta: str, samples: int, llm_prompt: Optional[bool], seed: int) -> dict:
    """The quality head's reading of the LLM's samples for a Seed-TTS-Eval list (see the module docstring)."""
    from e2e_tts.data.manifest import read_seedtts_meta
    from e2e_tts.models.masks import pad_rows
    from e2e_tts.synth import Synthesizer

    synthesizer = Synthesizer.from_pretrained(model)
    reward, codebook = synthesizer.system.reward, synthesizer.system.codebook()
    if "quality" not in reward.task_heads:
        raise ValueError(f"{model}: the reward model has no quality head")
    config, _ = synthesizer.settings(llm_prompt=llm_prompt)
    generator = torch.Generator().manual_seed(seed)
    scores, low = [], []
    for item in read_seedtts_meta(meta):
        prompt = None if item.prompt_audio is None else synthesizer.encode_prompt(item.prompt_audio, item.prompt_text)
        rows = synthesizer.generate_tokens([synthesizer.prepare_text(item.text)[1]] * samples, prompt, config,
                                           generator)
        expected, best = expected_quality(reward, *pad_rows(rows, codebook.device), codebook)
        scores += expected.tolist()
        low += (best < reward.task_heads["quality"].classifier.out_features / 2).tolist()
    return {"model": model, "meta": meta, "llm_prompt": config.llm_prompt, "samples": len(scores),
            "mean_expected_quality": sum(scores) / len(scores), "low_share": sum(low) / len(low)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    head = commands.add_parser("head", help="the quality head's accuracy on a labelled manifest")
    head.add_argument("--model", required=True, help="export directory")
    head.add_argument("--manifest", required=True, help="manifest with quality labels")
    head.add_argument("--limit", type=int, help="at most this many labelled utterances")
    rollouts = commands.add_parser("rollouts", help="the quality head's reading of the LLM's samples")
    rollouts.add_argument("--model", required=True, help="export directory")
    rollouts.add_argument("--meta", required=True, help="Seed-TTS-Eval list")
    rollouts.add_argument("--samples", type=int, default=4, help="LLM samples per item")
    rollouts.add_argument("--llm-prompt", action=argparse.BooleanOptionalAction, default=None,
                          help="the LLM continues the prompt (default: the export's synthesis setting)")
    rollouts.add_argument("--seed", type=int, default=0)
    snr = commands.add_parser("snr", help="estimated SNR of a folder of wavs")
    snr.add_argument("--wavs", type=Path, required=True)
    snr.add_argument("--base", type=Path, help="a folder to pair with by file name")
    for command in (head, rollouts, snr):
        command.add_argument("--out", type=Path, required=True, help="JSON report")
    args = parser.parse_args(argv)
    try:
        if args.command == "head":
            report = head_report(args.model, args.manifest, args.limit)
        elif args.command == "rollouts":
            report = rollout_report(args.model, args.meta, args.samples, args.llm_prompt, args.seed)
        else:
            report = snr_report(args.wavs, args.base)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "utterances"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
