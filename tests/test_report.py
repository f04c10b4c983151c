"""The evaluation report (e2e_tts/eval/report.py, plots.py): files, links, offline-ness, and a headless render."""

import argparse
import json
import shutil
import subprocess
from html.parser import HTMLParser
from urllib.request import url2pathname

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from e2e_tts.eval import plots
from e2e_tts.eval.report import build_report, register
from e2e_tts.eval.seedtts import run_seedtts, write_results

RATE = 16000
# utt -> (text, transcript of the synthesised wav); r3 is never synthesised
TEXTS = {"r1": ("Hello world.", "hello world"), "r2": ("Four words right here.", "for birds right"),
         "r3": ("Nobody made me.", None)}


def chirp(seconds: float, start: float, stop: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * (start + (stop - start) * t / seconds / 2) * t)).astype(np.float32)


class ByLengthASR:
    name = "fake-asr"

    def __init__(self, transcripts):
        self.transcripts = transcripts

    def transcribe(self, wavs, sample_rate):
        return [self.transcripts[len(wav)] for wav in wavs]


class ConstantSimilarity:
    name = "fake-sim"

    def similarity(self, wav_a, wav_b, sample_rate, sample_rate_b=None):
        return 0.625


@pytest.fixture
def evaluated(tmp_path):
    """results.json of a 3-line meta (r3 missing), with ground truth; beside the wavs, the LLM's text attention of
    r2 and a malformed one of r1 (as synthesis.json names them)."""
    for folder in ("wavs", "gt", "prompts"):
        (tmp_path / folder).mkdir()
    transcripts, lines = {}, []
    for index, (utt, (text, hyp)) in enumerate(TEXTS.items()):
        sf.write(tmp_path / "prompts" / f"{utt}.wav", chirp(1.0, 200, 900), RATE)
        truth = chirp(1.2 + 0.1 * index, 300, 1500)
        sf.write(tmp_path / "gt" / f"{utt}.wav", truth, RATE)
        transcripts[len(truth)] = text
        if hyp is not None:
            wav = chirp(0.9 + 0.1 * index, 150, 2500)
            sf.write(tmp_path / "wavs" / f"{utt}.wav", wav, RATE)
            transcripts[len(wav)] = hyp
        lines.append(f"{utt}|prompt|prompts/{utt}.wav|{text}|gt/{utt}.wav")
    (tmp_path / "meta.lst").write_text("\n".join(lines) + "\n")
    results = run_seedtts(tmp_path / "meta.lst", tmp_path / "wavs", ByLengthASR(transcripts), ConstantSimilarity(),
                          "en", ground_truth=True)
    np.save(tmp_path / "wavs" / "r2.text_attention.npy", (np.eye(6, 9) + 0.05).astype(np.float16))
    np.save(tmp_path / "wavs" / "r1.text_attention.npy", np.ones(3, np.float16))  # not (steps, text)
    path = tmp_path / "eval" / "results.json"
    write_results(results, path)
    return path, results


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.audio, self.images, self.external, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "audio":
            self.audio.append(attrs["src"])
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("src", "href"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])


