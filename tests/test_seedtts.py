"""The Seed-TTS-Eval runner (e2e_tts/eval/seedtts.py) and the ``e2e-tts eval`` commands (e2e_tts/eval/cli.py).

The runner is checked against numbers computed by hand with the official formulas on a handmade meta.lst, with fake
ASR and similarity backends that recognise each test wav by its length in samples.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from e2e_tts.config import load_config, to_object  # noqa: E402
from e2e_tts.data.manifest import ManifestError, read_manifest, read_seedtts_meta  # noqa: E402
from e2e_tts.eval import cli  # noqa: E402
from e2e_tts.eval.seedtts import (evaluate, official_tsv_lines, run_seedtts, synthesized_wav_paths,  # noqa: E402
                                  write_results)
from e2e_tts.scoring.wer import EmptyReferenceError  # noqa: E402
from e2e_tts.synth import Synthesizer  # noqa: E402
from e2e_tts.system import TTSSystem  # noqa: E402
from e2e_tts.text import ByteTokenizer  # noqa: E402
from shared import MICRO_MODEL_OVERRIDES  # noqa: E402

SYNTH_RATE, PROMPT_RATE = 16000, 24000

# utt -> (meta text, what the fake ASR hears in the synthesised wav, the hand-computed WER)
CASES = {
    "u1": ("Hello, world!", "hello world", 0.0),                      # punctuation and case only
    "u2": ("The cat's hat is red.", "the cats hat is bed", 2 / 5),    # apostrophe kept: cat's != cats; 2 subs
    "u3": ("Good morning everyone !", "good morning to every one", 3 / 3),  # 1 sub + 2 ins over 3 words
    "u5": ("A well-known fact.", "a well known fact", 2 / 3),         # hyphen deleted: "wellknown"; 1 sub + 1 ins
}


def tone(samples: int, rate: int, freq: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(samples) / rate)).astype(np.float32)


class LengthKeyedASR:
    """Transcribes a waveform by looking up its length; records every call."""

    name = "fake-asr"

    def __init__(self, transcripts):
        self.transcripts, self.calls = transcripts, []

    def transcribe(self, wavs, sample_rate):
        self.calls.append((len(wavs), sample_rate))
        return [self.transcripts[len(wav)] for wav in wavs]


class PairKeyedSimilarity:
    """Scores (wav, reference) by their lengths; a pair it does not know raises."""

    name = "fake-sim"

    def __init__(self, scores):
        self.scores, self.rates = scores, []

    def similarity(self, wav_a, wav_b, sample_rate, sample_rate_b=None):
        self.rates.append((sample_rate, sample_rate_b))
        return self.scores[(len(wav_a), len(wav_b))]


@pytest.fixture
def testset(tmp_path):
    """meta.lst with 5-field lines u1-u4 (u4 never synthesised), a 4-field line u5 (no ground truth), u6 (a corrupt
    wav) and u7 (a wav neither fake judge knows)."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "gt").mkdir()
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    transcripts, truth_transcripts, scores = {}, {}, {}
    lines = []
    texts = {**{utt: case[0] for utt, case in CASES.items()}, "u4": "Never made.", "u6": "Broken file.",
             "u7": "Unknown audio."}
    for index, utt in enumerate(sorted(texts)):
        synth_len, prompt_len, truth_len = 16000 + 100 * index, 24000 + 100 * index, 20000 + 100 * index
        sf.write(tmp_path / "prompts" / f"{utt}.wav", tone(prompt_len, PROMPT_RATE), PROMPT_RATE)
        if utt in CASES:
            sf.write(wavs / f"{utt}.wav", tone(synth_len, SYNTH_RATE), SYNTH_RATE)
            transcripts[synth_len] = CASES[utt][1]
            scores[(synth_len, prompt_len)] = 0.9 - 0.1 * list(CASES).index(utt)  # 0.9, 0.8, 0.7, 0.6
        if utt == "u7":
            sf.write(wavs / f"{utt}.wav", tone(synth_len + 7, SYNTH_RATE), SYNTH_RATE)
        if utt != "u5":
            sf.write(tmp_path / "gt" / f"{utt}.wav", tone(truth_len, SYNTH_RATE), SYNTH_RATE)
            truth_transcripts[truth_len] = texts[utt]
            scores[(truth_len, prompt_len)] = 0.5
        truth = "" if utt == "u5" else f"|gt/{utt}.wav"
        lines.append(f"{utt}|prompt text {utt}|prompts/{utt}.wav|{texts[utt]}{truth}")
    (wavs / "u6.wav").write_bytes(b"this is not audio")
    meta = tmp_path / "meta.lst"
    meta.write_text("\n".join(lines) + "\n")
    asr = LengthKeyedASR({**transcripts, **truth_transcripts})
    return meta, wavs, asr, PairKeyedSimilarity(scores)


