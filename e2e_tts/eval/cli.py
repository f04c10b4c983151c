"""The ``e2e-tts eval`` command group: ``seedtts`` (the benchmark, optionally synthesising first), ``per`` (phone
error rate of an evaluated folder), ``failures`` (catastrophic-failure rate, optionally synthesising first over
best-of-N counts), ``tokens`` (codebook usage of an export's speech tokenizer) and ``list`` (a Seed-TTS-Eval list of
a corpus).

Each command parses specs into backend objects and hands them to the library functions, so that everything it
does is also callable (and tested) from Python. Exit status: 0 done, 1 done but some items were missing or failed
(the results name them), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from e2e_tts.audio import AudioRejected, load_audio
from e2e_tts.data.manifest import ManifestEntry, read_manifest
from e2e_tts.eval.failures import REASONS, FailureConfig, SynthesizedItem, detect_failures
from e2e_tts.eval.lists import PROMPTS, TEXTS, write_eval_list
from e2e_tts.eval.phones import UnknownWordError, folder_phone_error_rates
from e2e_tts.eval.plots import save_failure_curve
from e2e_tts.eval.seedtts import (file_sha256, format_summary, read_first_channel, read_meta, run_seedtts,
                                  synthesize_missing, synthesized_wav_paths, write_results)
from e2e_tts.eval.similarity import SpeakerSimilarity, build_similarity
from e2e_tts.models.tokenizer import token_statistics
from e2e_tts.scoring.asr import ASRBackend, parse_asr_spec
from e2e_tts.scoring.normalize import LANGUAGES
from e2e_tts.scoring.verifiers import build_asr, reference_of
from e2e_tts.scoring.wer import id_error_rates
from e2e_tts.synth import Synthesizer
from e2e_tts.synth_cli import LLM_SAMPLING_FIELDS, VOCODER_HELP, add_llm_sampling_arguments, export_default
from e2e_tts.synthesis_config import DECODERS, VOCODERS, SynthesisConfig

NO_SIMILARITY = "none"
BAD_INPUT = (ValueError, FileNotFoundError, ImportError)  # ManifestError and EmptyReferenceError are ValueErrors


def build_judges(asr_spec: str, similarity_spec: str, language: str, device: str = "cpu",
                 synthesizer: Optional[Synthesizer] = None
                 ) -> tuple[ASRBackend, Optional[SpeakerSimilarity], Callable[[str], str]]:
    """Builds the ASR and similarity backends of two specs, and the reference-text mapping the ASR needs.

    Args:
        asr_spec: see :func:`e2e_tts.scoring.asr.parse_asr_spec`.
        similarity_spec: see :func:`e2e_tts.eval.similarity.build_similarity`, or ``"none"``.
        language: ``en`` or ``zh``.
        device: torch device of the models.
        synthesizer: an already loaded model, whose reward model ``rm-audio:<its export dir>`` reuses.
    Returns:
        ``(asr, similarity or None, reference)``: ``reference`` maps a meta text to what a perfect transcript
        reads (:func:`e2e_tts.scoring.verifiers.reference_of`).
    Raises:
        ValueError: for a bad spec, or pocketsphinx asked to judge Chinese.
    """
    if parse_asr_spec(asr_spec).kind == "pocketsphinx" and language != "en":
        raise ValueError(f"pocketsphinx recognises English only; for --language {language} use "
                         f"paraformer:<dir> (the official Chinese judge) or rm-audio:<export dir>")
    asr = build_asr(asr_spec, device=device, loaded=None if synthesizer is None else synthesizer.recognizer)
    similarity = None if similarity_spec == NO_SIMILARITY else build_similarity(similarity_spec, device=device)
    return asr, similarity, reference_of(asr)


def _write_json(data: Any, path: Optional[str]) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False)
    if path is None:
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def _print_incomplete(what: dict[str, str], kind: str) -> None:
    for utt, reason in what.items():
        print(f"{kind}: {utt}: {reason}", file=sys.stderr)


# ---- eval seedtts ------------------------------------------------------------------------------------------------

def run_seedtts_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts eval seedtts``."""
    try:
        synthesis, missing_reasons, synthesizer = None, None, None
        if args.model is None and not Path(args.wavs).is_dir():
            raise FileNotFoundError(f"--wavs folder {args.wavs} does not exist (give --model to synthesise into it)")
        if args.model is not None:
            items = read_meta(args.meta)  # fail on a malformed list before loading a model
            synthesizer = Synthesizer.from_pretrained(args.model, args.device)
            config, notes = _synthesis_settings(args, synthesizer, args.num_candidates)
            synthesis, missing_reasons = synthesize_missing(items, args.wavs, synthesizer, config, notes=notes,
                                                            device=args.device, progress=True)
        asr, similarity, reference = build_judges(args.asr, args.similarity, args.language, args.device,
                                                  synthesizer)
        output = run_seedtts(args.meta, args.wavs, asr, similarity, args.language, ground_truth=args.ground_truth,
                             reference=reference, missing_reasons=missing_reasons, synthesis=synthesis,
                             progress=True)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = write_results(output, args.out)
    conditions = [("synthesized", output["summary"])]
    if "ground_truth" in output:
        conditions.append(("ground truth", output["ground_truth"]["summary"]))
    for label, summary in conditions:
        _print_incomplete(summary["missing"], f"{label} missing")
        _print_incomplete(summary["failed"], f"{label} failed")
        print(format_summary(summary, label))
    print("wrote " + ", ".join(str(path) for path in written))
    incomplete = output["summary"]["num_missing"] + output["summary"]["num_failed"]
    return 1 if incomplete else 0


