"""``e2e-tts eval failures --model ... --num-candidates 1,2,4,8``: best-of-N's catastrophic-failure rate and WER over N
(e2e_tts/eval/cli.py, run_failure_curve), on a micro export: the verifier picks, pocketsphinx judges."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from e2e_tts.best_of_n import CandidateScore, choose_candidate  # noqa: E402
from e2e_tts.config import load_config, to_object  # noqa: E402
from e2e_tts.eval import cli  # noqa: E402
from e2e_tts.scoring.asr import PocketsphinxASR  # noqa: E402
from e2e_tts.system import TTSSystem  # noqa: E402
from e2e_tts.text import ByteTokenizer  # noqa: E402
from shared import MICRO_MODEL_OVERRIDES  # noqa: E402


def run_cli(argv):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """An untrained micro system whose recipe decodes short samples cheaply (its speech is noise: it fails)."""
    config = load_config(overrides=MICRO_MODEL_OVERRIDES + ["text.max_chars=60", "synthesis.max_len_ratio=1.5",
                                                            "synthesis.griffin_lim_iters=2"])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), ["alice"])
    return system.export(tmp_path_factory.mktemp("export"), config)


@pytest.fixture
def meta(tmp_path):
    sf.write(tmp_path / "p1.wav", 0.3 * np.sin(2 * np.pi * 180 * np.arange(12000) / 22050), 22050)
    path = tmp_path / "meta.lst"
    path.write_text("a1|Hi there.|p1.wav|Good day to you.\na2|Hi there.|p1.wav|See you soon.\n")
    return path


def test_the_curve_synthesises_each_n_with_the_verifier_and_judges_it_once(export, meta, tmp_path, monkeypatch):
    wavs, out = tmp_path / "wavs", tmp_path / "curve.json"
    argv = ["failures", "--meta", str(meta), "--wavs", str(wavs), "--out", str(out), "--model", str(export),
            "--num-candidates", "1,3", "--verifier", "rm-tokens", "--seed", "3", "--vocoder", "griffin-lim"]
    assert run_cli(argv) == 0
    report = json.loads(out.read_text())
    assert [row["num_candidates"] for row in report["curve"]] == [1, 3]
    assert report["settings"]["asr"] == "pocketsphinx" and report["settings"]["synthesis"]["verifier"] == "rm-tokens"
    for row in report["curve"]:
        count = row["num_candidates"]
        record = json.loads((wavs / f"n{count}" / "synthesis.json").read_text())
        assert record["settings"]["num_candidates"] == count and record["settings"]["seed"] == 3
        for utterance in record["utterances"]:  # the verifier's pick among the N candidates
            candidates = [CandidateScore(**c) for c in utterance["candidates"]]
            assert len(candidates) == count and all(c.wer is not None or c.dropout for c in candidates)
            assert utterance["chosen_candidate"] == choose_candidate(candidates)
        scored = json.loads((tmp_path / f"curve_n{count}.json").read_text())  # as eval seedtts writes it
        assert (tmp_path / f"curve_n{count}.tsv").is_file()
        assert row["results"] == str(tmp_path / f"curve_n{count}.json")
        assert row["seedtts_wer"] == scored["summary"]["seedtts_wer"]
        assert row["num_wer_above_half"] == scored["summary"]["num_wer_above_half"]
        failures = row["failures"]
        # transcribed once: the verdicts judge the transcripts the WER was scored on
        assert {v["utt"]: v["transcript"] for v in failures["verdicts"]} == {
            u["utt"]: u["hyp"] for u in scored["utterances"]}
        assert failures["num_judged"] == 2 and row["failure_rate"] == len(failures["failed_ids"]) / 2
        assert sum(row["reason_counts"].values()) == sum(len(r) for r in failures["reasons"].values())
        assert failures["settings"]["wav_dir"] == str((wavs / f"n{count}").resolve())
    assert (tmp_path / "curve.png").stat().st_size > 0

    # A rerun resumes: nothing to synthesise, so each N keeps its scores (pocketsphinx is not called again).
    monkeypatch.setattr(PocketsphinxASR, "transcribe", lambda *args: pytest.fail("transcribed again"))
    assert run_cli(argv) == 0
    again = json.loads(out.read_text())
    assert [row["failures"]["verdicts"] for row in again["curve"]] == [row["failures"]["verdicts"]
                                                                       for row in report["curve"]]


def test_the_curve_is_refused_without_a_verifier_before_anything_is_synthesised(export, meta, tmp_path, capsys):
    wavs = tmp_path / "wavs"
    common = ["failures", "--meta", str(meta), "--wavs", str(wavs), "--out", str(tmp_path / "c.json")]
    assert run_cli([*common, "--model", str(export), "--num-candidates", "1,2"]) == 2
    assert "needs a verifier" in capsys.readouterr().err and not wavs.exists()
    assert run_cli([*common, "--model", str(export), "--num-candidates", "0,2", "--verifier", "rm-tokens"]) == 2
    assert "counts >= 1" in capsys.readouterr().err and not wavs.exists()
    assert run_cli([*common, "--num-candidates", "1,2"]) == 2  # N synthesises: no model, no curve
    assert "give --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli([*common, "--num-candidates", "1,two"])
