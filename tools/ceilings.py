"""The ceilings that bound what a trained system can score, each through the same recogniser.

    python tools/ceilings.py --model exp/tiny_seed0/vocoder/export --manifest data/tiny/corpus/test.jsonl \
        --speaker flite-rms --limit 30 --out exp/tiny_seed0/ceilings.json

Conditions, on the same utterances (a held-out split of the corpus):
  ground_truth   the flite audio itself
  griffin_lim    copy synthesis: ground-truth mel -> Griffin-Lim (no training)
  vocoder        copy synthesis: ground-truth mel -> the export's vocoder
  flow_tokens_*  ground-truth audio -> the export's speech tokenizer -> flow decoding of those tokens (prompted,
                 as in synthesis, by another utterance of the same voice) -> vocoder or Griffin-Lim: the best
                 the LLM could do if it predicted every token right
Each is transcribed by ``--asr`` (default pocketsphinx) and scored with the Seed-TTS-Eval normaliser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from e2e_tts.audio import load_audio
from e2e_tts.data.manifest import read_jsonl
from e2e_tts.eval.asr import build_asr
from e2e_tts.eval.wer import score_utterances, summarize_wer
from e2e_tts.models.vocoder import griffin_lim
from e2e_tts.synth import Synthesizer


@torch.inference_mode()
def decode_conditions(synth: Synthesizer, wav: np.ndarray, prompt_wav: np.ndarray, seed: int
                      ) -> dict[str, np.ndarray]:
    """The waveform of every condition for one utterance ``(N,)`` at the model rate."""
    system, audio = synth.system, synth.audio_config
    mel = synth.mel(torch.from_numpy(wav))  # (1, T, n_mels)
    ids, _ = synth.tokenize_audio(wav)
    prompt_ids, prompt_mel = synth.tokenize_audio(prompt_wav)
    speech = torch.cat([prompt_ids, ids])[None]
    sampled, _ = system.flow.sample(speech, torch.ones_like(speech, dtype=torch.bool), system.codebook(),
                                    prompt_mel=prompt_mel[None],
                                    prompt_mask=torch.ones(1, prompt_mel.shape[0], dtype=torch.bool),
                                    generator=torch.Generator().manual_seed(seed))
    return {
        "ground_truth": wav,
        "griffin_lim": griffin_lim(mel, audio)[0].numpy(),
        "vocoder": system.vocoder(mel)[0].numpy(),
        "flow_tokens_vocoder": system.vocoder(sampled)[0].numpy(),
        "flow_tokens_griffin_lim": griffin_lim(sampled, audio)[0].numpy(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory (with a trained vocoder)")
    parser.add_argument("--manifest", required=True, help="held-out corpus manifest (test.jsonl)")
    parser.add_argument("--speaker", default="flite-rms")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--asr", default="pocketsphinx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON with per-condition summaries and transcripts")
    args = parser.parse_args()

    synth = Synthesizer.from_pretrained(args.model)
    asr = build_asr(args.asr)
    entries = sorted((e for e in read_jsonl(args.manifest) if e.speaker == args.speaker), key=lambda e: e.id)
    if len(entries) < 2:
        raise SystemExit(f"need two utterances of {args.speaker!r} in {args.manifest} (one is the prompt)")
    prompt, entries = entries[0], entries[1:args.limit + 1]
    prompt_wav, _ = load_audio(prompt.audio, synth.sample_rate)
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for entry in entries:
        wav, rate = load_audio(entry.audio, synth.sample_rate)
        for condition, audio in decode_conditions(synth, wav, prompt_wav, args.seed).items():
            rows.setdefault(condition, []).append((entry.id, entry.text, asr.transcribe([audio], rate)[0]))
    report = {"model": args.model, "asr": args.asr, "speaker": args.speaker, "num_utterances": len(entries),
              "prompt": prompt.id, "conditions": {}}
    for condition, scored_rows in rows.items():
        summary = summarize_wer(score_utterances(scored_rows, "en"))
        report["conditions"][condition] = {"seedtts_wer": summary.seedtts_wer, "corpus_wer": summary.corpus_wer,
                                           "transcripts": [{"utt": u, "ref": r, "hyp": h} for u, r, h in scored_rows]}
        print(f"{condition:>13}: WER {summary.seedtts_wer:7.2f} %  (corpus {100 * summary.corpus_wer:6.2f} %)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
