"""The Seed-TTS-Eval runner: official WER and SIM of a folder of ``<utt>.wav`` files against a ``meta.lst``, with
every missing or failed item named.

Faithful to github.com/BytedanceSpeech/seed-tts-eval (its scripts are named below):

* WER: ``<wav_dir>/<utt>.wav`` is transcribed by an ASR backend (:mod:`e2e_tts.scoring.asr`), the meta line's target
  text and the transcript are normalised and scored per utterance (:mod:`e2e_tts.scoring.wer`); the headline is the
  mean of per-utterance WERs x 100 rounded to 3 decimals (``average_wer.py``).
* SIM: cosine of the speaker embeddings of the synthesised wav and the *prompt* wav of its meta line (not the
  ground truth), each resampled to 16 kHz by the judge (:mod:`e2e_tts.eval.similarity`), mean over the pairs
  rounded to 3 decimals (``average.py``). Lines without a prompt (the 2-field form) have no SIM and are not errors.
* Audio is read with soundfile at its native rate as float64 (as ``run_wer.py`` reads it); a multi-channel file
  gives its first channel, which is what ``verification.py`` means to take (its ``wav1[:, 0]`` on a
  ``(channels, T)`` array is a bug that only multi-channel synthesised files would hit).

Departures, all towards reporting more:

* The official scripts skip missing wavs and failing pairs silently. Here every item ends ``ok``, ``missing`` (no
  wav) or ``failed`` (unreadable audio, an ASR or SIM error), with the reason, in the summary and in its row.
* The official WER and SIM average over the items that have them, exactly as the official scripts do.
  ``wer_including_missing`` also counts every item without a WER (missing wav, unreadable audio, ASR error) as
  WER 1.0, what an empty transcript scores, so that a system cannot improve its number by not producing hard items.
* Also given: corpus WER (all errors / all reference tokens), the count of WER > 0.5 and the mean WER of the others.
* A reference text that normalises to nothing is an error before any audio is read (the official script crashes
  on it mid-run, see :class:`~e2e_tts.scoring.wer.EmptyReferenceError`).
* A silent wav (peak below ``AudioConfig.silence_threshold_db``) is ``failed``: it scores the WER of an empty
  transcript (1.0) without asking the ASR, and no SIM (an embedding of silence scored 0.43 against a voice, which
  raised the mean).
* A list without an utterance line is an error (:func:`read_meta`), not "0 of 0".

``results.json`` (:func:`write_results`)::

    settings:     meta path and sha256, wav dir, language, asr and similarity names, package versions, synthesis
    summary:      see :func:`summarize` (WERs in percent, SIM as a cosine)
    utterances:   one row per meta line, see :meth:`ItemResult.to_json` (the row's ``wer`` is a fraction)
    ground_truth: optional, {summary, utterances} of the meta's ground-truth wavs scored the same way

Next to it, ``<stem>.tsv`` (and ``<stem>.ground_truth.tsv``) in ``run_wer.py``'s per-line format
``wav\\twer\\ttruth\\thypo\\tins\\tdel\\tsub`` (raw texts; ins/del/sub are counts divided by the number of
space-separated tokens of the normalised reference), so the official ``average_wer.py`` reads it unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from e2e_tts.audio import AudioConfig, is_silent, missing_wav_data
from e2e_tts.data.manifest import SeedTTSItem, read_seedtts_meta
from e2e_tts.eval.similarity import SpeakerSimilarity, mean_similarity
from e2e_tts.scoring.asr import ASRBackend
from e2e_tts.scoring.wer import ScoredUtterance, score_utterance, summarize_wer

if TYPE_CHECKING:  # synthesis is optional here; importing it loads every model module
    from e2e_tts.synth import Synthesizer
    from e2e_tts.synthesis_config import SynthesisConfig

RESULTS_FORMAT = "e2e-tts/seedtts-eval/1"
VERSIONED_PACKAGES = ("e2e-tts", "jiwer", "transformers", "torch", "numpy", "soundfile", "pocketsphinx",
                      "resemblyzer", "funasr", "zhconv")
_SCORED_FIELDS = ("ref", "hyp", "ref_normalized", "hyp_normalized", "wer", "substitutions", "deletions",
                  "insertions", "ref_words")  # ScoredUtterance fields copied into a results row
_TSV_UNSAFE = str.maketrans({"\t": " ", "\n": " ", "\r": " "})  # would break the 7-field line


@dataclass
class ItemResult:
    """The outcome of one meta line under one condition (synthesised or ground truth).

    Attributes:
        item: the meta line.
        wav: the audio path scored (None when the condition has no audio for this line).
        status: ``ok``, ``missing`` or ``failed``.
        errors: why the item is missing or failed (empty when ``ok``).
        duration: seconds of audio; sample_rate: its native rate.
        scored: the WER details (None without a transcript).
        sim: speaker similarity to the prompt (None without a prompt, or on error).
    """

    item: SeedTTSItem
    wav: Optional[str]
    status: str = "ok"
    errors: list[str] = field(default_factory=list)
    duration: Optional[float] = None
    sample_rate: Optional[int] = None
    scored: Optional[ScoredUtterance] = None
    sim: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        """One flat, JSON-serialisable row."""
        return {
            "utt": self.item.utt, "status": self.status, "errors": list(self.errors), "text": self.item.text,
            "wav": self.wav, "prompt_wav": self.item.prompt_audio, "prompt_text": self.item.prompt_text,
            "ground_truth_wav": self.item.ground_truth_audio, "duration": self.duration,
            "sample_rate": self.sample_rate,
            **{name: getattr(self.scored, name) if self.scored else None for name in _SCORED_FIELDS},
            "sim": self.sim,
        }


def read_meta(path: str | Path) -> list[SeedTTSItem]:
    """The lines of a Seed-TTS-Eval list (:func:`~e2e_tts.data.manifest.read_seedtts_meta`).

    Raises:
        ManifestError: for a malformed line.
        ValueError: naming the file when it has no utterance line (scoring it would report "0 of 0" as done).
    """
    items = read_seedtts_meta(path)
    if not items:
        raise ValueError(f"{path}: no utterance line: nothing to synthesise or score")
    return items


MAX_SCORED_SECONDS = 300.0  # no utterance of a test list is near this: a longer header lies or the model looped


def read_first_channel(path: str | Path, max_seconds: float = MAX_SCORED_SECONDS) -> tuple[np.ndarray, int]:
    """Reads audio at its native rate: ``(N,)`` float64 (the first channel of a multi-channel file) and the rate.

    Raises:
        ValueError: naming the file when its header declares more than ``max_seconds`` (judged before decoding) or
            the file ends before the audio its header declares (libsndfile would quietly read the rest).
        RuntimeError: soundfile's error for a file it cannot read.
    """
    with sf.SoundFile(str(path)) as file:
        rate, declared = file.samplerate, file.frames
        if declared > max_seconds * rate:
            raise ValueError(f"{path}: the header declares {declared / rate:.1f} s, more than {max_seconds} s")
        data = file.read(dtype="float64", always_2d=True)
    if len(data) < declared or missing_wav_data(path):
        raise ValueError(f"{path}: truncated: the file ends before the audio its header declares")
    return np.ascontiguousarray(data[:, 0]), int(rate)


def synthesized_wav_paths(items: Sequence[SeedTTSItem], wav_dir: str | Path) -> list[str]:
    """``<wav_dir>/<utt>.wav`` for each item, the file name the official scripts expect."""
    return [os.path.join(str(wav_dir), f"{item.utt}.wav") for item in items]


def ground_truth_wav_paths(items: Sequence[SeedTTSItem]) -> list[Optional[str]]:
    """The ground-truth wav of each line (None for lines without the 5th field)."""
    return [item.ground_truth_audio for item in items]


def _error(stage: str, err: BaseException) -> str:
    return f"{stage}: {type(err).__name__}: {err}"


def evaluate(items: Sequence[SeedTTSItem], wav_paths: Sequence[Optional[str]], asr: ASRBackend,
             similarity: Optional[SpeakerSimilarity], language: str, *,
             reference: Optional[Callable[[str], str]] = None, missing_reasons: Optional[Mapping[str, str]] = None,
             silence_threshold_db: float = AudioConfig.silence_threshold_db, progress: bool = False,
             label: str = "synthesized") -> list[ItemResult]:
    """Transcribes, scores and speaker-compares every item's wav; never drops an item.

    Args:
        items: meta lines.
        wav_paths: the audio to score for each item (None = this condition has none).
        asr: recogniser; called with one waveform at a time so that an error belongs to one item.
        similarity: speaker judge, or None to skip SIM.
        language: ``en`` or ``zh`` scoring.
        reference: maps a meta text to what a perfect transcript reads (None = the text itself; a reward-model
            recogniser transcribes in its text tokenizer's rendering).
        missing_reasons: utt -> why its wav does not exist (e.g. synthesis rejected the text), reported instead
            of a bare "not found".
        silence_threshold_db: peak dBFS below which a wav is silent: failed, WER of an empty transcript, no SIM.
        progress: show a progress bar.
        label: the condition's name on the progress bar.
    Returns:
        one :class:`ItemResult` per item, in order.
    Raises:
        ValueError: when ``wav_paths`` and ``items`` differ in length.
        EmptyReferenceError: naming the first item whose reference normalises to nothing (checked before any
            audio is read).
    """
    if len(wav_paths) != len(items):
        raise ValueError(f"got {len(wav_paths)} wav paths for {len(items)} items")
    reference = reference or (lambda text: text)
    missing_reasons = missing_reasons or {}
    references = [reference(item.text) for item in items]
    for item, ref in zip(items, references):
        score_utterance(item.utt, ref, ref, language)  # raises EmptyReferenceError
    results = []
    for item, path, ref in tqdm(list(zip(items, wav_paths, references)), desc=label, unit="utt",
                                disable=not progress):
        result = ItemResult(item, path)
        results.append(result)
        if path is None or not os.path.isfile(path):
            result.status = "missing"
            result.errors.append(missing_reasons.get(item.utt) or
                                 ("no wav for this line" if path is None else f"{path} not found"))
            continue
        try:
            wav, rate = read_first_channel(path)
        except (RuntimeError, ValueError) as err:  # soundfile's LibsndfileError is a RuntimeError
            result.status = "failed"
            result.errors.append(_error("unreadable audio", err))
            continue
        result.duration, result.sample_rate = len(wav) / rate, rate
        if is_silent(wav, silence_threshold_db):  # nothing said: counts in WER, kept out of SIM
            result.status = "failed"
            result.errors.append(f"silent audio (peak below {silence_threshold_db} dBFS)")
            result.scored = score_utterance(item.utt, ref, "", language)
            continue
        try:
            result.scored = score_utterance(item.utt, ref, asr.transcribe([wav], rate)[0], language)
        except Exception as err:  # noqa: BLE001 - any backend error is this item's failure, reported by name
            result.errors.append(_error("asr", err))
        if similarity is not None and item.prompt_audio is not None:
            try:
                prompt, prompt_rate = read_first_channel(item.prompt_audio)
                result.sim = float(similarity.similarity(wav, prompt, rate, prompt_rate))
            except Exception as err:  # noqa: BLE001 - as above
                result.errors.append(_error("sim", err))
        result.status = "failed" if result.errors else "ok"
    return results


def _read_synthesis_record(path: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Utterance records (by id) of an earlier run into the same folder with the same model and settings.

    Raises:
        ValueError: when the folder holds audio synthesised by another model or with other settings.
    """
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a synthesis record: {err}; use a fresh --wavs folder") from None
    if not isinstance(previous, dict):
        raise ValueError(f"{path}: not a synthesis record (a JSON object); use a fresh --wavs folder")
    for key in ("model", "settings"):
        if previous.get(key) != header[key]:
            raise ValueError(f"{path} records wavs synthesised with another {key} ({previous.get(key)!r}, now "
                             f"{header[key]!r}); mixing them would score neither: use a fresh --wavs folder")
    return {row["id"]: row for row in previous.get("utterances", [])}


def _write_synthesis_record(path: Path, header: dict[str, Any], rows: Mapping[str, dict[str, Any]]) -> None:
    from e2e_tts.synth_cli import synthesis_totals

    record = {**header, "totals": synthesis_totals(list(rows.values())), "utterances": list(rows.values())}
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False), encoding="utf-8")