def test_runner_reproduces_the_hand_computed_official_numbers(testset):
    meta, wavs, asr, similarity = testset
    output = run_seedtts(meta, wavs, asr, similarity, "en")
    summary = output["summary"]
    wers = [case[2] for case in CASES.values()]
    assert summary["num_items"] == 7 and summary["num_wer_scored"] == 4
    assert summary["seedtts_wer"] == round(np.mean(wers) * 100, 3) == 51.667
    assert summary["corpus_wer"] == pytest.approx(100 * (0 + 2 + 3 + 2) / (2 + 5 + 3 + 3), abs=1e-3)
    assert summary["num_wer_above_half"] == 2  # u3 (1.0) and u5 (0.667)
    assert summary["wer_at_most_half"] == pytest.approx(20.0)
    # the extra number: u4 (missing), u6 (unreadable) and u7 (ASR error) count as WER 1.0
    assert summary["wer_including_missing"] == round((sum(wers) + 3) / 7 * 100, 3)
    assert summary["sim"] == 0.75 and summary["num_sim_scored"] == 4
    assert summary["sim_variance"] == round(float(np.var([0.9, 0.8, 0.7, 0.6])), 3)
    assert similarity.rates and set(similarity.rates) == {(SYNTH_RATE, PROMPT_RATE)}  # against the prompt

    rows = {row["utt"]: row for row in output["utterances"]}
    assert list(rows) == ["u1", "u2", "u3", "u4", "u5", "u6", "u7"]  # every line, in order
    for utt, (text, hyp, wer) in CASES.items():
        assert rows[utt]["status"] == "ok" and rows[utt]["wer"] == pytest.approx(wer)
        assert rows[utt]["text"] == rows[utt]["ref"] == text and rows[utt]["hyp"] == hyp
    assert rows["u2"]["ref_normalized"] == "the cat's hat is red"
    assert (rows["u2"]["substitutions"], rows["u2"]["deletions"], rows["u2"]["insertions"]) == (2, 0, 0)
    assert (rows["u3"]["substitutions"], rows["u3"]["insertions"], rows["u3"]["ref_words"]) == (1, 2, 3)
    assert rows["u1"]["duration"] == pytest.approx(16000 / SYNTH_RATE) and rows["u1"]["sim"] == pytest.approx(0.9)
    assert rows["u1"]["prompt_wav"] == str(meta.parent / "prompts" / "u1.wav")
    assert rows["u1"]["wav"] == str(wavs / "u1.wav")


def test_missing_and_failed_items_are_named_with_their_reason(testset):
    meta, wavs, asr, similarity = testset
    output = run_seedtts(meta, wavs, asr, similarity, "en")
    summary, rows = output["summary"], {row["utt"]: row for row in output["utterances"]}
    assert summary["num_missing"] == 1 and summary["missing"] == {"u4": f"{wavs / 'u4.wav'} not found"}
    assert summary["num_failed"] == 2 and set(summary["failed"]) == {"u6", "u7"}
    assert summary["failed"]["u6"].startswith("unreadable audio: ")
    assert "asr: KeyError" in summary["failed"]["u7"] and "sim: KeyError" in summary["failed"]["u7"]
    assert rows["u4"]["status"] == "missing" and rows["u4"]["wer"] is None and rows["u4"]["hyp"] is None
    assert rows["u7"]["status"] == "failed" and rows["u7"]["duration"] is not None
    assert summary["num_ok"] == 4