def _add_seedtts(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "seedtts", help="Seed-TTS-Eval WER/SIM of <wavs>/<utt>.wav (synthesising missing ones with --model)",
        description="Scores exactly as BytedanceSpeech/seed-tts-eval (mean per-utterance WER x 100; SIM against "
                    "the prompt wav) and also reports corpus WER, WER > 0.5 count, WER counting missing items as "
                    "1.0, and every missing or failed item by name. Writes --out (JSON) and <out stem>.tsv in the "
                    "official per-line format. Exit 1 when items are missing or failed.")
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list (meta.lst / hardcase.lst)")
    parser.add_argument("--wavs", required=True, help="folder of <utt>.wav files (written by --model)")
    parser.add_argument("--asr", default="pocketsphinx",
                        help="pocketsphinx (default, English, not comparable with papers), whisper:<dir> (official "
                             "en judge: a local whisper-large-v3), paraformer:<dir> (official zh), rm-audio:<export "
                             "dir> (that export's reward model)")
    parser.add_argument("--similarity", default="resemblyzer",
                        help="resemblyzer (default, not comparable with papers), wavlm-ecapa:<wavlm_large_finetune"
                             ".pth> (official), or none")
    parser.add_argument("--language", choices=LANGUAGES, default="en", help="word (en) or character (zh) scoring")
    parser.add_argument("--out", required=True, help="results JSON path")
    parser.add_argument("--ground-truth", action="store_true",
                        help="also score the meta's ground-truth wavs (the human reference row)")
    parser.add_argument("--device", default="cpu", help="torch device of all models")
    synthesis = _add_synthesis_arguments(parser, "use a fresh --wavs folder per setting")
    synthesis.add_argument("--num-candidates", type=int, help="best-of-N; " + export_default("num_candidates"))
    parser.set_defaults(func=run_seedtts_command)


