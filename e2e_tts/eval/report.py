"""The evaluation report: one offline HTML page and its Markdown twin from a ``results.json`` of
:mod:`e2e_tts.eval.seedtts` (and optionally the ``synthesis.json`` of the run that made the wavs).

The page holds the settings, a metrics table (synthesised and, when scored, ground truth), every missing or failed
item, a WER histogram, log-mel spectrograms of the worst utterances (synthesised above ground truth where the meta
has it), the LLM's attention over each utterance's text, and one row per utterance with ``<audio>`` players.
Everything is a relative link into the output folder or to the wavs, with inline CSS and no script: the folder opens
offline.

The attention maps come with the synthesis record: its row of an utterance names the ``(speech steps, text
positions)`` matrix that synthesis wrote beside the wav (:func:`e2e_tts.synth_cli.save_result`). Utterances
without one (no record, or wavs from elsewhere) have no map.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence
from urllib.request import pathname2url

import numpy as np
import torch

from e2e_tts.audio import AudioConfig, AudioRejected, MelSpectrogram, load_audio
from e2e_tts.eval import plots
from e2e_tts.scoring.wer import FAILURE_WER

HTML_FILE = "index.html"
MARKDOWN_FILE = "report.md"
FIGURES = "figures"

_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { color: #1a4d80; } h2 { border-bottom: 2px solid #1a4d80; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #dfe9f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { background: #f8d0d0; } .warn { background: #fcefc7; } .good { background: #d8f0d8; }
.missing { color: #a00; font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
audio { width: 14em; height: 2em; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""

METRICS = (  # (summary key, column title, format)
    ("seedtts_wer", "WER % (official)", "{:.3f}"),
    ("corpus_wer", "corpus WER %", "{:.3f}"),
    ("wer_including_missing", "WER % incl. missing", "{:.3f}"),
    ("num_wer_above_half", "WER > 0.5", "{}"),
    ("wer_at_most_half", "WER % of the rest", "{:.3f}"),
    ("sim", "SIM", "{:.3f}"),
    ("num_wer_scored", "scored", "{}"),
    ("num_missing", "missing", "{}"),
    ("num_failed", "failed", "{}"),
    ("num_items", "items", "{}"),
)


def _fmt(value: Any, pattern: str = "{}") -> str:
    return "n/a" if value is None else pattern.format(value)


def _link(path: Optional[str], out_dir: Path) -> Optional[str]:
    """A relative URL from the report folder to a file (None when there is no such file)."""
    if not path or not os.path.isfile(path):
        return None
    return pathname2url(os.path.relpath(os.path.abspath(path), out_dir.resolve()))


def log_mel(path: str, config: AudioConfig, mel: MelSpectrogram) -> np.ndarray:
    """The project's log-mel ``(T, n_mels)`` of an audio file resampled to ``config.sample_rate``."""
    wav, _ = load_audio(path, config.sample_rate)
    with torch.no_grad():
        return mel(torch.from_numpy(wav))[0].numpy()


def _conditions(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    conditions = [("synthesized", {"summary": results["summary"], "utterances": results["utterances"]})]
    if "ground_truth" in results:
        conditions.append(("ground truth", results["ground_truth"]))
    return conditions


def _worst(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """The ``count`` scored rows with the highest WER (ties in list order)."""
    scored = [row for row in rows if row["wer"] is not None]
    return sorted(scored, key=lambda row: -row["wer"])[:count]


class _Figures:
    """Draws the report's figures into ``<out>/figures`` and remembers them as (caption, relative path)."""

    def __init__(self, out_dir: Path, audio_config: AudioConfig):
        self.out_dir, self.config = out_dir, audio_config
        self.mel = MelSpectrogram(audio_config)
        self.histograms: list[tuple[str, str]] = []
        self.spectrograms: list[tuple[Mapping[str, Any], str]] = []
        self.attention: list[tuple[Mapping[str, Any], str]] = []
        self.skipped: list[str] = []

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    def histogram(self, conditions: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        series = {name: [row["wer"] for row in data["utterances"] if row["wer"] is not None]
                  for name, data in conditions}
        if any(series.values()):
            path = plots.save_wer_histogram(series, self.out_dir / FIGURES / "wer_histogram.png")
            self.histograms.append(("Per-utterance WER", self._relative(path)))

    def spectrograms_of(self, rows: Sequence[Mapping[str, Any]]) -> None:
        frames_per_second = self.config.sample_rate / self.config.hop_length
        for index, row in enumerate(rows):
            panels = []
            for title, path in ((f"synthesized {row['utt']} (WER {row['wer']:.3f})", row["wav"]),
                                ("ground truth", row.get("ground_truth_wav"))):
                if path and os.path.isfile(path):
                    try:
                        panels.append((title, log_mel(path, self.config, self.mel)))
                    except AudioRejected as err:
                        self.skipped.append(f"spectrogram of {path}: {err}")
            if panels:
                path = plots.save_mel_panels(panels, self.out_dir / FIGURES / f"mel_{index:03d}.png",
                                             frames_per_second)
                self.spectrograms.append((row, self._relative(path)))

    def attention_of(self, rows: Sequence[Mapping[str, Any]], synthesis: Optional[Mapping[str, Any]]) -> None:
        """The LLM's text attention of each results row whose synthesis record names one (beside its wav)."""
        made = {row["id"]: row for row in synthesis["utterances"]} if synthesis else {}
        for index, row in enumerate(rows):
            name = made.get(row["utt"], {}).get("text_attention")
            if not name or not row["wav"]:
                continue
            source = Path(row["wav"]).parent / name
            try:
                matrix = np.load(source).astype(np.float64)
                # where along the text each step looks, whatever share of its attention the text gets
                rows_renormalised = matrix / np.maximum(matrix.sum(-1, keepdims=True), 1e-12)
                path = plots.save_alignment(rows_renormalised, self.out_dir / FIGURES / f"attention_{index:04d}.png",
                                            f"{row['utt']}: LLM attention over the text", "text position",
                                            "speech step")
            except (OSError, ValueError) as err:  # missing or unreadable file, not a 2-D matrix
                self.skipped.append(f"text attention of {row['utt']}: {err}")
                continue
            self.attention.append((made[row["utt"]], self._relative(path)))


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", "n/a" if value is None else
                         value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)))
    return rows


