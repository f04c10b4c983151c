"""Sentence pool, held-out list, engines and make_corpus (the embedded default corpus)."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from e2e_tts.data import corpus as corpus_module
from e2e_tts.data.corpus import (EngineUnavailable, FliteEngine, corpus_sentence_source, get_engine, make_corpus,
                                 register, sentence_source, speaker_name, split_sizes)
from e2e_tts.data.grammar import load_grammar
from e2e_tts.data.manifest import read_jsonl
from e2e_tts.data.sentences import (build_sentence_lists, clean_sentence, corpus_sentences, heldout_sentences,
                                    looks_like_clause, pool_sentences, sentence_key, split_sentences)
from e2e_tts.text import PhonemeTokenizer

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed "
                                                                       "(apt-get install flite)")


# Sentences

@pytest.mark.parametrize("raw, clean", [
    ("the children were arguing hotly", "The children were arguing hotly."),
    ("  he  said ,  \u201cno\u201d ", None),  # quotes
    ("she\u2019s a caf\u00e9 owner, isn't she?", "She's a cafe owner, isn't she?"),
    ("we left at 5 o'clock", None),  # digits
    ("the box (a big one) fell", None),
    ("a well-known fact is here", None),  # hyphen: ASR scoring would split it
    ("Mr. Smith went home today", None),  # inner period
    ("I work at NASA now", None),  # acronym
    ("too short here", None),
    (" ".join(["word"] * 21), None),
    ("they came; they saw:", "They came; they saw."),
])
def test_clean_sentence(raw, clean):
    assert clean_sentence(raw) == clean


def test_split_and_clause_heuristics():
    assert split_sentences("It rained. Then it stopped! Did it?") == ["It rained.", "Then it stopped!", "Did it?"]
    assert looks_like_clause("They attacked the line.")
    assert looks_like_clause("The land had never been plowed.")
    assert not looks_like_clause("A race of long gaunt men.")
    assert not looks_like_clause("Choke a carburetor now please.")


def test_pool_is_large_distinct_clean_and_excludes_heldout():
    pool = pool_sentences()
    keys = [sentence_key(sentence) for sentence in pool]
    assert len(pool) >= 3000
    assert len(set(keys)) == len(keys)
    assert all(clean_sentence(sentence) == sentence for sentence in pool)
    assert all(4 <= len(sentence.split()) <= 20 for sentence in pool)
    heldout = heldout_sentences()
    assert len(heldout) >= 60
    assert len({sentence_key(sentence) for sentence in heldout}) == len(heldout)
    assert not {sentence_key(sentence) for sentence in heldout} & set(keys)


def test_corpus_sentences_distinct_deterministic_and_bounded():
    first = corpus_sentences(500, seed=3)
    assert len(first) == 500 and len({sentence_key(s) for s in first}) == 500
    assert corpus_sentences(500, seed=3) == first
    assert corpus_sentences(500, seed=4) != first
    assert corpus_sentences(10, seed=3) == first[:10]  # a bigger corpus extends a smaller one
    with pytest.raises(ValueError, match="pool holds"):
        corpus_sentences(len(pool_sentences()) + 1, seed=0)


def test_build_sentence_lists_keeps_heldout_out_of_pool():
    examples = [f"he saw the {noun} near the old house" for noun in ("cat", "dog", "fox", "owl")]
    examples += ["a race of long gaunt men", "she kept the Zyxx cat",
                 "HE SAW THE CAT NEAR THE OLD HOUSE. It rained on us"]
    vocabulary = {"he", "saw", "the", "cat", "dog", "fox", "owl", "near", "old", "house", "she", "kept", "it", "rained",
                  "on", "us", "a", "race", "of", "long", "gaunt", "men"}
    pool, heldout = build_sentence_lists(examples, vocabulary, num_heldout=2, seed=0)
    assert len(heldout) == 2
    assert not {sentence_key(s) for s in heldout} & {sentence_key(s) for s in pool}
    assert sorted(pool + heldout) == sorted(["He saw the cat near the old house.", "He saw the dog near the old house.",
                                             "He saw the fox near the old house.", "He saw the owl near the old house.",
                                             "It rained on us."])


# Engines and planning

def test_split_sizes():
    assert split_sizes(2000, [0.9, 0.05, 0.05]) == [1800, 100, 100]
    assert split_sizes(12, [0.9, 0.05, 0.05]) == [10, 1, 1]
    assert split_sizes(7, [0.5, 0.5, 0.0]) == [4, 3, 0]
    with pytest.raises(ValueError, match="sum to 1"):
        split_sizes(10, [0.5, 0.2])
    with pytest.raises(ValueError, match="cannot fill"):
        split_sizes(2, [0.8, 0.1, 0.1])


def test_missing_engine_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(corpus_module.shutil, "which", lambda program: None)
    with pytest.raises(EngineUnavailable, match="apt-get install flite"):
        FliteEngine()
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        get_engine("nope")


def test_espeak_engine_synthesises_languages_and_variants():
    pytest.importorskip("espeakng_loader")
    engine = get_engine("espeak")
    assert {"en-us", "en-gb", "de"} <= set(engine.voices())
    plain, rate = engine.synthesize("The cat sat on the mat.", "en-gb")
    varied, _ = engine.synthesize("The cat sat on the mat.", "en-gb+f2")
    assert rate == 22050 and plain.dtype == np.float32 and 0.5 < len(plain) / rate < 5
    assert np.abs(plain).max() > 0.05
    assert len(plain) != len(varied) or not np.allclose(plain, varied)
    assert engine.language("de+m3") == "de"
    with pytest.raises(ValueError, match="unknown espeak language"):
        engine.language("xx-nowhere")
    with pytest.raises(ValueError, match="unknown espeak variant"):
        engine.language("en-us+nobody")


def test_espeak_engine_voice_never_leaks_into_the_phoneme_front_end():
    pytest.importorskip("espeakng_loader")
    english = PhonemeTokenizer("en-us")
    before = english.phonemize("the house is red")
    get_engine("espeak").synthesize("la maison est rouge", "fr")  # the one library now speaks French
    # Used to come out as "(en)ðə(fr) ˈuz ...": the front end trusted a voice it had selected earlier.
    assert english.phonemize("the house is red") == before


@pytest.mark.skipif(shutil.which("text2wave") is None, reason="Debian festival is not installed")
def test_festival_engine_synthesises():
    engine = get_engine("festival")
    voice = engine.voices()[0]
    wav, rate = engine.synthesize("The cat sat on the mat.", voice)
    assert rate >= 8000 and 0.5 < len(wav) / rate < 5 and np.abs(wav).max() > 0.05


@needs_flite
def test_flite_voices_and_unknown_voice_error(tmp_path):
    assert {"kal16", "awb", "rms", "slt"} <= set(get_engine("flite").voices())
    with pytest.raises(ValueError, match="unknown flite voice 'nobody'"):
        make_corpus(tmp_path, num_sentences=3, voices=["kal16", "nobody"], progress=False)


# make_corpus

@needs_flite
def test_make_corpus_small(tmp_path):
    out = tmp_path / "corpus"
    voices = ["kal16", "slt"]
    result = make_corpus(out, num_sentences=12, voices=voices, seed=5, workers=2, progress=False)
    manifests = {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "valid", "test")}
    assert {split: len(entries) for split, entries in manifests.items()} == {"train": 10, "valid": 1, "test": 2}
    assert manifests == result.manifests

    texts = {split: {entry.text for entry in entries} for split, entries in manifests.items()}
    assert not texts["train"] & texts["valid"] and not texts["train"] & texts["test"]
    assert not texts["valid"] & texts["test"]
    assert set().union(*texts.values()) == set(sentence_source("demo").corpus(12, seed=5))
    vocabulary = load_grammar().vocabulary()
    assert all(set(text.lower().rstrip(".").split()) <= vocabulary for text in set().union(*texts.values()))
    assert not set().union(*texts.values()) & set(sentence_source("demo").heldout())
    provenance = json.loads((out / "corpus.json").read_text())
    assert provenance["domain"] == "demo" and "demo_grammar.json" in provenance["sentences"]
    assert corpus_sentence_source(out).heldout() == sentence_source("demo").heldout()
    assert {entry.speaker for entry in manifests["test"]} == {speaker_name("flite", v) for v in voices}
    assert {entry.speaker for entry in manifests["train"]} == {"flite-kal16", "flite-slt"}  # round robin

    for entry in [entry for entries in manifests.values() for entry in entries]:
        info = sf.info(entry.audio)
        assert info.samplerate == 16000 and info.channels == 1
        assert entry.duration == pytest.approx(info.frames / info.samplerate, abs=1e-6)
        assert 0.5 < entry.duration < 10
        assert entry.audio.startswith(str(out / "wavs" / entry.speaker))
    assert '"audio": "wavs/' in (out / "train.jsonl").read_text()
    assert "train" in result.summary() and "flite-slt" in result.summary()

    # a re-run reuses readable files, regenerates a corrupt one, and writes identical manifests
    first_manifests = {split: (out / f"{split}.jsonl").read_text() for split in manifests}
    kept, corrupt = manifests["train"][0].audio, manifests["train"][1].audio
    kept_mtime = Path(kept).stat().st_mtime_ns
    with open(corrupt, "wb") as handle:
        handle.write(b"RIFF garbage")
    make_corpus(out, num_sentences=12, voices=voices, seed=5, workers=1, progress=False)
    assert Path(kept).stat().st_mtime_ns == kept_mtime
    assert sf.info(corrupt).frames > 0
    assert {split: (out / f"{split}.jsonl").read_text() for split in manifests} == first_manifests


@needs_flite
def test_utterances_per_sentence_and_cli(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["corpus", "--out", str(tmp_path), "--num-sentences", "4", "--voices", "kal16,awb",
                              "--utterances-per-sentence", "2", "--workers", "1", "--seed", "1"])
    assert args.func is corpus_module.run_corpus_command and args.engine == "flite"
    args.func(args)
    train = read_jsonl(tmp_path / "train.jsonl")
    assert len(train) == 2 * len({entry.text for entry in train})
    assert {entry.speaker for entry in train} == {"flite-kal16", "flite-awb"}
    with pytest.raises(ValueError, match="utterances_per_sentence"):
        make_corpus(tmp_path, num_sentences=4, voices=["kal16"], utterances_per_sentence=2, progress=False)


@needs_flite
def test_open_english_stays_one_flag_away(tmp_path):
    result = make_corpus(tmp_path, num_sentences=3, voices=["kal16"], domain="open-english", seed=2, workers=1,
                         progress=False)
    texts = {entry.text for entries in result.manifests.values() for entry in entries}
    assert texts == set(corpus_sentences(3, seed=2))
    assert corpus_sentence_source(tmp_path).heldout() == heldout_sentences()


def test_unknown_domain_or_bad_grammar_is_an_error_naming_it(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    bad = tmp_path / "grammar.json"
    bad.write_text('{"slots": {"x": ["a"]}, "templates": ["say {y}"]}')
    for domain, message in (("klingon", "unknown sentence domain 'klingon'"), (str(bad), f"{bad}: template")):
        args = parser.parse_args(["corpus", "--out", str(tmp_path / "out"), "--domain", domain])
        assert args.func(args) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