def _add_synthesis_arguments(parser: argparse.ArgumentParser, folders: str) -> argparse._ArgumentGroup:
    """The flags of a command that synthesises its missing wavs with ``--model`` (``seedtts``, ``failures``), but
    ``--num-candidates``, which each command reads its own way; returns their group. ``folders`` says where the wavs
    of each setting go."""
    synthesis = parser.add_argument_group("synthesis of missing wavs (only with --model; a flag left out takes the "
                                          "export's recorded synthesis setting)")
    synthesis.add_argument("--model", help=f"export directory: synthesise every missing <utt>.wav first, one "
                                           f"zero-shot call per prompt ({folders})")
    synthesis.add_argument("--seed", type=int, help=export_default("seed"))
    add_llm_sampling_arguments(parser.add_argument_group("LLM sampling of missing wavs (only with --model)"))
    synthesis.add_argument("--decoder", choices=DECODERS, help="flow (ODE) or prior (the prior head's mel alone); "
                                                              + export_default("decoder"))
    synthesis.add_argument("--nfe", type=int, help="flow ODE steps (default: the export's, else the flow config's)")
    synthesis.add_argument("--cfg-strength", type=float,
                           help="classifier-free guidance (default: the export's, else the flow config's)")
    synthesis.add_argument("--vocoder", choices=VOCODERS, help=VOCODER_HELP)
    synthesis.add_argument("--verifier", help="best-of-N verifier: rm-tokens or an ASR spec (see e2e-tts synth)")
    synthesis.add_argument("--batch-size", type=int, help=export_default("batch_size"))
    return synthesis


def _synthesis_settings(args: argparse.Namespace, synthesizer: Synthesizer,
                        num_candidates: Optional[int]) -> tuple[SynthesisConfig, list[str]]:
    """The settings :func:`_add_synthesis_arguments`'s flags give (the export's where left out), its notes printed."""
    config, notes = synthesizer.settings(
        seed=args.seed, decoder=args.decoder, nfe=args.nfe, cfg_strength=args.cfg_strength, vocoder=args.vocoder,
        num_candidates=num_candidates, verifier=args.verifier, batch_size=args.batch_size,
        wer_language=args.language, **{name: getattr(args, name) for name in LLM_SAMPLING_FIELDS})
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return config, notes


# ---- eval failures -----------------------------------------------------------------------------------------------