def _wer_class(wer: Optional[float]) -> str:
    if wer is None:
        return ""
    return "bad" if wer > FAILURE_WER else "warn" if wer > 0 else "good"


# ---- HTML ---------------------------------------------------------------------------------------------------------

def _h(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _audio(url: Optional[str]) -> str:
    return f'<audio controls preload="none" src="{_h(url)}"></audio>' if url else '<span class="missing">-</span>'


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_h(title)}</th>" for title in header)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: Any, css: str = "") -> str:
    return f'<td class="{css}">{_h(value)}</td>' if css else f"<td>{_h(value)}</td>"


def _render_html(results: Mapping[str, Any], synthesis: Optional[Mapping[str, Any]], figures: _Figures,
                 out_dir: Path) -> str:
    conditions = _conditions(results)
    by_id = {row["id"]: row for row in synthesis["utterances"]} if synthesis else {}
    truth_by_utt = {row["utt"]: row for row in results["ground_truth"]["utterances"]} \
        if "ground_truth" in results else {}
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Seed-TTS-Eval report</title>"
             f"<style>{_CSS}</style></head><body><h1>Seed-TTS-Eval report</h1>"]

    metric_rows = [[_td(name)] + [_td(_fmt(data["summary"].get(key), pattern), "num") for key, _, pattern in METRICS]
                   for name, data in conditions]
    parts.append("<h2>Metrics</h2>")
    parts.append(_html_table(["condition"] + [title for _, title, _ in METRICS], metric_rows))
    parts.append("<p>WER: the official Seed-TTS-Eval number is the mean of per-utterance WERs (x100) over the "
                 "items that were scored; <em>incl. missing</em> counts every item without a WER as 1.0. SIM: "
                 "cosine to the prompt wav.</p>")
    if synthesis:
        totals = synthesis.get("totals", {})
        parts.append(f"<p>Synthesis: {_h(totals.get('utterances'))} utterances, "
                     f"{_fmt(totals.get('audio_seconds'), '{:.1f}')} s of audio, RTF "
                     f"{_fmt(totals.get('rtf'), '{:.3f}')} (model <code>{_h(synthesis.get('model'))}</code>).</p>")

    parts.append("<h2>Missing and failed items</h2>")
    incomplete = [[_td(name), _td(utt, "missing"), _td(kind), _td(reason)]
                  for name, data in conditions for kind in ("missing", "failed")
                  for utt, reason in data["summary"][kind].items()]
    parts.append(_html_table(["condition", "utt", "status", "reason"], incomplete) if incomplete
                 else "<p class=\"good\">None: every item was scored.</p>")

    if figures.histograms:
        parts.append("<h2>WER distribution</h2>")
        parts.extend(f'<figure><img src="{_h(src)}" alt="{_h(caption)}"><figcaption>{_h(caption)}</figcaption>'
                     f"</figure>" for caption, src in figures.histograms)
    if figures.spectrograms:
        parts.append("<h2>Worst utterances: log-mel spectrograms</h2>")
        for row, src in figures.spectrograms:
            parts.append(f'<figure><img src="{_h(src)}" alt="mel {_h(row["utt"])}"><figcaption>'
                         f'<b>{_h(row["utt"])}</b> WER {row["wer"]:.3f}: ref <code>{_h(row["ref_normalized"])}</code>'
                         f' | hyp <code>{_h(row["hyp_normalized"])}</code> {_audio(_link(row["wav"], out_dir))} '
                         f'{_audio(_link(row.get("ground_truth_wav"), out_dir))}</figcaption></figure>')
    if figures.attention:
        parts.append("<h2>The LLM's attention over its text</h2>")
        parts.append("<p>Per utterance, layers and heads averaged: each speech step (as it was generated) against "
                     "the text positions, its row renormalised over the text. A model that reads its text draws a "
                     "diagonal band.</p>")
        parts.extend(f'<figure><img src="{_h(src)}" alt="attention {_h(made["id"])}"><figcaption><b>{_h(made["id"])}'
                     f'</b> <code>{_h(made["normalized_text"])}</code></figcaption></figure>'
                     for made, src in figures.attention)
    if figures.skipped:
        parts.append("<p>Figures skipped: " + "; ".join(_h(reason) for reason in figures.skipped) + "</p>")

    parts.append("<h2>Utterances</h2>")
    header = ["#", "utt", "status", "WER", "S/D/I", "SIM", "dur (s)"]
    header += ["tokens", "RTF"] if by_id else []
    header += ["GT WER"] if truth_by_utt else []
    header += ["reference (normalised)", "transcript (normalised)", "synthesized", "prompt"]
    header += ["ground truth"] if truth_by_utt else []
    rows = []
    for number, row in enumerate(results["utterances"], start=1):
        status = row["status"] + (": " + "; ".join(row["errors"]) if row["errors"] else "")
        cells = [_td(number, "num"), _td(row["utt"]), _td(status, "" if row["status"] == "ok" else "missing"),
                 _td(_fmt(row["wer"], "{:.3f}"), "num " + _wer_class(row["wer"])),
                 _td("" if row["wer"] is None else f"{row['substitutions']}/{row['deletions']}/{row['insertions']}",
                     "num"),
                 _td(_fmt(row["sim"], "{:.3f}"), "num"), _td(_fmt(row["duration"], "{:.2f}"), "num")]
        if by_id:
            made = by_id.get(row["utt"], {})
            cells += [_td(_fmt(made.get("num_tokens")), "num"), _td(_fmt(made.get("rtf"), "{:.3f}"), "num")]
        if truth_by_utt:
            truth_wer = truth_by_utt[row["utt"]]["wer"]
            cells.append(_td(_fmt(truth_wer, "{:.3f}"), "num " + _wer_class(truth_wer)))
        cells += [_td(row["ref_normalized"] if row["ref_normalized"] is not None else row["text"]),
                  _td(row["hyp_normalized"]), f"<td>{_audio(_link(row['wav'], out_dir))}</td>",
                  f"<td>{_audio(_link(row['prompt_wav'], out_dir))}</td>"]
        if truth_by_utt:
            cells.append(f"<td>{_audio(_link(row['ground_truth_wav'], out_dir))}</td>")
        rows.append(cells)
    parts.append(_html_table(header, rows))

    parts.append("<h2>Settings</h2>")
    parts.append(_html_table(["setting", "value"], [[_td(key), _td(value)]
                                                     for key, value in _flatten(results["settings"])]))
    if synthesis:
        parts.append(_html_table(["synthesis setting", "value"],
                                 [[_td(key), _td(value)] for key, value in _flatten(synthesis.get("settings", {}))]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---- Markdown -----------------------------------------------------------------------------------------------------

def _m(value: Any) -> str:
    return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_m(title) for title in header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(_m(cell) for cell in row) + " |" for row in rows)
    return lines + [""]


def _md_link(label: str, url: Optional[str]) -> str:
    return f"[{label}]({url})" if url else "-"


def _render_markdown(results: Mapping[str, Any], synthesis: Optional[Mapping[str, Any]], figures: _Figures,
                     out_dir: Path) -> str:
    conditions = _conditions(results)
    lines = ["# Seed-TTS-Eval report", "", "## Metrics", ""]
    lines += _md_table(["condition"] + [title for _, title, _ in METRICS],
                       [[name] + [_fmt(data["summary"].get(key), pattern) for key, _, pattern in METRICS]
                        for name, data in conditions])
    if synthesis:
        totals = synthesis.get("totals", {})
        lines += [f"Synthesis: {totals.get('utterances')} utterances, RTF {_fmt(totals.get('rtf'), '{:.3f}')}.", ""]
    lines += ["## Missing and failed items", ""]
    incomplete = [[name, utt, kind, reason] for name, data in conditions for kind in ("missing", "failed")
                  for utt, reason in data["summary"][kind].items()]
    lines += _md_table(["condition", "utt", "status", "reason"], incomplete) if incomplete \
        else ["None: every item was scored.", ""]
    if figures.histograms:
        lines += ["## WER distribution", ""] + [f"![{_m(caption)}]({src})" for caption, src in figures.histograms]
        lines += [""]
    if figures.attention:
        lines += ["## The LLM's attention over its text", ""]
        for made, src in figures.attention:
            lines += [f"![attention {made['id']}]({src})", "", f"**{made['id']}** `{made['normalized_text']}`", ""]
    if figures.spectrograms:
        lines += ["## Worst utterances: log-mel spectrograms", ""]
        for row, src in figures.spectrograms:
            lines += [f"![mel {row['utt']}]({src})", "",
                      f"**{row['utt']}** WER {row['wer']:.3f}: ref `{row['ref_normalized']}` | hyp "
                      f"`{row['hyp_normalized']}`", ""]
    lines += ["## Utterances", ""]
    lines += _md_table(["utt", "status", "WER", "S/D/I", "SIM", "dur (s)", "reference", "transcript", "audio",
                        "prompt"],
                       [[row["utt"], row["status"] + (": " + "; ".join(row["errors"]) if row["errors"] else ""),
                         _fmt(row["wer"], "{:.3f}"),
                         "" if row["wer"] is None else f"{row['substitutions']}/{row['deletions']}/{row['insertions']}",
                         _fmt(row["sim"], "{:.3f}"), _fmt(row["duration"], "{:.2f}"),
                         row["ref_normalized"] if row["ref_normalized"] is not None else row["text"],
                         row["hyp_normalized"], _md_link("wav", _link(row["wav"], out_dir)),
                         _md_link("prompt", _link(row["prompt_wav"], out_dir))] for row in results["utterances"]])
    lines += ["## Settings", ""] + _md_table(["setting", "value"], _flatten(results["settings"]))
    return "\n".join(lines)


def build_report(results: Mapping[str, Any], out_dir: str | Path, synthesis: Optional[Mapping[str, Any]] = None,
                 *, max_spectrograms: int = 12, audio_config: Optional[AudioConfig] = None) -> tuple[Path, Path]:
    """Writes ``<out_dir>/index.html``, ``<out_dir>/report.md`` and their figures.

    Args:
        results: the content of a ``results.json`` written by :func:`e2e_tts.eval.seedtts.write_results`.
        out_dir: report folder (created).
        synthesis: the content of a ``synthesis.json`` (from ``e2e-tts synth`` or ``eval seedtts --model``).
        max_spectrograms: how many of the worst-WER utterances get spectrogram figures.
        audio_config: mel analysis of the spectrograms (default: the project's 16 kHz log-mel).
    Returns:
        the HTML and Markdown paths.
    Raises:
        ValueError: when ``results`` is not a Seed-TTS-Eval results document.
    """
    for key in ("settings", "summary", "utterances"):
        if key not in results:
            raise ValueError(f"results has no {key!r}: expected the results.json of 'e2e-tts eval seedtts'")
    if synthesis is not None and "utterances" not in synthesis:
        raise ValueError("synthesis has no 'utterances': expected the synthesis.json of 'e2e-tts synth'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out_dir, audio_config or AudioConfig())
    figures.histogram(_conditions(results))
    figures.spectrograms_of(_worst(results["utterances"], max_spectrograms))
    figures.attention_of(results["utterances"], synthesis)
    html_path, markdown_path = out_dir / HTML_FILE, out_dir / MARKDOWN_FILE
    html_path.write_text(_render_html(results, synthesis, figures, out_dir), encoding="utf-8")
    markdown_path.write_text(_render_markdown(results, synthesis, figures, out_dir), encoding="utf-8")
    return html_path, markdown_path


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


def run(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts report``; bad input is reported on stderr with exit status 2."""
    try:
        results = _read_json(args.eval, "--eval")
        synthesis = _read_json(args.synthesis, "--synthesis") if args.synthesis else None
        html_path, markdown_path = build_report(results, args.out, synthesis, max_spectrograms=args.max_spectrograms)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {html_path} and {markdown_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``report`` subcommand to the ``e2e-tts`` command line."""
    parser = subparsers.add_parser("report", help="HTML + Markdown report of an eval results.json",
                                   description="Writes <out>/index.html (offline: no CDN, no script), "
                                               "<out>/report.md and <out>/figures/*.png.")
    parser.add_argument("--eval", required=True, help="results.json of 'e2e-tts eval seedtts'")
    parser.add_argument("--synthesis", help="synthesis.json of the run that made the wavs (adds tokens and RTF)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--max-spectrograms", type=int, default=12,
                        help="spectrogram figures for this many worst-WER utterances")
    parser.set_defaults(func=run)
