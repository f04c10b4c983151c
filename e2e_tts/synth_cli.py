"""The ``e2e-tts synth`` command: texts (one, several, or an ``id<TAB>text`` file) -> ``<out>/<id>.wav``, the LLM's
attention over each text (``<out>/<id>.text_attention.npy``) and ``<out>/synthesis.json``, with an exported model
(:class:`e2e_tts.synth.Synthesizer`).

Also the flags ``e2e-tts eval seedtts`` shares with it, so that both commands spell a setting alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from e2e_tts.audio import is_silent, write_audio
from e2e_tts.data.manifest import utterance_id_problem
from e2e_tts.models.flow import SCHEDULES
from e2e_tts.scoring.normalize import LANGUAGES as WER_LANGUAGES
from e2e_tts.synth import SynthesisResult, Synthesizer
from e2e_tts.synthesis_config import DECODERS, VOCODERS, SynthesisConfig

RESULTS_FILE = "synthesis.json"
ATTENTION_SUFFIX = ".text_attention.npy"  # <utt>.text_attention.npy beside <utt>.wav


def save_result(result: SynthesisResult, folder: Path, utt: str) -> dict[str, Any]:
    """Writes ``<folder>/<utt>.wav`` and the LLM's text attention ``<utt>.text_attention.npy`` (float16); returns
    the utterance's row of synthesis.json: :meth:`SynthesisResult.to_json` and the two files' names."""
    write_audio(folder / f"{utt}.wav", result.wav, result.sample_rate)
    np.save(folder / f"{utt}{ATTENTION_SUFFIX}", result.text_attention.astype(np.float16))
    return {"id": utt, "wav": f"{utt}.wav", "text_attention": f"{utt}{ATTENTION_SUFFIX}", **result.to_json()}


def synthesis_totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``totals`` of synthesis.json from its utterance rows (:func:`save_result`): utterances, seconds of audio and
    of compute, and their ratio (None without audio)."""
    audio = sum(row["duration"] for row in rows)
    compute = sum(sum(row["timings"].values()) for row in rows)
    return {"utterances": len(rows), "audio_seconds": audio, "compute_seconds": compute,
            "rtf": compute / audio if audio > 0 else None}


def read_text_list(path: str | Path) -> list[tuple[str, str]]:
    """Reads ``id<TAB>text`` lines (blank lines are skipped).

    Raises:
        ValueError: naming the file and line number of a line without a tab, with an empty id or text, with an id
            that cannot be a file name, or with a duplicate id.
    """
    items: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt, tab, text = line.partition("\t")
        utt, text = utt.strip(), text.strip()
        where = f"{path}:{number}"
        if not tab:
            raise ValueError(f"{where}: expected 'id<TAB>text', found no tab in {line!r}")
        if not utt or not text:
            raise ValueError(f"{where}: empty {'id' if not utt else 'text'} in {line!r}")
        problem = utterance_id_problem(utt)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if utt in seen:
            raise ValueError(f"{where}: duplicate id {utt!r} (first on line {seen[utt]})")
        seen[utt] = number
        items.append((utt, text))
    if not items:
        raise ValueError(f"{path}: no 'id<TAB>text' line")
    return items


LLM_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_aware", "min_len_ratio", "max_len_ratio",
                       "llm_prompt")


VOCODER_HELP = ("default: the export's synthesis.vocoder, else its vocoder when the export records it trained, "
                "else griffin-lim (with a note)")


def export_default(field: str) -> str:
    """Help text of a flag whose default is the export's recorded setting."""
    return f"default: the export's synthesis.{field}, else {getattr(SynthesisConfig(), field)}"