def run_failures(meta: str | Path, wav_dir: str | Path, asr: Optional[ASRBackend],
                 config: FailureConfig, transcripts: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Failure verdicts of ``<wav_dir>/<utt>.wav`` for every meta line; missing or unreadable wavs are listed.

    ``transcripts`` (utt -> transcript by ``asr``, e.g. those :func:`run_seedtts` made) are used instead of
    transcribing again.

    Returns:
        ``settings``, ``num_items``, ``num_judged``, ``missing`` (utt -> reason), ``failure_rate`` (over judged
        items), ``failure_rate_including_missing`` (a missing item counts as failed), ``failed_ids``, ``reasons``
        (utt -> reasons) and ``verdicts`` (every judged item's measurements).
    Raises:
        ManifestError: for a malformed list.
    """
    items = read_meta(meta)
    judged, missing = [], {}
    for item, path in zip(items, synthesized_wav_paths(items, wav_dir)):
        if not Path(path).is_file():
            missing[item.utt] = f"{path} not found"
            continue
        try:
            wav, rate = read_first_channel(path)
        except (RuntimeError, ValueError) as err:  # soundfile's LibsndfileError is a RuntimeError
            missing[item.utt] = f"unreadable audio: {err}"
            continue
        judged.append(SynthesizedItem(item.utt, item.text, wav, rate, (transcripts or {}).get(item.utt)))
    report = detect_failures(judged, config, asr) if judged else None
    failed = report.failed_ids if report else []
    return {
        "settings": {"meta": str(Path(meta).resolve()), "wav_dir": str(Path(wav_dir).resolve()),
                     "asr": None if asr is None else asr.name, "thresholds": dataclasses.asdict(config)},
        "num_items": len(items), "num_judged": len(judged), "missing": missing,
        "failure_rate": report.rate if report else None,
        "failure_rate_including_missing": (len(failed) + len(missing)) / len(items),
        "failed_ids": failed,
        "reasons": {utt: list(reasons) for utt, reasons in (report.reasons if report else {}).items()},
        "verdicts": [dataclasses.asdict(v) for v in report.verdicts] if report else [],
    }


def run_failure_curve(meta: str | Path, wav_root: str | Path, synthesizer: Synthesizer, config: SynthesisConfig,
                      counts: Sequence[int], asr: ASRBackend, failures: FailureConfig, out: str | Path, *,
                      notes: Sequence[str] = (), device: str = "cpu") -> dict[str, Any]:
    """Best-of-N's catastrophic-failure rate and WER for each N of ``counts``.

    Per N the list is synthesised into ``<wav_root>/n<N>`` with ``config`` at ``num_candidates = N``
    (:func:`synthesize_missing`: its verifier keeps one candidate per text), scored by ``asr`` as ``eval seedtts``
    scores (no SIM; ``<out stem>_n<N>.json`` and its TSV, which tools/paired_wer.py compares) and judged by
    :func:`run_failures` on the same transcripts. The rates and WERs are drawn in ``<out stem>.png``. A rerun
    resumes: wavs already there are kept, and a folder that got no new wav keeps the scores an earlier run wrote of
    it by the same judge (N = 8 synthesises eight times the list).

    Returns:
        ``settings`` and ``curve``: per N, ``num_candidates``, ``failure_rate``, ``failure_rate_including_missing``,
        ``seedtts_wer`` (percent), ``num_wer_above_half``, ``reason_counts`` (reason -> failing utterances),
        ``results`` (the seedtts JSON's path) and ``failures`` (:func:`run_failures`' output).
    Raises:
        ValueError: for a count below 1, or best-of-N without a verifier (before anything is synthesised).
    """
    if not counts or min(counts) < 1:
        raise ValueError(f"--num-candidates needs counts >= 1, got {list(counts)}")
    if max(counts) > 1 and config.verifier is None:
        raise ValueError("best-of-N needs a verifier to pick the candidate: give --verifier (rm-tokens: the reward "
                         "model reading the tokens, independent of the judge)")
    out = Path(out)
    items = read_meta(meta)
    curve = []
    for count in counts:
        wav_dir = Path(wav_root) / f"n{count}"
        synthesis, missing_reasons = synthesize_missing(items, wav_dir, synthesizer,
                                                        dataclasses.replace(config, num_candidates=count),
                                                        notes=notes, device=device, progress=True)
        results = out.with_name(f"{out.stem}_n{count}.json")
        scored = None if synthesis["synthesized_now"] else _earlier_scores(results, meta, wav_dir, asr,
                                                                           failures.language)
        if scored is None:
            scored = run_seedtts(meta, wav_dir, asr, None, failures.language, reference=reference_of(asr),
                                 missing_reasons=missing_reasons, synthesis=synthesis, progress=True)
            write_results(scored, results)
        report = run_failures(meta, wav_dir, asr, failures,
                              {row["utt"]: row["hyp"] for row in scored["utterances"] if row["hyp"] is not None})
        reasons = [reason for listed in report["reasons"].values() for reason in listed]
        curve.append({"num_candidates": count, "failure_rate": report["failure_rate"],
                      "failure_rate_including_missing": report["failure_rate_including_missing"],
                      "seedtts_wer": scored["summary"]["seedtts_wer"],
                      "num_wer_above_half": scored["summary"]["num_wer_above_half"],
                      "reason_counts": {reason: reasons.count(reason) for reason in REASONS if reason in reasons},
                      "results": str(results), "failures": report})
    save_failure_curve([row["num_candidates"] for row in curve], [row["failure_rate"] for row in curve],
                       [row["seedtts_wer"] for row in curve], out.with_suffix(".png"))
    return {"settings": {"meta": str(Path(meta).resolve()), "model": str(synthesizer.export_dir),
                         "synthesis": {**dataclasses.asdict(config), "num_candidates": list(counts)}, "asr": asr.name,
                         "thresholds": dataclasses.asdict(failures)},
            "curve": curve}


def _earlier_scores(path: Path, meta: str | Path, wav_dir: Path, asr: ASRBackend,
                    language: str) -> Optional[dict[str, Any]]:
    """The ``eval seedtts`` output at ``path`` when it scored this list's ``wav_dir`` with this judge, else None."""
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text(encoding="utf-8"))
    settings = earlier.get("settings", {})
    same = {"wav_dir": str(wav_dir.resolve()), "meta_sha256": file_sha256(meta), "asr": asr.name, "language": language}
    return earlier if all(settings.get(key) == value for key, value in same.items()) else None


def run_failures_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts eval failures`` (with ``--model``: the curve over ``--num-candidates``)."""
    try:
        config = FailureConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FailureConfig)})
        asr, _, _ = build_judges(args.asr, NO_SIMILARITY, args.language, args.device)
        if args.model is None:
            if args.num_candidates is not None:
                raise ValueError("--num-candidates synthesises: give --model")
            output = run_failures(args.meta, args.wavs, asr, config)
        else:
            counts = args.num_candidates or [1]
            read_meta(args.meta)  # fail on a malformed list before loading a model
            synthesizer = Synthesizer.from_pretrained(args.model, args.device)
            synthesis, notes = _synthesis_settings(args, synthesizer, None)
            if synthesis.verifier == args.asr:
                print(f"note: the verifier is the judge ({args.asr}): best-of-N is scored by what picked it",
                      file=sys.stderr)
            output = run_failure_curve(args.meta, args.wavs, synthesizer, synthesis, counts, asr, config, args.out,
                                       notes=notes, device=args.device)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.model is not None:
        _write_json(output, args.out)
        missing = 0
        for row in output["curve"]:
            report = row["failures"]
            missing += len(report["missing"])
            print(f"N={row['num_candidates']}: failure rate {row['failure_rate']} ({len(report['failed_ids'])} of "
                  f"{report['num_judged']} judged; {len(report['missing'])} missing), WER {row['seedtts_wer']} % "
                  f"-> {row['results']}")
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
        return 1 if missing else 0
    _write_json(output, args.out)
    _print_incomplete(output["missing"], "missing")
    for utt in output["failed_ids"]:
        print(f"failed: {utt}: {', '.join(output['reasons'][utt])}", file=sys.stderr)
    rate = output["failure_rate"]
    print(f"failure rate {'n/a' if rate is None else f'{rate:.4f}'} ({len(output['failed_ids'])} of "
          f"{output['num_judged']} judged; {len(output['missing'])} missing; including missing "
          f"{output['failure_rate_including_missing']:.4f}) -> {args.out}")
    return 1 if output["missing"] else 0


def _counts(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_failures(subparsers: argparse._SubParsersAction) -> None:
    defaults = FailureConfig()
    parser = subparsers.add_parser(
        "failures", help="catastrophic-failure rate of <wavs>/<utt>.wav with the failing ids and reasons",
        description="Judges every line's wav for silence, dropout, truncation, looping and WER > --max-wer "
                    "(e2e_tts.eval.failures). With --model, first synthesises the list with best-of-N for each "
                    "--num-candidates N (into <wavs>/n<N>) and writes the failure rate and WER over N (--out, "
                    "<out stem>_n<N>.json per N as eval seedtts writes it, <out stem>.png). Exit 1 when wavs are "
                    "missing.")
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list")
    parser.add_argument("--wavs", required=True, help="folder of <utt>.wav files")
    parser.add_argument("--asr", default="pocketsphinx", help="ASR spec (see eval seedtts)")
    parser.add_argument("--out", required=True, help="JSON path")
    parser.add_argument("--device", default="cpu")
    synthesis = _add_synthesis_arguments(parser, "N candidates into <wavs>/n<N>: a fresh --wavs folder per setting")
    synthesis.add_argument("--num-candidates", type=_counts, metavar="N[,N...]",
                           help="best-of-N counts, e.g. 1,2,4,8 (default 1); the verifier picks, --asr judges")
    thresholds = parser.add_argument_group("thresholds")
    thresholds.add_argument("--language", choices=LANGUAGES, default=defaults.language)
    thresholds.add_argument("--max-wer", type=float, default=defaults.max_wer)
    thresholds.add_argument("--min-speech-seconds", type=float, default=defaults.min_speech_seconds)
    thresholds.add_argument("--min-seconds-per-char", type=float, default=defaults.min_seconds_per_char)
    thresholds.add_argument("--max-seconds-per-char", type=float, default=defaults.max_seconds_per_char)
    thresholds.add_argument("--duration-slack-seconds", type=float, default=defaults.duration_slack_seconds)
    thresholds.add_argument("--vad-threshold", type=float, default=defaults.vad_threshold)
    parser.set_defaults(func=run_failures_command)


# ---- eval tokens -------------------------------------------------------------------------------------------------

def measure_token_statistics(synthesizer: Synthesizer, entries: Sequence[ManifestEntry]) -> dict[str, Any]:
    """Codebook usage, entropy and adjacent-token MI of the synthesizer's speech tokenizer on a set, and how much
    of each transcript the system's own reward model reads back from the tokens.

    Each utterance goes audio -> model rate -> log-mel -> tokenizer ids on its own (no padding effects). The
    read-back is the reward model's greedy CTC transcript of those ids against the utterance's text ids, scored
    as an edit-distance rate over text ids (IPA symbols with the phoneme tokenizer): a lower bound on what the
    tokens carry of the content, since it is only as good as the reward model. Against the decoders' ceilings
    (``tools/ceilings.py``) it tells a tokenizer that loses the content from a decoder that cannot render it.

    Returns:
        ``codebook_size``, ``tokens_per_second``, ``num_utterances``, ``skipped`` (id -> reason: unreadable, or
        shorter than one token), the fields of :func:`e2e_tts.models.tokenizer.token_statistics`, and
        ``reward_ctc_error`` (percent, all errors / all reference ids) with ``reward_ctc_scored`` (utterances
        whose text gives text ids; the others are left out of the read-back only).
    Raises:
        ValueError: when no utterance gives a token.
    """
    tokenizer = synthesizer.system.tokenizer
    sequences, skipped, references, readings = [], {}, [], []
    for entry in entries:
        try:
            audio, _ = load_audio(entry.audio, synthesizer.sample_rate)
            sequences.append(synthesizer.speech_encoder.encode(audio)[0])
        except (AudioRejected, ValueError) as err:
            skipped[entry.id] = str(err)
            continue
        try:
            text_ids = synthesizer.prepare_text(entry.text)[1]
        except ValueError:
            continue
        ids = sequences[-1]
        with torch.inference_mode():
            reading = synthesizer.system.reward.transcribe_ctc(ids[None], torch.ones(1, len(ids), dtype=torch.bool),
                                                               synthesizer.system.codebook())[0]
        references.append(text_ids.tolist())
        readings.append(reading)
    if not sequences:
        raise ValueError(f"no utterance gave a speech token ({len(skipped)} skipped: {skipped})")
    audio_config = synthesizer.audio_config
    read_back = id_error_rates(references, readings)["corpus_per"] if references else None
    return {"codebook_size": tokenizer.codebook_size,
            "tokens_per_second": audio_config.sample_rate / audio_config.hop_length
            / tokenizer.config.frames_per_token,
            "num_utterances": len(sequences), "skipped": skipped,
            **token_statistics(sequences, tokenizer.codebook_size),
            "reward_ctc_error": read_back, "reward_ctc_scored": len(references)}


def run_tokens_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts eval tokens``."""
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        entries = read_manifest(args.manifest)[:args.limit]
        synthesizer = Synthesizer.from_pretrained(args.model, args.device)
        stats = measure_token_statistics(synthesizer, entries)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output = {"model": str(Path(args.model).resolve()), "manifest": str(Path(args.manifest).resolve()),
              "limit": args.limit, **stats}
    _write_json(output, args.out)
    if args.out is not None:
        read_back = stats["reward_ctc_error"]
        print(f"{stats['num_tokens']} tokens of {stats['num_utterances']} utterances: usage {stats['usage']:.3f}, "
              f"entropy {stats['entropy_bits']:.3f} bits, adjacent MI {stats['mutual_information_bits']:.3f} bits, "
              f"reward model's CTC read-back error {'-' if read_back is None else f'{read_back:.1f} %'} "
              f"-> {args.out}")
    return 0


def _add_tokens(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokens", help="codebook usage, entropy and adjacent MI of an export's speech tokenizer on a set, and the "
                       "reward model's CTC read-back of the transcripts from its tokens")
    parser.add_argument("--model", required=True, help="export directory")
    parser.add_argument("--manifest", required=True, help="utterances (jsonl, LibriTTS, LJSpeech or Kaldi)")
    parser.add_argument("--limit", type=int, help="first N utterances only")
    parser.add_argument("--out", help="JSON path (default: print the JSON)")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=run_tokens_command)