def test_ground_truth_is_scored_as_a_reference_row(testset):
    meta, wavs, asr, similarity = testset
    output = run_seedtts(meta, wavs, asr, similarity, "en", ground_truth=True)
    truth = output["ground_truth"]
    assert truth["summary"]["seedtts_wer"] == 0.0 and truth["summary"]["num_wer_scored"] == 6
    assert truth["summary"]["missing"] == {"u5": "no wav for this line"}  # the 4-field line has no ground truth
    assert truth["summary"]["sim"] == 0.5
    rows = {row["utt"]: row for row in truth["utterances"]}
    assert rows["u4"]["wav"] == str(meta.parent / "gt" / "u4.wav") and rows["u4"]["status"] == "ok"


def test_results_json_and_the_official_tsv(testset, tmp_path):
    meta, wavs, asr, similarity = testset
    output = run_seedtts(meta, wavs, asr, similarity, "en", ground_truth=True)
    written = write_results(output, tmp_path / "out" / "results.json")
    assert [p.name for p in written] == ["results.json", "results.tsv", "results.ground_truth.tsv"]
    saved = json.loads(written[0].read_text())
    assert saved["summary"] == output["summary"]
    settings = saved["settings"]
    assert settings["asr"] == "fake-asr" and settings["similarity"] == "fake-sim" and settings["language"] == "en"
    assert settings["meta"] == str(meta.resolve()) and len(settings["meta_sha256"]) == 64
    assert {"jiwer", "transformers", "torch"} <= set(settings["versions"]) and settings["versions"]["jiwer"]

    lines = written[1].read_text().splitlines()
    assert len(lines) == 4  # scored rows only, as run_wer.py writes them
    fields = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert all(len(f) == 7 for f in fields.values())
    # wav, wer, raw truth, raw hypo, ins, del, sub; the rates divide by len(normalised truth.split(" ")), which
    # for "Good morning everyone !" is 4 (a trailing empty token), not jiwer's 3 words: the official quirk
    assert fields[str(wavs / "u2.wav")] == [str(wavs / "u2.wav"), "0.4", "The cat's hat is red.",
                                            "the cats hat is bed", "0.0", "0.0", "0.4"]
    assert fields[str(wavs / "u3.wav")][1:] == ["1.0", "Good morning everyone !", "good morning to every one",
                                                "0.5", "0.0", "0.25"]
    # average_wer.py over the file reproduces the headline number
    assert round(np.mean([float(f[1]) for f in fields.values()]) * 100, 3) == output["summary"]["seedtts_wer"]


def test_tsv_keeps_seven_fields_when_a_transcript_has_a_tab():
    row = {"wav": "a.wav", "wer": 0.5, "ref": "one two", "hyp": "one\tthree", "ref_normalized": "one two",
           "insertions": 0, "deletions": 0, "substitutions": 1}
    assert official_tsv_lines([row, {**row, "wer": None}]) == ["a.wav\t0.5\tone two\tone three\t0.0\t0.0\t0.5"]


def test_malformed_meta_fails_with_the_line_number(tmp_path, capsys):
    meta = tmp_path / "meta.lst"
    meta.write_text("a|p|p.wav|text\n\nb|too|many|fields|x|y\n")
    with pytest.raises(ManifestError, match=r"meta\.lst:3: expected 2 to 5"):
        run_seedtts(meta, tmp_path, LengthKeyedASR({}), None, "en")
    assert run_cli(["seedtts", "--meta", str(meta), "--wavs", str(tmp_path), "--out", str(tmp_path / "r.json"),
                    "--similarity", "none"]) == 2
    assert "meta.lst:3:" in capsys.readouterr().err


