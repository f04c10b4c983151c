"""The scoring layer's arithmetic: the Seed-TTS-Eval normaliser and WER aggregation (hand-computed cases of what
run_wer.py/average_wer.py output), and the error rates of unit and id sequences."""

import string

import pytest

from e2e_tts.scoring.normalize import (HANZI_PUNCTUATION, normalize_for_wer, spoken_characters, to_simplified_chinese,
                                       wer_language_of, zhconv_available)
from e2e_tts.scoring.wer import (EmptyReferenceError, ScoredUtterance, id_error_rates, score_utterance,
                                 score_utterances, summarize_wer, unit_error_rates)


def test_hanzi_punctuation_is_zhons_set():
    assert len(HANZI_PUNCTUATION) == len(set(HANZI_PUNCTUATION)) == 82
    assert not set(HANZI_PUNCTUATION) & set(string.ascii_letters + string.digits + " '")
    for mark in "，。！？、；：“”‘’《》〈〉「」『』【】（）…—～·．":
        assert mark in HANZI_PUNCTUATION, mark


def test_english_lowercases_and_keeps_the_apostrophe():
    assert normalize_for_wer("Hello, World! I DON'T know.", "en") == "hello world i don't know"
    scored = score_utterance("u1", "Hello, World! I don't know.", "hello world i dont know", "en")
    # jiwer 4's RemovePunctuation would turn "don't" into "dont" and score 0; the official keeps the apostrophe.
    assert (scored.wer, scored.substitutions, scored.ref_words) == (0.2, 1, 5)


def test_punctuation_is_deleted_not_replaced_by_a_space():
    assert normalize_for_wer("A well-known fact.", "en") == "a wellknown fact"
    scored = score_utterance("u1", "well-known", "well known", "en")
    assert (scored.substitutions, scored.insertions, scored.wer) == (1, 1, 2.0)


def test_curly_apostrophe_is_zhon_punctuation_and_is_deleted():
    assert normalize_for_wer("Don\u2019t", "en") == "dont"
    assert score_utterance("u1", "Don\u2019t stop", "don't stop", "en").wer == 0.5


def test_chinese_punctuation_is_stripped_and_characters_split():
    assert normalize_for_wer("你好，世界！《书》·“对”．", "zh") == "你 好 世 界 书 对"
    assert score_utterance("u1", "你好，世界！", "你好世界。", "zh").wer == 0.0
    scored = score_utterance("u1", "你好，世界。", "你好世", "zh")
    assert (scored.deletions, scored.ref_words, scored.wer) == (1, 4, 0.25)


def test_latin_words_in_chinese_are_scored_letter_by_letter_without_lowercasing():
    assert normalize_for_wer("我爱Python。", "zh") == "我 爱 P y t h o n"
    scored = score_utterance("u1", "我爱Python。", "我爱python", "zh")
    assert (scored.ref_words, scored.substitutions, scored.wer) == (8, 1, 0.125)


def test_whitespace_runs_do_not_change_the_tokens():
    assert score_utterance("u1", "the  cat   sat", " the cat sat  ", "en").wer == 0.0
    assert score_utterance("u1", "你 好", "你好", "zh").wer == 0.0


def test_empty_hypothesis_is_all_deletions():
    for hypothesis in ("", "  ", "?!"):
        scored = score_utterance("u1", "one two three", hypothesis, "en")
        assert (scored.wer, scored.deletions, scored.hyp_normalized.strip()) == (1.0, 3, "")


def test_empty_reference_is_an_error_naming_the_utterance():
    with pytest.raises(EmptyReferenceError, match="utt7"):
        score_utterance("utt7", "...", "anything", "en")


def test_unsupported_language_is_an_error():
    with pytest.raises(ValueError, match="fr"):
        normalize_for_wer("bonjour", "fr")