# ---- eval per ----------------------------------------------------------------------------------------------------

def run_per_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts eval per``."""
    try:
        output = folder_phone_error_rates(args.meta, args.wavs)
    except BAD_INPUT + (UnknownWordError,) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _write_json(output, args.out)
    rates = {key: "n/a" if output[f"{key}_mean_per"] is None else f"{output[f'{key}_mean_per']:.2f} %"
             for key in ("synthesized", "ground_truth")}
    print(f"PER {rates['synthesized']} ({output['num_synthesized']} of {output['num_items']} synthesized), "
          f"ground truth {rates['ground_truth']} -> {args.out}")
    return 0


def _add_per(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "per", help="phone error rate of <wavs>/<utt>.wav and the ground truth (pocketsphinx phone decoding)",
        description="Mean per-utterance phone error rate of the synthesized wavs and, where the list has them, the "
                    "ground truth, against the reference phones of each text (e2e_tts.eval.phones). Word WER stays "
                    "above 100 %% until speech is nearly intelligible; PER tells apart two systems that are both "
                    "still there. English only.")
    parser.add_argument("--meta", required=True, help="Seed-TTS-Eval list")
    parser.add_argument("--wavs", required=True, help="folder of <utt>.wav files")
    parser.add_argument("--out", help="JSON path (default: print the JSON)")
    parser.set_defaults(func=run_per_command)


# ---- eval list ---------------------------------------------------------------------------------------------------

def run_list_command(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts eval list``."""
    try:
        lines = write_eval_list(args.manifest, args.out, args.speaker, args.texts, args.prompts, args.limit)
    except BAD_INPUT as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(lines)} items ({args.texts} texts, {args.prompts} prompts)")
    return 0