def synthesize_missing(items: Sequence[SeedTTSItem], wav_dir: str | Path, synthesizer: Synthesizer,
                       config: SynthesisConfig, *, notes: Sequence[str] = (), device: str = "cpu",
                       progress: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Synthesises ``<wav_dir>/<utt>.wav`` (and the LLM's attention over the text, ``<utt>.text_attention.npy``)
    for every item that has none, one zero-shot call per prompt.

    Existing wavs are kept, so a rerun resumes an interrupted run. ``<wav_dir>/synthesis.json`` (the format of
    ``e2e-tts synth``) is rewritten after each prompt group and refuses a folder filled by another model or other
    settings; encode the settings in the folder name (F5-TTS style) to compare several.

    Args:
        items: meta lines.
        wav_dir: output folder.
        synthesizer: the model.
        config: sampling, decoding and best-of-N settings (:meth:`Synthesizer.settings`).
        notes: what the user was told about the settings (e.g. a fallback to Griffin-Lim), recorded.
        device: recorded in ``synthesis.json``.
        progress: show progress bars.
    Returns:
        what to record in the results' settings, and utt -> why it was not synthesised (a text the model
        rejects, a prompt without transcript or one that cannot be encoded).
    """
    from e2e_tts.synth_cli import RESULTS_FILE, save_result

    wav_dir = Path(wav_dir)
    wav_dir.mkdir(parents=True, exist_ok=True)
    record_path = wav_dir / RESULTS_FILE
    header = {"model": str(synthesizer.export_dir), "device": device, "settings": dataclasses.asdict(config),
              "notes": list(notes), "sample_rate": synthesizer.sample_rate}
    rows = _read_synthesis_record(record_path, header)
    rejected: dict[str, str] = {}
    groups: dict[tuple[Optional[str], Optional[str]], list[SeedTTSItem]] = {}
    for item, path in zip(items, synthesized_wav_paths(items, wav_dir)):
        if os.path.isfile(path):
            continue
        if item.prompt_audio is not None and item.prompt_text is None:
            rejected[item.utt] = ("not synthesised: the line has a prompt wav but no prompt text (3-field form); "
                                  "zero-shot synthesis needs both")
            continue
        try:
            synthesizer.prepare_text(item.text)
        except ValueError as err:
            rejected[item.utt] = f"not synthesised: {err}"
            continue
        groups.setdefault((item.prompt_audio, item.prompt_text), []).append(item)
    synthesized = 0
    for (prompt_wav, prompt_text), group in groups.items():
        try:
            results = synthesizer.synthesize([item.text for item in group], prompt_wav, prompt_text, config,
                                             progress=progress)
        except ValueError as err:  # the prompt (audio or transcript) was rejected: the whole group goes
            rejected.update({item.utt: f"not synthesised: prompt {prompt_wav}: {err}" for item in group})
            continue
        for item, result in zip(group, results):
            rows[item.utt] = {**save_result(result, wav_dir, item.utt), "prompt_wav": prompt_wav,
                              "prompt_text": prompt_text}
        synthesized += len(group)
        _write_synthesis_record(record_path, header, rows)
    record = {"model": header["model"], "settings": header["settings"], "notes": header["notes"],
              "record": str(record_path.resolve()),
              "synthesized_now": synthesized, "rejected": rejected}
    return record, rejected


def _percent(fraction: Optional[float]) -> Optional[float]:
    return None if fraction is None else float(round(fraction * 100, 3))


def summarize(results: Sequence[ItemResult]) -> dict[str, Any]:
    """Official and extra aggregates of one condition.

    Returns:
        ``num_items``, ``num_ok``, ``num_missing``, ``num_failed``, ``missing`` (utt -> reason), ``failed``
        (utt -> reasons joined by "; "), ``num_wer_scored``; in percent rounded to 3 decimals: ``seedtts_wer``
        (the official number), ``corpus_wer``, ``wer_including_missing`` (items without a WER count 1.0),
        ``wer_at_most_half`` (mean over items with WER <= 0.5); ``num_wer_above_half``; ``num_sim_scored``,
        ``sim`` and ``sim_variance`` (the official ``average.py`` rounding). WER/SIM fields are None when
        nothing was scored.
    """
    scored = [r.scored for r in results if r.scored is not None]
    sims = [r.sim for r in results if r.sim is not None]
    summary: dict[str, Any] = {
        "num_items": len(results),
        "num_ok": sum(r.status == "ok" for r in results),
        "num_missing": sum(r.status == "missing" for r in results),
        "num_failed": sum(r.status == "failed" for r in results),
        "missing": {r.item.utt: "; ".join(r.errors) for r in results if r.status == "missing"},
        "failed": {r.item.utt: "; ".join(r.errors) for r in results if r.status == "failed"},
        "num_wer_scored": len(scored),
        "seedtts_wer": None, "corpus_wer": None, "wer_including_missing": None, "wer_at_most_half": None,
        "num_wer_above_half": None, "num_sim_scored": len(sims), "sim": None, "sim_variance": None,
    }
    if scored:
        wer = summarize_wer(scored)
        with_missing = [u.wer for u in scored] + [1.0] * (len(results) - len(scored))
        summary.update(seedtts_wer=wer.seedtts_wer, corpus_wer=_percent(wer.corpus_wer),
                       wer_including_missing=_percent(float(np.mean(with_missing))),
                       wer_at_most_half=_percent(wer.mean_wer_at_most_half),
                       num_wer_above_half=wer.num_wer_above_half)
    if sims:
        summary["sim"], summary["sim_variance"] = mean_similarity(sims)
    return summary


def condition_json(results: Sequence[ItemResult]) -> dict[str, Any]:
    """``{summary, utterances}`` of one condition."""
    return {"summary": summarize(results), "utterances": [r.to_json() for r in results]}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, Optional[str]]:
    """Installed versions of the packages that decide the scores (None = not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_seedtts(meta: str | Path, wav_dir: str | Path, asr: ASRBackend, similarity: Optional[SpeakerSimilarity],
                language: str, *, ground_truth: bool = False, reference: Optional[Callable[[str], str]] = None,
                missing_reasons: Optional[Mapping[str, str]] = None, synthesis: Optional[dict[str, Any]] = None,
                progress: bool = False) -> dict[str, Any]:
    """Scores a meta list (and optionally its ground truth) and returns the ``results.json`` content.

    Args:
        meta: a Seed-TTS-Eval list (any of the 2-5 field forms).
        wav_dir: folder of ``<utt>.wav`` files.
        asr, similarity, language, reference, missing_reasons, progress: see :func:`evaluate`.
        ground_truth: also score the meta's ground-truth wavs (the "human" reference row).
        synthesis: how missing wavs were synthesised (recorded in the settings), or None.
    Raises:
        ManifestError: for a malformed meta list (``<file>:<line>: ...``); ValueError for an empty one.
        EmptyReferenceError: for a text that normalises to nothing.
    """
    meta = Path(meta)
    items = read_meta(meta)
    results = evaluate(items, synthesized_wav_paths(items, wav_dir), asr, similarity, language,
                       reference=reference, missing_reasons=missing_reasons, progress=progress)
    settings = {
        "meta": str(meta.resolve()), "meta_sha256": file_sha256(meta), "wav_dir": str(Path(wav_dir).resolve()),
        "language": language, "asr": asr.name, "similarity": None if similarity is None else similarity.name,
        "versions": package_versions(), "synthesis": synthesis,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    output = {"format": RESULTS_FORMAT, "settings": settings, **condition_json(results)}
    if ground_truth:
        truth = evaluate(items, ground_truth_wav_paths(items), asr, similarity, language, reference=reference,
                         progress=progress, label="ground truth")
        output["ground_truth"] = condition_json(truth)
    return output


def official_tsv_lines(utterances: Sequence[Mapping[str, Any]]) -> list[str]:
    """``run_wer.py``'s output lines for the rows that have a WER.

    Texts keep their raw form (tabs and newlines become spaces so that a line stays 7 fields); the ins/del/sub
    columns are rates over ``len(ref_normalized.split(" "))``, which is what the official script divides by.
    """
    lines = []
    for row in utterances:
        if row["wer"] is None:
            continue
        tokens = len(row["ref_normalized"].split(" "))
        truth, hypo = (row[key].translate(_TSV_UNSAFE) for key in ("ref", "hyp"))
        lines.append(f"{row['wav']}\t{row['wer']}\t{truth}\t{hypo}\t{row['insertions'] / tokens}\t"
                     f"{row['deletions'] / tokens}\t{row['substitutions'] / tokens}")
    return lines


def write_results(output: Mapping[str, Any], path: str | Path) -> list[Path]:
    """Writes ``results.json`` and the official-format TSV(s) next to it; returns the paths written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=1, ensure_ascii=False), encoding="utf-8")
    written = [path]
    conditions = [("", output["utterances"])]
    if "ground_truth" in output:
        conditions.append((".ground_truth", output["ground_truth"]["utterances"]))
    for suffix, rows in conditions:
        tsv = path.with_name(f"{path.stem}{suffix}.tsv")
        tsv.write_text("".join(line + "\n" for line in official_tsv_lines(rows)), encoding="utf-8")
        written.append(tsv)
    return written


def format_summary(summary: Mapping[str, Any], label: str = "synthesized") -> str:
    """A one-line human summary of a condition."""
    def number(value: Optional[float], unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    return (f"{label}: WER {number(summary['seedtts_wer'], '%')} (mean of {summary['num_wer_scored']} per-utterance "
            f"WERs) | corpus WER {number(summary['corpus_wer'], '%')} | WER incl. missing "
            f"{number(summary['wer_including_missing'], '%')} | WER>0.5: {number(summary['num_wer_above_half'])} | "
            f"SIM {number(summary['sim'])} ({summary['num_sim_scored']} pairs) | "
            f"{summary['num_missing']} missing, {summary['num_failed']} failed of {summary['num_items']}")