def test_a_silent_wav_fails_with_the_wer_of_an_empty_transcript_and_no_sim(tmp_path):
    sf.write(tmp_path / "prompt.wav", tone(24000, PROMPT_RATE), PROMPT_RATE)
    sf.write(tmp_path / "said.wav", tone(16000, SYNTH_RATE), SYNTH_RATE)
    sf.write(tmp_path / "quiet.wav", np.full(16001, 1e-4, np.float32), SYNTH_RATE)  # -80 dBFS
    meta = tmp_path / "meta.lst"
    meta.write_text("said|Prompt.|prompt.wav|Good day.\nquiet|Prompt.|prompt.wav|Good night.\n")
    asr = LengthKeyedASR({16000: "good day"})  # the silent wav is not its to hear
    similarity = PairKeyedSimilarity({(16000, 24000): 0.9})  # an embedding of silence scored 0.43
    output = run_seedtts(meta, tmp_path, asr, similarity, "en")
    summary, rows = output["summary"], {row["utt"]: row for row in output["utterances"]}
    assert rows["quiet"]["status"] == "failed" and rows["quiet"]["errors"] == ["silent audio (peak below -50.0 dBFS)"]
    assert rows["quiet"]["wer"] == 1.0 and rows["quiet"]["hyp"] == "" and rows["quiet"]["sim"] is None
    assert summary["seedtts_wer"] == 50.0 and summary["num_wer_scored"] == 2  # counted in WER as a total failure
    assert summary["sim"] == 0.9 and summary["num_sim_scored"] == 1  # not in SIM
    assert summary["failed"] == {"quiet": "silent audio (peak below -50.0 dBFS)"} and asr.calls == [(1, 16000)]


def test_an_empty_meta_list_is_refused_naming_the_file(tmp_path, capsys):
    meta = tmp_path / "empty.lst"
    meta.write_text("\n  \n")
    with pytest.raises(ValueError, match=f"{meta}: no utterance line"):
        run_seedtts(meta, tmp_path, LengthKeyedASR({}), None, "en")
    for argv in (["seedtts", "--similarity", "none"], ["seedtts", "--model", str(tmp_path / "not_loaded")],
                 ["failures"]):
        assert run_cli([*argv, "--meta", str(meta), "--wavs", str(tmp_path), "--out", str(tmp_path / "r.json")]) == 2
        assert f"error: {meta}: no utterance line" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_an_empty_reference_fails_before_any_audio_is_transcribed(testset):
    meta, wavs, asr, _ = testset
    items = read_seedtts_meta(meta)
    items[2].text = "?!"
    with pytest.raises(EmptyReferenceError, match="u3"):
        evaluate(items, synthesized_wav_paths(items, wavs), asr, None, "en")
    assert asr.calls == []


def test_reference_mapping_and_character_level_chinese(tmp_path):
    sf.write(tmp_path / "z1.wav", tone(8000, SYNTH_RATE), SYNTH_RATE)
    meta = tmp_path / "meta.lst"
    meta.write_text("z1|你好，世界。\n")
    output = run_seedtts(meta, tmp_path, LengthKeyedASR({8000: "你好世姐"}), None, "zh")
    row = output["utterances"][0]
    assert row["ref_normalized"] == "你 好 世 界" and row["wer"] == 0.25 and row["sim"] is None
    assert output["summary"]["sim"] is None and output["summary"]["num_sim_scored"] == 0
    mapped = run_seedtts(meta, tmp_path, LengthKeyedASR({8000: "ni hao"}), None, "en",
                         reference=lambda text: "ni hao")
    assert mapped["utterances"][0]["ref"] == "ni hao" and mapped["summary"]["seedtts_wer"] == 0.0


# ---- the command line -------------------------------------------------------------------------------------------

def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


OVERRIDES = MICRO_MODEL_OVERRIDES + ["text.max_chars=60"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    config = load_config(overrides=OVERRIDES)
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), ["alice"])
    return system.export(tmp_path_factory.mktemp("export"), config)