def _add_list(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list", help="a Seed-TTS-Eval list of a corpus: held-out or test sentences, corpus or LibriVox prompts",
        description="Writes utt|prompt text|prompt wav|text|ground-truth wav lines (e2e_tts.eval.lists); for "
                    "held-out sentences also their flite ground truth beside the list.")
    parser.add_argument("--manifest", required=True, help="corpus manifest of a held-out split (test.jsonl)")
    parser.add_argument("--out", required=True, help="meta.lst path to write")
    parser.add_argument("--speaker", default="flite-rms", help="voice of the corpus prompt and the ground truth")
    parser.add_argument("--texts", choices=TEXTS, default="heldout",
                        help="the domain's held-out sentences (flite ground truth), or the manifest's own")
    parser.add_argument("--prompts", choices=PROMPTS, default="corpus",
                        help="one utterance of --speaker, or the LibriVox recordings of pocketsphinx-testdata")
    parser.add_argument("--limit", type=int, default=50, help="number of items")
    parser.set_defaults(func=run_list_command)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``eval`` with its ``seedtts``, ``per``, ``failures``, ``tokens`` and ``list`` subcommands to the
    ``e2e-tts`` parser."""
    parser = subparsers.add_parser("eval", help="evaluate: Seed-TTS-Eval, phone error rate, failure rate, token "
                                                "statistics, evaluation lists")
    commands = parser.add_subparsers(title="evaluations", dest="eval_command", metavar="EVALUATION")
    _add_seedtts(commands)
    _add_per(commands)
    _add_failures(commands)
    _add_tokens(commands)
    _add_list(commands)

    def print_usage(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=print_usage)