def test_report_links_every_wav_and_figure_relatively_and_works_offline(evaluated, tmp_path):
    path, results = evaluated
    synthesis = {"model": "/models/x", "settings": {"seed": 0}, "totals": {"utterances": 2, "rtf": 0.25,
                                                                            "audio_seconds": 2.0},
                 "utterances": [{"id": utt, "num_tokens": tokens, "rtf": rtf, "normalized_text": TEXTS[utt][0],
                                 "text_attention": f"{utt}.text_attention.npy"}
                                for utt, tokens, rtf in (("r1", 23, 0.2), ("r2", 25, 0.3))]}
    out = tmp_path / "report"
    html_path, markdown_path = build_report(results, out, synthesis, max_spectrograms=5)
    page = html_path.read_text()
    links = _Links()
    links.feed(page)
    assert links.external == [] and "<script" not in page

    resolved_audio = {(out / url2pathname(src)).resolve() for src in links.audio}
    expected = {(path.parent.parent / folder / f"{utt}.wav").resolve() for folder in ("prompts", "gt")
                for utt in TEXTS} | {(path.parent.parent / "wavs" / f"{utt}.wav").resolve() for utt in ("r1", "r2")}
    assert expected <= resolved_audio and all(p.is_file() for p in resolved_audio)
    assert not any(src.startswith("/") for src in links.audio + links.images)  # relative: the folder can move
    images = [out / src for src in links.images]
    assert all(p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in images)
    names = sorted(p.name for p in images)
    # the histogram, one spectrogram per scored utterance (synthesised above ground truth), r2's text attention
    assert names == ["attention_0001.png", "mel_000.png", "mel_001.png", "wer_histogram.png"]
    # two panels (synthesised and ground truth) make the spectrogram taller than a one-panel figure
    figures = out / "figures"
    assert Image.open(figures / "mel_000.png").size[1] > Image.open(figures / "attention_0001.png").size[1]

    summary = results["summary"]
    assert f"{summary['seedtts_wer']:.3f}" in page and f"{summary['wer_including_missing']:.3f}" in page
    assert "0.625" in page and "r3" in page and "not found" in page  # the missing item, by name and reason
    assert "RTF" in page and "0.300" in page  # synthesis columns joined by id
    assert "text attention of r1" in page  # the malformed map is reported as skipped, not drawn
    assert "Four words right here." in page  # r2's map is captioned with its text
    markdown = markdown_path.read_text()
    assert f"| synthesized | {summary['seedtts_wer']:.3f} |" in markdown
    assert "](figures/wer_histogram.png)" in markdown and "[wav](../wavs/r1.wav)" in markdown
    assert "![attention r2](figures/attention_0001.png)" in markdown


def test_rows_without_attention_or_audio_are_skipped_gracefully(evaluated, tmp_path):
    _, results = evaluated
    del results["ground_truth"]
    for row in results["utterances"]:
        row["ground_truth_wav"] = None
    html_path, markdown_path = build_report(results, tmp_path / "plain", max_spectrograms=1)  # no synthesis record
    page = html_path.read_text()
    assert "attention over its text" not in page and "attention over its text" not in markdown_path.read_text()
    assert sorted(p.name for p in (tmp_path / "plain" / "figures").iterdir()) == ["mel_000.png", "wer_histogram.png"]
    assert "WER 0.750" in page  # the worst utterance: r2, 3 of 4 words wrong


def test_report_command_and_bad_input(evaluated, tmp_path, capsys):
    path, _ = evaluated
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["report", "--eval", str(path), "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0 and (tmp_path / "cli" / "index.html").is_file()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"summary": {}}))
    args = parser.parse_args(["report", "--eval", str(bad), "--out", str(tmp_path / "bad")])
    assert args.func(args) == 2 and "no 'settings'" in capsys.readouterr().err


def test_plots_reject_malformed_input(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        plots.save_alignment(np.zeros(3), tmp_path / "a.png", "a")
    with pytest.raises(ValueError, match="at least one WER"):
        plots.save_wer_histogram({"x": []}, tmp_path / "h.png")
    with pytest.raises(ValueError, match="'m' must be"):
        plots.save_mel_panels([("m", np.zeros(5))], tmp_path / "m.png", 50.0)


def test_headless_chromium_renders_a_non_blank_page(evaluated, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian package 'chromium' is not installed (apt-get install -y chromium)")
    _, results = evaluated
    html_path, _ = build_report(results, tmp_path / "shot")
    screenshot = tmp_path / "page.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
                    "--window-size=1200,1600", html_path.resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64)
    assert pixels.shape == (1600, 1200, 3)
    assert pixels.std() > 20  # a blank or single-colour page has ~0
    colours = np.unique(pixels.reshape(-1, 3) // 16, axis=0)
    assert len(colours) > 30  # text, table shading, the histogram and magma spectrograms
    heading = np.abs(pixels[:120] - np.array([0x1a, 0x4d, 0x80])).max(axis=-1) < 24
    assert heading.sum() > 200  # our page (its dark-blue heading), not a browser error page