def test_seedtts_command_synthesises_missing_wavs_grouped_by_prompt(export, tmp_path, capsys):
    for name, freq in (("p1", 150.0), ("p2", 300.0)):
        sf.write(tmp_path / f"{name}.wav", tone(12000, 22050, freq), 22050)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    kept = tone(5000, SYNTH_RATE)
    sf.write(wavs / "a3.wav", kept, SYNTH_RATE)
    meta = tmp_path / "meta.lst"
    meta.write_text("a1|Hi there.|p1.wav|Good day.\n"
                    "a2|Hi there.|p1.wav|See you.\n"
                    "a3|Hello.|p2.wav|Already here.\n"
                    "a4|Hello.|p2.wav|Fine.\n"
                    "a5|" + "x" * 80 + "|p2.wav|A prompt text longer than the model accepts.\n"
                    "a6|Voice conversion line.|p1.wav\n"  # 3-field form: a prompt wav but no prompt text
                    "a7|Hi there.|p1.wav|" + "word " * 20 + "\n")
    out = tmp_path / "results.json"
    argv = ["seedtts", "--meta", str(meta), "--wavs", str(wavs), "--out", str(out), "--model", str(export),
            "--asr", f"rm-audio:{export}", "--similarity", "none", "--vocoder", "griffin-lim", "--temperature", "0.7",
            "--top-k", "10", "--no-repetition-aware", "--min-len-ratio", "1.0", "--max-len-ratio", "3.0",
            "--seed", "3", "--batch-size", "4"]
    assert run_cli(argv) == 1  # a5, a6 and a7 could not be synthesised
    results = json.loads(out.read_text())
    summary, rows = results["summary"], {row["utt"]: row for row in results["utterances"]}
    assert {utt for utt, row in rows.items() if row["status"] == "ok"} == {"a1", "a2", "a3", "a4"}
    assert summary["num_wer_scored"] == 4 and set(summary["missing"]) == {"a5", "a6", "a7"}
    assert f"prompt {tmp_path / 'p2.wav'}: prompt text 'xxx" in summary["missing"]["a5"]
    assert "no prompt text" in summary["missing"]["a6"]
    assert summary["missing"]["a7"].startswith("not synthesised: text 'word word") and "60" in summary["missing"]["a7"]
    np.testing.assert_allclose(sf.read(wavs / "a3.wav", dtype="float32")[0], kept, atol=1e-4)  # kept, not redone
    synthesis = results["settings"]["synthesis"]
    assert synthesis["synthesized_now"] == 3 and synthesis["settings"]["seed"] == 3
    assert synthesis["settings"]["temperature"] == 0.7 and synthesis["settings"]["top_k"] == 10
    assert not synthesis["settings"]["repetition_aware"]
    assert (synthesis["settings"]["min_len_ratio"], synthesis["settings"]["max_len_ratio"]) == (1.0, 3.0)
    record = json.loads((wavs / "synthesis.json").read_text())
    assert sorted(row["id"] for row in record["utterances"]) == ["a1", "a2", "a4"]
    assert {row["id"]: row["prompt_wav"] for row in record["utterances"]}["a4"] == str(tmp_path / "p2.wav")
    for row in record["utterances"]:  # the LLM's text attention beside each new wav, for the report
        assert np.load(wavs / row["text_attention"]).shape[0] == row["num_tokens"] + 1
    assert results["settings"]["asr"] == f"rm-audio:{export}"
    err = capsys.readouterr()
    assert "synthesized missing: a5:" in err.err and "WER" in err.out

    assert run_cli(argv) == 1  # a rerun resumes: nothing left to synthesise
    assert json.loads(out.read_text())["settings"]["synthesis"]["synthesized_now"] == 0
    assert run_cli([*argv[:-4], "--seed", "4", "--batch-size", "4"]) == 2  # other settings, same folder
    assert "use a fresh --wavs folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def recipe_export(tmp_path_factory):
    """An export whose recipe recorded decoding settings, written by a stage that did not train the vocoder."""
    config = load_config(overrides=OVERRIDES + ["synthesis.temperature=0.5", "synthesis.top_k=10",
                                                "synthesis.max_len_ratio=1.5", "synthesis.griffin_lim_iters=2"])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), ["alice"])
    return system.export(tmp_path_factory.mktemp("recipe_export"), config)


