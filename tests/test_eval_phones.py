"""Phone error rate judge: dictionary lookup, pocketsphinx allphone recognition on real flite speech, the PER of
a folder and ``e2e-tts eval per`` (the rate itself: tests/test_scoring.py)."""

import json

import numpy as np
import pytest

from e2e_tts.audio import resample, write_audio
from e2e_tts.cli import main
from e2e_tts.eval.phones import (PocketsphinxPhones, UnknownWordError, default_dictionary, folder_phone_error_rates,
                                 is_speech_phone, mean_phone_error_rate, read_pronunciations, reference_phones)
from e2e_tts.scoring.wer import unit_error_rates
from shared import flite

SENTENCES = ("The plane was given clearance to land.", "She traced the circumstances of her birth.")


# ---------------------------------------------------------------------------------------------------------------
# Reference phones
# ---------------------------------------------------------------------------------------------------------------

def test_reference_phones_from_the_shipped_dictionary():
    # "the" has the alternate "the(2) DH IY"; "read" has "read(2) R IY D": the first pronunciation wins.
    assert reference_phones("The cat, READ!") == ["DH", "AH", "K", "AE", "T", "R", "EH", "D"]
    assert reference_phones("don't") == ["D", "OW", "N", "T"]  # the apostrophe survives normalisation


def test_stress_digits_removed_and_alternates_ignored(tmp_path):
    dictionary = tmp_path / "stressed.dict"
    dictionary.write_text("record(2) R EH1 K ER0 D\nrecord R IH0 K AO1 R D\nwellknown W EH1 L N OW2 N\n")
    # An alternate listed before the main entry still loses: "(2)" marks it, not its position.
    assert reference_phones("Record well-known.", dictionary) == ["R", "IH", "K", "AO", "R", "D",
                                                                  "W", "EH", "L", "N", "OW", "N"]


def test_unknown_word_names_the_word(tmp_path):
    with pytest.raises(UnknownWordError, match="word 'zzxqv' of reference 'The zzxqv sat.'"):
        reference_phones("The zzxqv sat.")
    dictionary = tmp_path / "broken.dict"
    dictionary.write_text("cat K AE T\ndog\n")
    with pytest.raises(ValueError, match="broken.dict:2: word 'dog' has no phones"):
        reference_phones("cat", dictionary)


def test_silence_and_fillers_are_not_speech_phones():
    assert [unit for unit in ("SIL", "+NSN+", "+SPN+", "+BREATH+", "AH", "K") if is_speech_phone(unit)] == ["AH", "K"]


# ---------------------------------------------------------------------------------------------------------------
# Recognition
# ---------------------------------------------------------------------------------------------------------------

def test_flite_speech_scores_far_better_than_time_reversed_speech(tmp_path):
    speech = [flite(tmp_path, "rms", text) for text in SENTENCES]
    rate = speech[0][1]
    wavs = [wav for wav, _ in speech]
    references = [reference_phones(text) for text in SENTENCES]
    judge = PocketsphinxPhones()

    forward = judge.recognize(wavs, rate)
    assert all(phones and all(is_speech_phone(phone) for phone in phones) for phones in forward)
    dictionary_phones = {phone for phones in read_pronunciations(default_dictionary()).values() for phone in phones}
    assert set().union(*forward) <= dictionary_phones  # same symbols as the reference, so the rate is meaningful
    forward_per = unit_error_rates(references, forward)
    reversed_per = unit_error_rates(references, judge.recognize([wav[::-1].copy() for wav in wavs], rate))
    assert forward_per["corpus_per"] < 55 < 75 < reversed_per["corpus_per"]
    assert max(forward_per["per"]) < min(reversed_per["per"])

    # The judge resamples itself: the same speech at 24 kHz scores about the same.
    upsampled = judge.recognize([resample(wav, rate, 24000) for wav in wavs], 24000)
    assert abs(unit_error_rates(references, upsampled)["corpus_per"] - forward_per["corpus_per"]) < 10


