"""Seed-TTS-Eval lists of a corpus (e2e_tts/eval/lists.py, ``e2e-tts eval list``)."""

import json
import os
import shutil

import numpy as np
import pytest

from e2e_tts.audio import write_audio
from e2e_tts.cli import main
from e2e_tts.data.corpus import sentence_source
from e2e_tts.data.manifest import read_seedtts_meta
from e2e_tts.eval.lists import write_eval_list


@pytest.fixture
def manifest(tmp_path):
    """A test split: rms says three sentences (one twice: 1 s, 3 s, 6 s, 1 s), slt one."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [("rms_a", "flite-rms", "Wake me up.", 1.0), ("rms_b", "flite-rms", "Call home.", 3.0),
            ("rms_c", "flite-rms", "It is sunny.", 6.0), ("rms_d", "flite-rms", "Wake me up.", 1.0),
            ("slt_a", "flite-slt", "Call home.", 3.0)]
    for utt, speaker, text, duration in rows:
        write_audio(corpus / f"{utt}.wav", np.zeros(int(16000 * duration), np.float32), 16000)
    (corpus / "test.jsonl").write_text("".join(
        json.dumps({"id": utt, "audio": f"{utt}.wav", "text": text, "speaker": speaker, "duration": duration}) + "\n"
        for utt, speaker, text, duration in rows))
    (corpus / "corpus.json").write_text(json.dumps({"domain": "demo"}))
    return corpus / "test.jsonl"


def test_test_texts_are_the_speakers_distinct_sentences_prompted_by_a_2_to_5_s_utterance(manifest, tmp_path):
    out = tmp_path / "eval" / "meta.lst"
    lines = write_eval_list(manifest, out, texts="test", limit=10)
    assert [line.split("|")[0] for line in lines] == ["test_000", "test_001", "test_002"]
    items = read_seedtts_meta(out)
    corpus = manifest.parent
    assert [item.text for item in items] == ["Wake me up.", "Call home.", "It is sunny."]
    assert {(item.prompt_text, item.prompt_audio) for item in items} == {("Call home.", str(corpus / "rms_b.wav"))}
    # a sentence said twice is scored once, against its last utterance
    assert [item.ground_truth_audio for item in items] == [str(corpus / f"rms_{u}.wav") for u in "dbc"]
    assert all(not os.path.isabs(field) for line in lines for field in (line.split("|")[2], line.split("|")[4]))
    assert len(write_eval_list(manifest, out, texts="test", limit=2)) == 2


@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
def test_heldout_texts_get_their_flite_ground_truth_once(manifest, tmp_path):
    out = tmp_path / "eval" / "meta.lst"
    write_eval_list(manifest, out, limit=2)
    items = read_seedtts_meta(out)
    assert [item.text for item in items] == sentence_source("demo").heldout()[:2]
    truths = [out.parent / "ground_truth" / f"heldout_{i:03d}.wav" for i in range(2)]
    assert [item.ground_truth_audio for item in items] == [str(p) for p in truths]
    stamps = [p.stat().st_mtime_ns for p in truths]
    write_eval_list(manifest, out, limit=2)
    assert [p.stat().st_mtime_ns for p in truths] == stamps  # kept, not synthesised again


def test_eval_list_command_names_a_speaker_without_utterances(manifest, tmp_path, capsys):
    out = tmp_path / "meta.lst"
    assert main(["eval", "list", "--manifest", str(manifest), "--out", str(out), "--texts", "test",
                 "--limit", "1"]) == 0
    assert f"wrote {out}: 1 items" in capsys.readouterr().out
    assert main(["eval", "list", "--manifest", str(manifest), "--out", str(out), "--texts", "test",
                 "--speaker", "flite-awb"]) == 2
    assert "no utterance of speaker 'flite-awb'" in capsys.readouterr().err
