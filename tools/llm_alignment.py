"""Has the LLM learnt to read its text? Text attention and text reliance, teacher-forced on real utterances.

    python tools/llm_alignment.py --model exp/tiny_seed0/separate/export --manifest data/tiny/corpus/test.jsonl \
        --limit 20 --out exp/tiny_seed0/llm_alignment.json --plot exp/tiny_seed0/llm_alignment.png

A decoder-only TTS model first learns to continue speech and only later to follow the text: until it attends
to the text monotonically, its free-running tokens for a new sentence are speech, but other words. For each
utterance (text, and the export's speech tokens of its audio) this measures:

* per layer, the attention of the speech positions to the text positions (heads averaged;
  e2e_tts.text_attention, which synthesis also records for the evaluation report): its ``text_mass``
  (share of attention on the text at all) and its ``monotonicity``, the correlation between the speech step and
  the expected text position it attends to (1 = a clean diagonal, 0 = no alignment);
* ``nll_right`` / ``nll_other``: teacher-forced speech-token NLL with the utterance's own text and with another
  utterance's text; their gap says how much the text tells the model.

The plot shows the most monotone layer's text attention of the first utterances (rows renormalised).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from e2e_tts.audio import load_audio
from e2e_tts.data.manifest import read_jsonl
from e2e_tts.models.llm import LLMOutput
from e2e_tts.synth import Synthesizer
from e2e_tts.text_attention import text_attention

PLOTTED_UTTERANCES = 4


def monotonicity(attention: np.ndarray) -> float:
    """Correlation between speech step and expected attended text position, for ``(steps, text)`` weights."""
    weights = attention / np.maximum(attention.sum(1, keepdims=True), 1e-12)
    expected = weights @ np.arange(attention.shape[1])
    steps = np.arange(attention.shape[0])
    if expected.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(steps, expected)[0, 1])


@torch.inference_mode()
def teacher_forced(synth: Synthesizer, text_ids: torch.Tensor, speech_ids: torch.Tensor) -> LLMOutput:
    """The LLM's teacher-forced pass over ``speech_ids`` ``(S,)`` after ``text_ids`` ``(L,)``, as a batch of one."""
    return synth.system.llm(text_ids[None], torch.ones(1, len(text_ids), dtype=torch.bool), speech_ids[None],
                            torch.ones(1, len(speech_ids), dtype=torch.bool), synth.system.codebook())


def plot(maps: list[np.ndarray], layer: int, titles: list[str], path: Path) -> None:
    """One panel per utterance: layer ``layer``'s text attention, each speech step renormalised over the text."""
    figure = Figure(figsize=(4 * len(maps), 3.6), layout="constrained")
    for ax, matrix, title in zip(figure.subplots(1, len(maps), squeeze=False)[0], maps, titles):
        rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1e-12)
        ax.imshow(rows, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("text position (phoneme)")
        ax.set_ylabel("speech step (25 Hz)")
    figure.suptitle(f"LLM layer {layer}: attention of speech steps to the text", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--manifest", required=True, help="corpus manifest (test.jsonl, or train.jsonl)")
    parser.add_argument("--speaker", default="flite-rms")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="JSON of per-layer and per-utterance measures")
    parser.add_argument("--plot", type=Path, help="PNG of the most monotone layer's attention")
    args = parser.parse_args()

    synth = Synthesizer.from_pretrained(args.model)
    entries = sorted((e for e in read_jsonl(args.manifest) if e.speaker == args.speaker), key=lambda e: e.id)
    entries = entries[:args.limit]
    if len(entries) < 2:
        raise SystemExit(f"need two utterances of {args.speaker!r} in {args.manifest} (one lends its text)")
    utterances = []
    for entry in entries:
        wav, _ = load_audio(entry.audio, synth.sample_rate)
        utterances.append((entry, synth.prepare_text(entry.text)[1], synth.speech_encoder.encode(wav)[0]))

    rows = []
    for index, (entry, text_ids, speech_ids) in enumerate(utterances):
        maps = list(text_attention(synth.system.llm, synth.system.codebook(), text_ids, speech_ids))
        nll = float(synth.system.llm.loss(teacher_forced(synth, text_ids, speech_ids)))
        other_text = utterances[(index + 1) % len(utterances)][1]
        rows.append({"utt": entry.id, "text": entry.text, "nll_right": nll,
                     "nll_other": float(synth.system.llm.loss(teacher_forced(synth, other_text, speech_ids))),
                     "text_mass": [float(m.sum(1).mean()) for m in maps],
                     "monotonicity": [monotonicity(m) for m in maps], "maps": maps})
    layers = len(rows[0]["maps"])
    summary = {
        "nll_right": float(np.mean([r["nll_right"] for r in rows])),
        "nll_other": float(np.mean([r["nll_other"] for r in rows])),
        "text_mass": [float(np.mean([r["text_mass"][k] for r in rows])) for k in range(layers)],
        "monotonicity": [float(np.mean([r["monotonicity"][k] for r in rows])) for k in range(layers)],
    }
    best = int(np.argmax(summary["monotonicity"]))
    print(f"teacher-forced NLL: own text {summary['nll_right']:.3f}, another utterance's text "
          f"{summary['nll_other']:.3f} ({len(rows)} utterances)")
    for k in range(layers):
        print(f"layer {k}: text mass {summary['text_mass'][k]:.3f}  monotonicity {summary['monotonicity'][k]:+.3f}")
    report = {"model": args.model, "manifest": args.manifest, "num_utterances": len(rows),
              "most_monotone_layer": best, "summary": summary,
              "utterances": [{k: v for k, v in r.items() if k != "maps"} for r in rows]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    if args.plot:
        shown = rows[:PLOTTED_UTTERANCES]
        plot([r["maps"][best] for r in shown], best,
             [f"{r['text'][:40]} (mono {r['monotonicity'][best]:+.2f})" for r in shown], args.plot)


if __name__ == "__main__":
    main()
