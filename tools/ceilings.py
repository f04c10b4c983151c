"""The ceilings that bound what a trained system can score, each through the same recogniser and speaker judge.

    python tools/ceilings.py --model exp/tiny_seed0/e2e/export --manifest data/tiny/corpus/test.jsonl \
        --speaker flite-rms --limit 20 --out exp/tiny_seed0/ceilings.json

Conditions, on the same utterances (a held-out split of the corpus):
  ground_truth             the flite audio itself
  griffin_lim              copy synthesis: ground-truth mel -> Griffin-Lim (no training)
  vocoder                  copy synthesis: ground-truth mel -> the export's vocoder
  flow_tokens_vocoder      ground-truth audio -> the export's speech tokenizer -> flow decoding of those tokens
  flow_tokens_griffin_lim  (prompted, as in synthesis, by another utterance of the same voice) -> vocoder or
                           Griffin-Lim: the best the LLM could do if it predicted every token right
  flow_prior_griffin_lim   the same tokens -> the flow's prior head (no ODE, no prompt) -> Griffin-Lim: what
                           the token condition alone carries (flows with a prior head only)
  llm_flow_griffin_lim     the utterance's text -> the LLM's free-running tokens (sampled at --llm-temperature /
                           --llm-top-k, behind the prompt unless --no-llm-prompt; each defaults to the export's
                           synthesis setting) -> flow -> Griffin-Lim: synthesis of text whose audio is known
  llm_prior_griffin_lim    the LLM's tokens -> prior head -> Griffin-Lim: the LLM judged without the ODE's noise
  kmeans_lookup_griffin_lim
                           a training-free codebook: k-means (as many centroids as the tokenizer has codes) over
                           groups of frames_per_token log-mel frames of --kmeans-manifest (the training split),
                           each group replaced by its nearest centroid -> Griffin-Lim: what the token rate and
                           codebook size allow without learning; a learned tokenizer and decoder must beat it
  llm_teacher_forced_flow_griffin_lim
                           the LLM's most likely token at each step given the true tokens before it (and the
                           prompt, where the llm_* conditions have it) -> flow -> Griffin-Lim: the LLM without exposure bias. Where this is level
                           with llm_flow_griffin_lim, free running loses nothing to drift and the per-step
                           predictions are the limit; where it is level with flow_tokens_griffin_lim, drift is
                           the limit
  llm_teacher_forced_prior_griffin_lim
                           the same tokens -> the prior head -> Griffin-Lim: against flow_prior_griffin_lim, what
                           the LLM's per-step errors cost where the decoder is not the limit
Against the flow_* rows, the llm_* rows measure what the LLM loses; on the training manifest (``--manifest
.../train.jsonl``) they tell an LLM that has not learnt its own data from one that does not generalise. The
report also gives the teacher-forced accuracy, how often that most likely token is the true one, with the prompt
before the utterance (as synthesis runs) and without it (as the LLM trains, unless ``model.llm.prompt_pairs``).
Each is transcribed by ``--asr`` (default pocketsphinx), scored with the Seed-TTS-Eval normaliser, compared
with the prompt utterance by ``--similarity`` (default resemblyzer), as synthesis is, and decoded into phones by
pocketsphinx for the phone error rate (e2e_tts.eval.phones), which still moves where word WER is past 100 %.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from e2e_tts.audio import load_audio
from e2e_tts.data.manifest import read_jsonl
from e2e_tts.eval.phones import PocketsphinxPhones, reference_phones
from e2e_tts.eval.similarity import build_similarity
from e2e_tts.models.vocoder import griffin_lim
from e2e_tts.scoring.verifiers import build_asr
from e2e_tts.scoring.wer import score_utterances, summarize_wer, unit_error_rates
from e2e_tts.synth import Prompt, Synthesizer
from e2e_tts.synthesis_config import SynthesisConfig

CONDITIONS = ("ground_truth", "griffin_lim", "vocoder", "kmeans_lookup_griffin_lim", "flow_tokens_vocoder",
              "flow_tokens_griffin_lim", "flow_prior_griffin_lim", "llm_flow_griffin_lim", "llm_prior_griffin_lim",
              "llm_teacher_forced_flow_griffin_lim", "llm_teacher_forced_prior_griffin_lim")
# Conditions that need the ground-truth audio's tokens, and those that need the LLM's free-running ones.
TEACHER_FORCED_CONDITIONS = ("llm_teacher_forced_flow_griffin_lim", "llm_teacher_forced_prior_griffin_lim")
TRUE_TOKEN_CONDITIONS = ("flow_tokens_vocoder", "flow_tokens_griffin_lim", "flow_prior_griffin_lim",
                         *TEACHER_FORCED_CONDITIONS)
LLM_SAMPLE_CONDITIONS = ("llm_flow_griffin_lim", "llm_prior_griffin_lim")


def frame_groups(mel: torch.Tensor, size: int) -> torch.Tensor:
    """Consecutive groups of ``size`` frames of a log-mel ``(T, n_mels)`` as rows ``(T // size, size * n_mels)``."""
    usable = mel.shape[0] // size * size
    return mel[:usable].reshape(-1, size * mel.shape[1])


def fit_kmeans(rows: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means: centroids ``(k, D)`` of ``rows`` ``(N, D)``, started by seeded k-means++ (each new centre
    drawn with probability proportional to the squared distance to the nearest one so far)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(rows), (1,), generator=generator))]
    nearest_sq = (rows - rows[chosen[0]]).square().sum(1)
    for _ in range(k - 1):
        chosen.append(int(torch.multinomial(nearest_sq / nearest_sq.sum(), 1, generator=generator)))
        nearest_sq = torch.minimum(nearest_sq, (rows - rows[chosen[-1]]).square().sum(1))
    centroids = rows[chosen].clone()
    for _ in range(iterations):
        nearest = torch.cdist(rows, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, rows)
        counts = torch.bincount(nearest, minlength=k)[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # an empty cluster stays put
    return centroids


def kmeans_lookup(mel: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Each frame group of ``mel`` ``(T, n_mels)`` replaced by its nearest centroid: ``(T', n_mels)``, T' <= T."""
    size = centroids.shape[1] // mel.shape[1]
    groups = frame_groups(mel, size)
    return centroids[torch.cdist(groups, centroids).argmin(1)].reshape(-1, mel.shape[1])


def teacher_forced_argmax(synth: Synthesizer, prompt: Optional[Prompt], text: str, true_ids: torch.Tensor
                          ) -> torch.Tensor:
    """The LLM's most likely speech token ``(T,)`` at each step of ``true_ids`` ``(T,)``, given the prompt (if
    any), the text and the true tokens before that step (never EOS)."""
    system = synth.system
    codebook = system.codebook()
    prompt_text, prompt_speech = (true_ids[:0], true_ids[:0]) if prompt is None else (prompt.text_ids,
                                                                                        prompt.speech_ids)
    out, prompt_lengths = system.llm.forward_after_prompts([prompt_text], [synth.prepare_text(text)[1]],
                                                           [prompt_speech], [true_ids], codebook)
    start = int(prompt_lengths[0])  # the last logit column is EOS
    return out.logits[0, start:start + len(true_ids), :codebook.shape[0]].argmax(-1).cpu()


@torch.inference_mode()
def decode_conditions(synth: Synthesizer, wav: np.ndarray, text: str, prompt_wav: np.ndarray, prompt_text: str,
                      conditions: list[str], seed: int, flow_settings: dict[str, float | None],
                      llm_sampling: SynthesisConfig, centroids: Optional[torch.Tensor] = None
                      ) -> tuple[dict[str, np.ndarray], Optional[dict[str, tuple[int, int]]]]:
    """The waveform ``(N,)`` at the model rate of each requested condition for one utterance (``text`` is its
    transcript); ``flow_settings`` (cfg_strength, temperature, nfe; None = the export's config) go to the flow's
    sampler, ``llm_sampling`` draws the llm_* conditions' tokens. Also returns (correct, total) of the
    teacher-forced tokens ``with_prompt`` and ``without_prompt`` when that condition is asked for, else None.
    ``centroids`` ``(V, frames_per_token * n_mels)`` serve the k-means condition."""
    system, audio = synth.system, synth.audio_config
    mel = synth.speech_encoder.log_mel(wav)  # (1, T, n_mels), at the training level
    prompt = synth.encode_prompt(prompt_wav, prompt_text)
    prompt_frames = prompt.mel.shape[0]

    def after_prompt(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt tokens then ``ids`` ``(T,)``, as the flow takes them: ids ``(1, P + T)`` and their mask."""
        speech = torch.cat([prompt.speech_ids, ids])[None]
        return speech, torch.ones_like(speech, dtype=torch.bool)

    def sample(ids: torch.Tensor) -> torch.Tensor:
        """Flow samples of the frames after the prompt, from prompt + ``ids`` ``(T,)``: ``(1, frames, n_mels)``."""
        mel, _ = system.flow.sample(*after_prompt(ids), system.codebook(), prompt_mel=prompt.mel[None],
                                    generator=torch.Generator().manual_seed(seed), **flow_settings)
        return mel

    def prior(ids: torch.Tensor) -> torch.Tensor:
        """The prior head's mel of the frames after the prompt: ``(1, frames, n_mels)``."""
        return system.flow.prior(*after_prompt(ids), system.codebook())[:, prompt_frames:]

    true_ids = synth.speech_encoder.encode(wav)[0] if set(TRUE_TOKEN_CONDITIONS) & set(conditions) else None
    forced_ids, forced_hits = None, None
    if set(TEACHER_FORCED_CONDITIONS) & set(conditions):
        prompted = teacher_forced_argmax(synth, prompt, text, true_ids)
        unprompted = teacher_forced_argmax(synth, None, text, true_ids)
        forced_ids = prompted if llm_sampling.llm_prompt else unprompted  # as synthesis lays the LLM's row out
        forced_hits = {"with_prompt": (int((prompted == true_ids).sum()), len(true_ids)),
                       "without_prompt": (int((unprompted == true_ids).sum()), len(true_ids))}
    llm_ids = None
    if set(LLM_SAMPLE_CONDITIONS) & set(conditions):
        llm_ids = synth.generate_tokens([synth.prepare_text(text)[1]], prompt, llm_sampling,
                                        torch.Generator().manual_seed(seed))[0]
    sampled = sample(true_ids) if any(c.startswith("flow_tokens") for c in conditions) else None
    decoders = {
        "ground_truth": lambda: wav,
        "griffin_lim": lambda: griffin_lim(mel, audio)[0].numpy(),
        "vocoder": lambda: system.vocoder(mel)[0].numpy(),
        "kmeans_lookup_griffin_lim": lambda: griffin_lim(kmeans_lookup(mel[0], centroids)[None], audio)[0].numpy(),
        "flow_tokens_vocoder": lambda: system.vocoder(sampled)[0].numpy(),
        "flow_tokens_griffin_lim": lambda: griffin_lim(sampled, audio)[0].numpy(),
        "flow_prior_griffin_lim": lambda: griffin_lim(prior(true_ids), audio)[0].numpy(),
        "llm_flow_griffin_lim": lambda: griffin_lim(sample(llm_ids), audio)[0].numpy(),
        "llm_prior_griffin_lim": lambda: griffin_lim(prior(llm_ids), audio)[0].numpy(),
        "llm_teacher_forced_flow_griffin_lim": lambda: griffin_lim(sample(forced_ids), audio)[0].numpy(),
        "llm_teacher_forced_prior_griffin_lim": lambda: griffin_lim(prior(forced_ids), audio)[0].numpy(),
    }
    decoded = {}
    for condition in conditions:
        torch.manual_seed(seed)  # Griffin-Lim's random initial phase, whichever conditions come before
        decoded[condition] = decoders[condition]()
    return decoded, forced_hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--manifest", required=True, help="held-out corpus manifest (test.jsonl)")
    parser.add_argument("--speaker", default="flite-rms")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated subset of {', '.join(CONDITIONS)} (leave out the vocoder rows for an "
                             f"export whose vocoder is untrained)")
    parser.add_argument("--kmeans-manifest", help="training manifest the k-means condition fits its codebook on")
    parser.add_argument("--kmeans-utterances", type=int, default=600, help="utterances of it to fit on")
    parser.add_argument("--asr", default="pocketsphinx")
    parser.add_argument("--similarity", default="resemblyzer", help="speaker judge spec, or 'none'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-strength", type=float, help="flow CFG strength (default: the export's config)")
    parser.add_argument("--temperature", type=float, help="flow source-noise temperature (default: the config)")
    parser.add_argument("--nfe", type=int, help="flow ODE steps (default: the export's config)")
    parser.add_argument("--llm-temperature", type=float,
                        help="LLM sampling temperature of the llm_* conditions (default: the export's synthesis "
                             "setting)")
    parser.add_argument("--llm-top-k", type=int, help="LLM top-k of the llm_* conditions (default: the export's)")
    llm_prompt = parser.add_mutually_exclusive_group()
    llm_prompt.add_argument("--llm-prompt", dest="llm_prompt", action="store_const", const=True,
                            help="the LLM continues the prompt in the llm_* conditions (default: the export's)")
    llm_prompt.add_argument("--no-llm-prompt", dest="llm_prompt", action="store_const", const=False,
                            help="the LLM reads the text alone in the llm_* conditions")
    parser.add_argument("--out", required=True, help="JSON with per-condition summaries and transcripts")
    args = parser.parse_args()
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        parser.error(f"unknown or no conditions {unknown}; choose from {', '.join(CONDITIONS)}")

    if "kmeans_lookup_griffin_lim" in conditions and not args.kmeans_manifest:
        parser.error("the k-means condition needs --kmeans-manifest (the training split)")

    synth = Synthesizer.from_pretrained(args.model)
    centroids = None
    if "kmeans_lookup_griffin_lim" in conditions:
        fit_on = read_jsonl(args.kmeans_manifest)[:args.kmeans_utterances]
        rows = torch.cat([frame_groups(synth.speech_encoder.log_mel(load_audio(e.audio, synth.sample_rate)[0])[0],
                                       synth.system.tokenizer.config.frames_per_token) for e in fit_on])
        centroids = fit_kmeans(rows, synth.system.tokenizer.codebook_size, seed=args.seed)
    asr = build_asr(args.asr)
    judge = None if args.similarity == "none" else build_similarity(args.similarity)
    phone_judge = PocketsphinxPhones()
    entries = sorted((e for e in read_jsonl(args.manifest) if e.speaker == args.speaker), key=lambda e: e.id)
    if len(entries) < 2:
        raise SystemExit(f"need two utterances of {args.speaker!r} in {args.manifest} (one is the prompt)")
    prompt, entries = entries[0], entries[1:args.limit + 1]
    prompt_wav, _ = load_audio(prompt.audio, synth.sample_rate)
    flow_settings = {"cfg_strength": args.cfg_strength, "temperature": args.temperature, "nfe": args.nfe}
    llm_sampling, _ = synth.settings(temperature=args.llm_temperature, top_k=args.llm_top_k,
                                     llm_prompt=args.llm_prompt)
    rows: dict[str, list[tuple[str, str, str]]] = {c: [] for c in conditions}
    forced = {"with_prompt": [0, 0], "without_prompt": [0, 0]}  # correct, total
    similarities: dict[str, list[float]] = {c: [] for c in conditions}
    phones: dict[str, list[list[str]]] = {c: [] for c in conditions}
    for entry in entries:
        wav, rate = load_audio(entry.audio, synth.sample_rate)
        decoded, forced_hits = decode_conditions(synth, wav, entry.text, prompt_wav, prompt.text, conditions,
                                                 args.seed, flow_settings, llm_sampling, centroids)
        for layout, (correct, total) in (forced_hits or {}).items():
            forced[layout][0] += correct
            forced[layout][1] += total
        for condition, audio in decoded.items():
            rows[condition].append((entry.id, entry.text, asr.transcribe([audio], rate)[0]))
            phones[condition].append(phone_judge.recognize([audio], rate)[0])
            if judge is not None:
                similarities[condition].append(judge.similarity(audio, prompt_wav, rate))
    report = {"model": args.model, "flow_settings": flow_settings, "kmeans_manifest": args.kmeans_manifest,
              "llm_sampling": {"temperature": llm_sampling.temperature, "top_k": llm_sampling.top_k,
                               "llm_prompt": llm_sampling.llm_prompt},
              "asr": args.asr, "similarity": args.similarity,
              "speaker": args.speaker, "num_utterances": len(entries), "prompt": prompt.id,
              "teacher_forced_accuracy": {layout: correct / total for layout, (correct, total) in forced.items()
                                          if total},
              "conditions": {}}
    for condition, scored_rows in rows.items():
        summary = summarize_wer(score_utterances(scored_rows, "en"))
        sim = float(np.mean(similarities[condition])) if similarities[condition] else None
        per = unit_error_rates([reference_phones(text) for _, text, _ in scored_rows], phones[condition])
        report["conditions"][condition] = {"seedtts_wer": summary.seedtts_wer, "corpus_wer": summary.corpus_wer,
                                           "mean_per": per["mean_per"], "similarity": sim,
                                           "transcripts": [{"utt": u, "ref": r, "hyp": h} for u, r, h in scored_rows]}
        sim_text = "" if sim is None else f"  SIM {sim:.3f}"
        print(f"{condition:>35}: WER {summary.seedtts_wer:7.2f} %  (corpus {100 * summary.corpus_wer:6.2f} %)  "
              f"PER {per['mean_per']:6.2f} %{sim_text}")
    for layout, accuracy in report["teacher_forced_accuracy"].items():
        print(f"teacher-forced accuracy {layout.replace('_', ' ')}: {accuracy:.3f} of {forced[layout][1]} tokens")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
