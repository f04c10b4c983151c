"""Catastrophic-failure detection on real (flite) speech: silence, dropout, truncation, looping, wrong content."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from e2e_tts.eval.failures import FailureConfig, SynthesizedItem, detect_failures, speech_segments
from e2e_tts.scoring.normalize import spoken_characters
from e2e_tts.scoring.verifiers import build_asr

TEXT = "The plane was given clearance to land."


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    if shutil.which("flite") is None:
        pytest.skip("Debian flite is not installed")
    path = tmp_path_factory.mktemp("flite") / "plane.wav"
    subprocess.run(["flite", "-voice", "kal16", "-t", TEXT, "-o", str(path)], check=True)
    wav, rate = sf.read(str(path), dtype="float32")
    return wav, rate


def test_speech_segments_and_characters(speech):
    wav, rate = speech
    segments = speech_segments(wav, rate)
    assert segments and 0 <= segments[0][0] < segments[-1][1] <= len(wav) / rate + 0.05
    assert speech_segments(np.zeros(rate, np.float32), rate) == []
    assert spoken_characters(TEXT, "en") == 31
    assert spoken_characters("你好，世界！", "zh") == 4


def test_flags_silence_dropout_truncation_looping_and_wrong_content_and_passes_good_speech(speech):
    wav, rate = speech
    rng = np.random.default_rng(0)
    items = [
        SynthesizedItem("good", TEXT, wav, rate),  # transcribed by pocketsphinx below
        SynthesizedItem("silent", TEXT, np.zeros(2 * rate, np.float32), rate),
        SynthesizedItem("dropout", TEXT, (rng.standard_normal(2 * rate) * 1e-4).astype(np.float32), rate, ""),
        SynthesizedItem("truncated", TEXT, wav[: len(wav) // 4], rate, "the plane"),
        SynthesizedItem("looping", TEXT, np.tile(wav, 5), rate, " ".join([TEXT] * 5)),
        SynthesizedItem("hallucinated", TEXT, wav, rate, "a completely different sentence was spoken"),
    ]
    report = detect_failures(items, FailureConfig(), asr=build_asr("pocketsphinx"))
    assert report.reasons == {
        "silent": ("empty_audio",),
        "dropout": ("dropout", "wer_above_threshold"),
        "truncated": ("too_short_for_text", "wer_above_threshold"),
        "looping": ("too_long_for_text", "wer_above_threshold"),
        "hallucinated": ("wer_above_threshold",),
    }
    assert report.failed_ids == ["silent", "dropout", "truncated", "looping", "hallucinated"]
    assert report.rate == pytest.approx(5 / 6) and report.num_items == 6
    good = report.verdicts[0]
    assert not good.failed and good.wer <= 0.5, good.transcript
    assert 0.025 < good.seconds_per_char < 0.25
    assert report.verdicts[1].wer is None and report.verdicts[1].transcript is None


def test_thresholds_are_configurable(speech):
    wav, rate = speech
    item = SynthesizedItem("u", TEXT, wav, rate, "the plane was given clearance")  # 2 of 7 words deleted
    assert detect_failures([item]).rate == 0.0
    strict = FailureConfig(max_wer=0.2, max_seconds_per_char=0.03, duration_slack_seconds=0.0)
    assert detect_failures([item], strict).reasons == {"u": ("too_long_for_text", "wer_above_threshold")}


def test_bad_input_is_an_error(speech):
    wav, rate = speech
    with pytest.raises(ValueError, match="no transcript"):
        detect_failures([SynthesizedItem("u", TEXT, wav, rate)])
    with pytest.raises(ValueError, match="duplicate"):
        detect_failures([SynthesizedItem("u", TEXT, wav, rate, "x")] * 2)
    with pytest.raises(ValueError, match="no character"):
        detect_failures([SynthesizedItem("u", "?!", wav, rate, "x")])
    with pytest.raises(ValueError):
        detect_failures([])
    with pytest.raises(ValueError, match="min_seconds_per_char"):
        FailureConfig(min_seconds_per_char=0.3, max_seconds_per_char=0.2)