def test_recognize_rejects_bad_audio():
    judge = PocketsphinxPhones()
    with pytest.raises(ValueError, match="waveform 1 must be mono"):
        judge.recognize([np.zeros(1600, np.float32), np.zeros((2, 1600), np.float32)], 16000)
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        judge.recognize([np.zeros(1600, np.float32)], 0)


# ---------------------------------------------------------------------------------------------------------------
# The rate of a folder
# ---------------------------------------------------------------------------------------------------------------

class ScriptedPhones:
    """A phone judge that answers from a script, keyed by the waveform's length."""

    def __init__(self, answers: dict[int, list[str]]):
        self.answers, self.calls = answers, 0

    def recognize(self, wavs, sample_rate):
        self.calls += 1
        return [self.answers[len(wav)] for wav in wavs]


def test_mean_phone_error_rate_scores_the_wavs_that_exist(tmp_path):
    for name, samples in (("a", 1600), ("b", 3200)):
        write_audio(tmp_path / f"{name}.wav", np.zeros(samples, dtype=np.float32), 16000)
    judge = ScriptedPhones({1600: ["K", "AE", "T"], 3200: ["D", "AO", "G", "Z"]})
    texts = ["cat", "dog", "cow"]
    paths = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), str(tmp_path / "missing.wav")]
    # "cat" exact (0 %), "dog" with one insertion (1 error in 3 phones); the missing wav is not scored
    assert mean_phone_error_rate(judge, texts, paths) == pytest.approx(100.0 / 6)
    assert judge.calls == 2
    assert mean_phone_error_rate(judge, texts, [None, None, str(tmp_path / "missing.wav")]) is None


def test_folder_phone_error_rates_score_the_synthesized_and_the_ground_truth(tmp_path):
    (tmp_path / "wavs").mkdir()
    write_audio(tmp_path / "wavs" / "u1.wav", np.zeros(1600, np.float32), 16000)  # u2 was not synthesised
    write_audio(tmp_path / "truth.wav", np.zeros(3200, np.float32), 16000)
    (tmp_path / "meta.lst").write_text("u1|p|p.wav|cat|truth.wav\nu2|p|p.wav|dog\n")
    judge = ScriptedPhones({1600: ["K", "AE"], 3200: ["K", "AE", "T"]})
    rates = folder_phone_error_rates(tmp_path / "meta.lst", tmp_path / "wavs", judge)
    assert rates == {"meta": str(tmp_path / "meta.lst"), "wavs": str(tmp_path / "wavs"), "num_items": 2,
                     "num_synthesized": 1, "synthesized_mean_per": pytest.approx(100 / 3),
                     "ground_truth_mean_per": 0.0}


def test_eval_per_command_writes_both_rates_and_names_an_unknown_word(tmp_path, capsys):
    wav, rate = flite(tmp_path, "rms", SENTENCES[0])
    (tmp_path / "wavs").mkdir()
    write_audio(tmp_path / "wavs" / "u1.wav", wav, rate)
    write_audio(tmp_path / "truth.wav", wav, rate)
    (tmp_path / "meta.lst").write_text(f"u1|p|p.wav|{SENTENCES[0]}|truth.wav\n")
    out = tmp_path / "per.json"
    assert main(["eval", "per", "--meta", str(tmp_path / "meta.lst"), "--wavs", str(tmp_path / "wavs"),
                 "--out", str(out)]) == 0
    rates = json.loads(out.read_text())
    # the same speech in both conditions (pocketsphinx's running normalisation makes them differ a little)
    assert rates["num_synthesized"] == 1 and max(rates["synthesized_mean_per"], rates["ground_truth_mean_per"]) < 55
    assert f"-> {out}" in capsys.readouterr().out

    (tmp_path / "meta.lst").write_text("u1|p|p.wav|The zzxqv sat.\n")
    assert main(["eval", "per", "--meta", str(tmp_path / "meta.lst"), "--wavs", str(tmp_path / "wavs"),
                 "--out", str(out)]) == 2
    assert "word 'zzxqv'" in capsys.readouterr().err