def test_official_mean_of_per_utterance_wer_differs_from_corpus_wer():
    scored = score_utterances([
        ("a", "good morning", "good evening"),  # 1 error / 2 words = 0.5 (not > 0.5)
        ("b", "one two three four five six seven eight", "one two three four five six seven eight"),  # 0 / 8
        ("c", "yes", "no way"),  # substitution + insertion = 2 / 1 = 2.0
    ], "en")
    assert [u.wer for u in scored] == [0.5, 0.0, 2.0]
    summary = summarize_wer(scored)
    assert summary.seedtts_wer == 83.333  # round(mean([0.5, 0, 2]) * 100, 3)
    assert summary.mean_wer == pytest.approx(2.5 / 3)
    assert summary.corpus_wer == pytest.approx(3 / 11)
    assert summary.num_wer_above_half == 1
    assert summary.mean_wer_at_most_half == 0.25
    assert summary.num_utterances == 3


def test_summary_rounds_to_three_decimals_and_handles_all_failures():
    one_third = ScoredUtterance("a", "x", "y", "x", "y", 1 / 3, 1, 0, 0, 3)
    assert summarize_wer([one_third]).seedtts_wer == 33.333
    failed = ScoredUtterance("a", "x", "y", "x", "y", 1.0, 1, 0, 0, 1)
    assert summarize_wer([failed]).mean_wer_at_most_half is None
    with pytest.raises(ValueError):
        summarize_wer([])


def test_simplified_chinese_conversion_needs_zhconv():
    if zhconv_available():
        assert to_simplified_chinese("漢語") == "汉语"
    else:
        with pytest.raises(ImportError, match="pip install zhconv"):
            to_simplified_chinese("漢語")


# ---------------------------------------------------------------------------------------------------------------
# Error rates of unit and id sequences
# ---------------------------------------------------------------------------------------------------------------

def test_unit_error_rates_by_hand():
    references = [["K", "AE", "T"], ["D", "AO", "G", "Z", "R", "AH", "N", "S", "IY", "T"]]
    hypotheses = [["K", "AH", "T", "S"],  # 1 substitution + 1 insertion of 3 -> 66.7%
                  ["D", "AO", "G", "Z", "R", "AH", "N", "S", "IY"]]  # 1 deletion of 10 -> 10%
    scores = unit_error_rates(references, hypotheses)
    assert scores["per"] == pytest.approx([200 / 3, 10.0])
    assert scores["mean_per"] == pytest.approx((200 / 3 + 10) / 2)  # every utterance weighs the same
    assert scores["corpus_per"] == pytest.approx(100 * 3 / 13)  # every unit weighs the same
    assert scores["num_utterances"] == 2
    # Nothing recognised: all deletions; more insertions than reference units: above 100%.
    assert unit_error_rates([["AH", "K"]], [[]])["per"] == [100.0]
    assert unit_error_rates([["AH"]], [["B", "AH", "K"]])["per"] == [200.0]


def test_id_error_rates_compare_ids_not_their_digits():
    # 12 against 1 2: a substitution and an insertion, not a match of the characters
    assert id_error_rates([[12, 7]], [[1, 2, 7]])["per"] == [100.0]
    assert id_error_rates([[5, 6, 7, 8]], [[5, 6, 7, 8]])["corpus_per"] == 0.0


def test_unit_error_rates_rejects_bad_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        unit_error_rates([["AH"], ["K"]], [["AH"]])
    with pytest.raises(ValueError, match="at least one utterance"):
        unit_error_rates([], [])
    with pytest.raises(EmptyReferenceError, match="utterance 1: the reference has no units"):
        unit_error_rates([["AH"], []], [["AH"], ["K"]])
    with pytest.raises(ValueError, match="utterance 0: hypothesis unit 'A H' is empty or holds whitespace"):
        unit_error_rates([["AH"]], [["A H"]])


def test_spoken_characters_and_the_scoring_language():
    assert spoken_characters("Hi, there!", "en") == 7  # punctuation takes no speaking time
    assert spoken_characters("你好，世界！", "zh") == 4
    assert [wer_language_of(language) for language in ("en-us", "cmn", "zh", "yue", "fr-fr")] == [
        "en", "zh", "zh", "zh", "en"]