def test_seedtts_synthesises_as_the_export_records_and_never_with_an_untrained_vocoder(recipe_export, tmp_path,
                                                                                        capsys):
    sf.write(tmp_path / "p1.wav", tone(12000, 22050, 150.0), 22050)
    meta = tmp_path / "meta.lst"
    meta.write_text("a1|Hi there.|p1.wav|Good day.\n")
    common = ["seedtts", "--meta", str(meta), "--asr", f"rm-audio:{recipe_export}", "--similarity", "none",
              "--model", str(recipe_export)]
    assert run_cli([*common, "--wavs", str(tmp_path / "plain"), "--out", str(tmp_path / "plain.json")]) == 0
    err = capsys.readouterr().err
    assert "vocoder was never trained" in err and "--vocoder-steps" in err
    synthesis = json.loads((tmp_path / "plain.json").read_text())["settings"]["synthesis"]
    settings = synthesis["settings"]
    assert (settings["temperature"], settings["top_k"], settings["vocoder"]) == (0.5, 10, "griffin-lim")
    assert "never trained" in synthesis["notes"][0]
    assert json.loads((tmp_path / "plain" / "synthesis.json").read_text())["notes"] == synthesis["notes"]

    assert run_cli([*common, "--top-k", "3", "--wavs", str(tmp_path / "flag"), "--out", str(tmp_path / "f.json")]) == 0
    settings = json.loads((tmp_path / "f.json").read_text())["settings"]["synthesis"]["settings"]
    assert (settings["temperature"], settings["top_k"]) == (0.5, 3)

    assert run_cli([*common, "--vocoder", "model", "--wavs", str(tmp_path / "model"),
                    "--out", str(tmp_path / "m.json")]) == 2
    assert "bash recipes/tiny/run.sh --vocoder-steps N" in capsys.readouterr().err
    assert not (tmp_path / "model" / "a1.wav").exists()


@pytest.mark.parametrize("utt", ["../outside", "sub/dir", "/tmp/absolute", ".hidden", "back\\slash"])
def test_seedtts_refuses_ids_that_are_paths_before_writing_or_scoring(recipe_export, tmp_path, capsys, utt):
    outside = tmp_path / "outside.wav"  # an existing file the id points at: neither overwritten nor scored
    sf.write(outside, tone(8000, SYNTH_RATE), SYNTH_RATE)
    before = outside.read_bytes()
    meta = tmp_path / "meta.lst"
    meta.write_text(f"fine|Good day.\n{utt}|Good night.\n")
    wavs = tmp_path / "wavs"
    assert run_cli(["seedtts", "--meta", str(meta), "--wavs", str(wavs), "--out", str(tmp_path / "r.json"),
                    "--model", str(recipe_export), "--asr", f"rm-audio:{recipe_export}", "--similarity", "none"]) == 2
    assert f"{meta}:2: id {utt!r}" in capsys.readouterr().err
    assert not wavs.exists() and not (tmp_path / "r.json").exists() and outside.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.lst", "outside.wav"]


def test_seedtts_names_a_corrupt_weights_file(recipe_export, tmp_path, capsys):
    copy = tmp_path / "export"
    shutil.copytree(recipe_export, copy)
    path = copy / "flow.safetensors"
    path.write_bytes(b"\xff" * 64)
    meta = tmp_path / "meta.lst"
    meta.write_text("a1|Good day.\n")
    assert run_cli(["seedtts", "--meta", str(meta), "--wavs", str(tmp_path / "w"), "--out", str(tmp_path / "r.json"),
                    "--model", str(copy), "--similarity", "none"]) == 2
    assert f"error: {path}: not a readable safetensors file" in capsys.readouterr().err


def test_seedtts_refuses_a_silent_prompt_naming_it(recipe_export, tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(12000, np.float32), 22050)
    meta = tmp_path / "meta.lst"
    meta.write_text("a1|Hi there.|quiet.wav|Good day.\n")
    out = tmp_path / "r.json"
    assert run_cli(["seedtts", "--meta", str(meta), "--wavs", str(tmp_path / "w"), "--out", str(out), "--model",
                    str(recipe_export), "--asr", f"rm-audio:{recipe_export}", "--similarity", "none"]) == 1
    missing = json.loads(out.read_text())["summary"]["missing"]
    assert missing == {"a1": f"not synthesised: prompt {tmp_path / 'quiet.wav'}: prompt {tmp_path / 'quiet.wav'} is "
                             f"silent (peak below -50.0 dBFS): a prompt must be speech"}


