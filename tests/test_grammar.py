"""The demo domain's grammar: validation, sampling, the held-out list and corpus draws."""

import json
import random

import pytest

from e2e_tts.data.grammar import (DEMO_HELDOUT_FILE, Grammar, GrammarError, as_written, corpus_sentences,
                                  heldout_sentences, load_grammar)


def write(tmp_path, grammar):
    path = tmp_path / "grammar.json"
    path.write_text(json.dumps(grammar))
    return path


def test_demo_grammar_is_a_closed_vocabulary_of_about_a_hundred_words_and_millions_of_sentences():
    grammar = load_grammar()
    assert 90 <= len(grammar.vocabulary()) <= 130
    assert grammar.num_sentences() > 1_000_000


def test_shipped_heldout_list_is_what_the_grammar_draws_and_in_no_corpus():
    heldout = DEMO_HELDOUT_FILE.read_text(encoding="ascii").splitlines()
    grammar = load_grammar()
    assert heldout == [as_written(s) for s in heldout_sentences(grammar)]
    assert len(set(heldout)) == len(heldout) >= 100
    for seed in (0, 1):
        corpus = corpus_sentences(grammar, 3000, seed)
        assert len(set(corpus)) == 3000
        assert not set(corpus) & set(heldout_sentences(grammar))
    vocabulary = grammar.vocabulary()
    assert all(set(s.split()) <= vocabulary for s in heldout_sentences(grammar))


def test_corpus_draws_are_seeded_and_a_bigger_corpus_extends_a_smaller_one():
    grammar = load_grammar()
    first = corpus_sentences(grammar, 200, seed=3)
    assert corpus_sentences(grammar, 200, seed=3) == first
    assert corpus_sentences(grammar, 50, seed=3) == first[:50]
    assert corpus_sentences(grammar, 200, seed=4) != first


def test_every_template_and_filler_is_used(tmp_path):
    grammar = Grammar.load(write(tmp_path, {"slots": {"colour": ["red", "dark blue"], "n": ["one", "two"]},
                                            "templates": ["paint it {colour}", "call {n} {n}"]}))
    assert grammar.num_sentences() == 6
    sentences = grammar.distinct_sentences(6, random.Random(0))
    assert set(sentences) == {"paint it red", "paint it dark blue", "call one one", "call one two", "call two one",
                              "call two two"}
    with pytest.raises(ValueError, match="only 6 of 7 distinct"):
        grammar.distinct_sentences(7, random.Random(0))


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read the grammar"),
    ({"slots": {}}, "needs an object"),
    ({"slots": {"x": []}, "templates": ["{x}"]}, "slot 'x' must be a non-empty list"),
    ({"slots": {"x": ["Red!"]}, "templates": ["{x}"]}, "not lower-case words"),
    ({"slots": {"x": ["red"]}, "templates": ["paint {y}"]}, "undefined slot(s) ['y']"),
    ({"slots": {"x": ["red"]}, "templates": ["Paint it {x}."]}, "must be lower-case words"),
])
def test_malformed_grammars_are_named_errors(tmp_path, content, message):
    path = tmp_path / "grammar.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(GrammarError) as error:
        Grammar.load(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