def add_llm_sampling_arguments(group: argparse._ActionsContainer) -> None:
    """Adds the flags of :data:`LLM_SAMPLING_FIELDS` (``e2e-tts synth`` and ``e2e-tts eval seedtts`` share them).

    Every default is None, so that the export's recorded setting applies unless the flag is given.
    """
    group.add_argument("--temperature", type=float, help=export_default("temperature"))
    group.add_argument("--top-k", type=int, help=export_default("top_k"))
    group.add_argument("--top-p", type=float, help=export_default("top_p"))
    group.add_argument("--no-repetition-aware", dest="repetition_aware", action="store_const", const=False,
                       help="plain nucleus sampling instead of repetition-aware sampling")
    group.add_argument("--min-len-ratio", type=float,
                       help="no EOS before this many speech tokens per text id; " + export_default("min_len_ratio"))
    group.add_argument("--max-len-ratio", type=float,
                       help="stop without EOS at this many speech tokens per text id; "
                            + export_default("max_len_ratio"))
    prompt = group.add_mutually_exclusive_group()
    prompt.add_argument("--llm-prompt", dest="llm_prompt", action="store_const", const=True,
                        help="the LLM continues the prompt (zero-shot); " + export_default("llm_prompt"))
    prompt.add_argument("--no-llm-prompt", dest="llm_prompt", action="store_const", const=False,
                        help="the LLM reads the text alone; only the flow hears the prompt")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``synth`` subcommand to the ``e2e-tts`` command line (flags left out take the export's settings)."""
    parser = subparsers.add_parser("synth", help="synthesise texts with an exported model (zero-shot, best-of-N)",
                                   description="Writes <out>/<id>.wav per text and <out>/synthesis.json. A flag "
                                               "left out takes the export's recorded synthesis setting (the "
                                               "recipe's), else the built-in default.")
    parser.add_argument("--model", required=True, help="export directory (<stage output_dir>/export)")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a text to say (repeatable; ids utt1, utt2, ...)")
    texts.add_argument("--texts", help="TSV file of 'id<TAB>text' lines")
    parser.add_argument("--prompt-wav", help="zero-shot prompt audio (any rate; resampled)")
    parser.add_argument("--prompt-text", help="transcript of --prompt-wav")
    parser.add_argument("--out", required=True, help="output folder")
    add_llm_sampling_arguments(parser.add_argument_group("LLM sampling"))
    decoding = parser.add_argument_group("flow and vocoder (left out: the export's synthesis settings, else the "
                                         "flow config's)")
    decoding.add_argument("--decoder", choices=DECODERS, help="flow (ODE) or prior (the prior head's mel alone); "
                                                             + export_default("decoder"))
    decoding.add_argument("--solver", help="torchdiffeq method (euler, midpoint, rk4, dopri5, ...)")
    decoding.add_argument("--nfe", type=int, help="ODE steps")
    decoding.add_argument("--schedule", choices=SCHEDULES, help="ODE time grid")
    decoding.add_argument("--sway-coef", type=float, help="sway schedule coefficient")
    decoding.add_argument("--cfg-strength", type=float, help="classifier-free guidance strength")
    decoding.add_argument("--vocoder", choices=VOCODERS, help=VOCODER_HELP)
    decoding.add_argument("--griffin-lim-iters", type=int, help=export_default("griffin_lim_iters"))
    best = parser.add_argument_group("best-of-N")
    best.add_argument("--num-candidates", type=int, help="N (1 = off); " + export_default("num_candidates"))
    best.add_argument("--verifier", help="rm-tokens (this model's reward model reads the generated tokens) or an "
                                         "ASR spec: pocketsphinx, whisper:<dir>, paraformer:<dir>, rm-audio:<export "
                                         "dir> (that export's reward model transcribes the audio)")
    best.add_argument("--wer-language", choices=WER_LANGUAGES, help="WER scoring language (default: from the model)")
    best.add_argument("--min-seconds-per-char", type=float,
                      help="shorter candidates are dropouts; " + export_default("min_seconds_per_char"))
    parser.add_argument("--seed", type=int, help=export_default("seed"))
    parser.add_argument("--batch-size", type=int, help="rows per model call; " + export_default("batch_size"))
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts synth``; bad input is reported on stderr with exit status 2."""
    try:
        items = read_text_list(args.texts) if args.texts else [(f"utt{i}", t) for i, t in enumerate(args.text, 1)]
        synthesizer = Synthesizer.from_pretrained(args.model, args.device)
        for utt, text in items:  # a text the model cannot say is named by its id (and file) before any synthesis
            synthesizer.prepare_text(text, f"{args.texts}: id {utt!r}: text" if args.texts else "text")
        config, notes = synthesizer.settings(**{f.name: getattr(args, f.name)
                                                for f in dataclasses.fields(SynthesisConfig)})
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        results = synthesizer.synthesize([text for _, text in items], args.prompt_wav, args.prompt_text, config,
                                         progress=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    utterances = [save_result(result, out, utt) for (utt, _), result in zip(items, results)]
    totals = synthesis_totals(utterances)
    silent = [utt for (utt, _), r in zip(items, results)
              if is_silent(r.wav, synthesizer.audio_config.silence_threshold_db)]
    summary = {"model": str(Path(args.model).resolve()), "device": args.device,
               "prompt_wav": args.prompt_wav, "prompt_text": args.prompt_text,
               "settings": dataclasses.asdict(config), "notes": notes, "sample_rate": synthesizer.sample_rate,
               "totals": {**totals, "silent": silent},
               "utterances": utterances}
    (out / RESULTS_FILE).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    if silent:
        print(f"warning: {len(silent)} of {len(results)} outputs are silent: {', '.join(silent)}", file=sys.stderr)
    rtf = totals["rtf"]
    print(f"{len(results)} utterances, {totals['audio_seconds']:.1f} s of audio, "
          f"RTF {'n/a' if rtf is None else f'{rtf:.3f}'}"
          f" -> {out}")
    return 0