def test_failures_command_lists_failing_and_missing_ids(tmp_path):
    if shutil.which("flite") is None:
        pytest.skip("Debian flite is not installed")
    text = "The plane was given clearance to land."
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    subprocess.run(["flite", "-voice", "kal16", "-t", text, "-o", str(wavs / "good.wav")], check=True)
    sf.write(wavs / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    meta = tmp_path / "meta.lst"
    meta.write_text(f"good|{text}\nsilent|{text}\nabsent|{text}\n")
    out = tmp_path / "failures.json"
    assert run_cli(["failures", "--meta", str(meta), "--wavs", str(wavs), "--out", str(out),
                    "--max-wer", "0.6"]) == 1
    report = json.loads(out.read_text())
    assert report["failed_ids"] == ["silent"] and report["reasons"] == {"silent": ["empty_audio"]}
    assert list(report["missing"]) == ["absent"] and report["num_judged"] == 2
    assert report["failure_rate"] == 0.5 and report["failure_rate_including_missing"] == pytest.approx(2 / 3)
    assert report["settings"]["thresholds"]["max_wer"] == 0.6 and report["settings"]["asr"] == "pocketsphinx"
    good = next(v for v in report["verdicts"] if v["utt"] == "good")
    assert good["reasons"] == [] and good["wer"] <= 0.6 and good["transcript"]


def test_tokens_command_measures_the_export_tokenizer(export, tmp_path):
    lengths = {"t1": 16000, "t2": 8000, "t3": 100}  # t3 is shorter than one token
    for index, (utt, samples) in enumerate(lengths.items()):
        noise = np.random.default_rng(index).standard_normal(samples).astype(np.float32) * 0.1
        sf.write(tmp_path / f"{utt}.wav", tone(samples, 16000, 200 + 50 * index) + noise, 16000)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps({"id": utt, "audio": f"{utt}.wav", "text": "x", "speaker": "s"}) + "\n"
                                for utt in lengths))
    out = tmp_path / "tokens.json"
    assert run_cli(["tokens", "--model", str(export), "--manifest", str(manifest), "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["codebook_size"] == 125 and stats["tokens_per_second"] == 25.0
    assert stats["num_utterances"] == 2 and list(stats["skipped"]) == ["t3"] and stats["reward_ctc_scored"] == 2
    assert stats["reward_ctc_error"] >= 0
    assert stats["num_tokens"] == 16000 // 640 + 8000 // 640 and stats["num_pairs"] == stats["num_tokens"] - 2
    assert 0 < stats["usage"] <= 1 and round(stats["usage"] * 125) == pytest.approx(stats["usage"] * 125)
    assert 0 <= stats["entropy_bits"] <= np.log2(stats["num_tokens"])
    assert run_cli(["tokens", "--model", str(export), "--manifest", str(manifest), "--out", str(out),
                    "--limit", "1"]) == 0
    assert json.loads(out.read_text())["num_tokens"] == 16000 // 640


def test_token_read_back_scores_the_reward_models_ctc_reading_against_the_text_ids(export, tmp_path, monkeypatch):
    sf.write(tmp_path / "a.wav", tone(16000, 16000, 200), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "audio": "a.wav", "text": "abcd", "speaker": "s"}))
    entries = read_manifest(tmp_path / "m.jsonl")
    synth = Synthesizer.from_pretrained(export)
    text_ids = synth.prepare_text("abcd")[1].tolist()
    readings = {"exact": text_ids, "first only": text_ids[:1], "nothing": []}
    for reading, expected in zip(readings.values(), (0.0, 100.0 * (len(text_ids) - 1) / len(text_ids), 100.0)):
        monkeypatch.setattr(synth.system.reward, "transcribe_ctc", lambda speech, *_: [reading] * len(speech))
        stats = cli.measure_token_statistics(synth, entries)
        assert stats["reward_ctc_scored"] == 1 and stats["reward_ctc_error"] == pytest.approx(expected)


def test_pocketsphinx_cannot_judge_chinese(tmp_path, capsys):
    meta = tmp_path / "meta.lst"
    meta.write_text("z|你好\n")
    assert run_cli(["seedtts", "--meta", str(meta), "--wavs", str(tmp_path), "--out", str(tmp_path / "r.json"),
                    "--language", "zh", "--similarity", "none"]) == 2
    assert "pocketsphinx recognises English only" in capsys.readouterr().err
