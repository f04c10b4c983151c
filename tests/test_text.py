import json
import multiprocessing
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from e2e_tts import text
from e2e_tts.espeak import ESPEAK
from e2e_tts.text import (ByteTokenizer, CharTokenizer, HFTokenizer, PhonemeTokenizer, PhoneTokenizer, TextConfig,
                          TextTokenizer, build_text_tokenizer, check_text, load_text_tokenizer, normalize_text)

SENTENCES = ["Hello, world! How are you?", "The quick brown fox jumps over the lazy dog.",
             "Ich bin müde, naïve café, 東京."]


# ---------------------------------------------------------------------------------------------------- normaliser

@pytest.mark.parametrize("raw, spoken", [
    ("42", "forty two"),
    ("3.5", "three point five"),
    ("0.25", "zero point two five"),
    ("1st and 2nd, 3rd, 12th, 21st, 100th", "first and second, third, twelfth, twenty first, one hundredth"),
    ("in 1984", "in nineteen eighty four"),
    ("2005 2015 1900 1905", "two thousand five twenty fifteen nineteen hundred nineteen oh five"),
    ("1,000,000 people", "one million people"),
    ("123456", "one hundred twenty three thousand four hundred fifty six"),
    ("-5 degrees, 1-2", "minus five degrees, one-two"),
    ("50% off", "fifty percent off"),
    ("$1, $2.50 and $1.5 million", "one dollar, two dollars fifty cents and one point five million dollars"),
    ("at 10:30 or 7:05 or 12:00", "at ten thirty or seven oh five or twelve o'clock"),
    ("the 1990s", "the nineteen nineties"),
    ("call 007", "call zero zero seven"),
    ("mp3", "mp three"),
])
def test_normalize_spells_out_english_numbers(raw, spoken):
    assert normalize_text(raw) == spoken


@pytest.mark.parametrize("raw, spoken", [
    ("Mr. Smith met Dr. Jones on St. Paul street.", "Mister Smith met Doctor Jones on Saint Paul street."),
    ("apples, pears, etc. and more", "apples, pears, et cetera and more"),
    ("apples, pears, etc. Then we left.", "apples, pears, et cetera. Then we left."),
    ("I like fruit etc.", "I like fruit et cetera."),
    ("e.g. this, i.e. that", "for example this, that is that"),
    ("AT&T", "AT and T"),
])
def test_normalize_expands_abbreviations_keeping_sentence_ends(raw, spoken):
    assert normalize_text(raw) == spoken


def test_normalize_unifies_typography_and_whitespace():
    raw = "  \u201cHello,\u201d she said \u2014 \u2018it\u2019s fine\u2019\u2026\t\n\n again\u00a0now "
    assert normalize_text(raw) == "\"Hello,\" she said - 'it's fine'... again now"


def test_normalize_strips_control_characters_but_keeps_joiners():
    assert normalize_text("a\x00b\x07c\u200bd\ufeffe") == "abcde"
    assert normalize_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "fa") == \
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


def test_normalize_non_english_keeps_digits_and_applies_nfkc():
    assert normalize_text("Ça coûte 3,50 € le 1er mai", "fr") == "Ça coûte 3,50 € le 1er mai"
    assert normalize_text("ＦＵＬＬ　ｗｉｄｔｈ", "ja") == "FULL width"


def test_normalize_is_idempotent():
    once = normalize_text("Dr. Who, 1st of 3.5 $2 etc.")
    assert normalize_text(once) == once


# ---------------------------------------------------------------------------------------------------- checks

def test_check_text_reasons():
    config = TextConfig(max_chars=20, min_chars=3)
    assert check_text("   \t\n ", config) == "empty_text"
    assert check_text("\x00\x01", config) == "empty_text"
    assert check_text("x" * 10_000, config) == "text_too_long"
    assert check_text("hi", config) == "text_too_short"
    assert check_text("Hello there.", config) is None
    # Length is judged after normalisation: "1984" is spoken as 20+ characters.
    assert check_text("1984 1984", config) == "text_too_long"


def test_text_config_rejects_bad_values():
    with pytest.raises(ValueError, match="tokenizer"):
        TextConfig(tokenizer="words")
    with pytest.raises(ValueError, match="min_chars"):
        TextConfig(min_chars=10, max_chars=5)


# ---------------------------------------------------------------------------------------------------- bytes, chars

def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    for sentence in SENTENCES + ["😀 ɹˈiːd"]:
        ids = tok.encode(sentence)
        assert all(0 <= i < tok.vocab_size == 256 for i in ids)
        assert tok.decode(ids) == sentence
    assert len(tok.encode("é")) == 2
    assert tok.decode([0xC3]) == "\ufffd"  # a truncated UTF-8 sequence (sampled ids) does not crash
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([65, 256])


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.build(SENTENCES)
    assert tok.vocab_size == len(set("".join(SENTENCES))) + 1
    for sentence in SENTENCES:
        ids = tok.encode(sentence)
        assert CharTokenizer.UNK_ID not in ids
        assert tok.decode(ids) == sentence
    ids = tok.encode("He#@")  # '#' and '@' were never seen
    assert ids[0] != 0 and ids[1] != 0 and ids[2:] == [0, 0]
    assert tok.decode(ids) == "He\ufffd\ufffd"
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])


def test_build_chars_from_texts_or_vocab_file(tmp_path):
    with pytest.raises(ValueError, match="vocab_path"):
        build_text_tokenizer(TextConfig(tokenizer="chars", vocab_path=str(tmp_path / "missing.json")))
    built = build_text_tokenizer(TextConfig(tokenizer="chars"), texts=SENTENCES)
    built.save(tmp_path)
    loaded = build_text_tokenizer(TextConfig(tokenizer="chars", vocab_path=str(tmp_path / text.TOKENIZER_FILE)),
                                  texts=["completely different texts"])
    assert loaded.encode(SENTENCES[2]) == built.encode(SENTENCES[2])
    (tmp_path / "bytes").mkdir()
    ByteTokenizer().save(tmp_path / "bytes")
    with pytest.raises(ValueError, match="not a chars vocabulary"):
        CharTokenizer.from_file(tmp_path / "bytes" / text.TOKENIZER_FILE)


# ---------------------------------------------------------------------------------------------------- phonemes

@pytest.fixture(scope="module")
def phonemes():
    return PhonemeTokenizer("en-us")


def test_phoneme_tokenizer_gives_one_id_per_ipa_symbol(phonemes):
    ipa = phonemes.phonemize("Hello, world! How are you?")
    assert ipa == "həlˈoʊ, wˈɜːld! hˈaʊ ɑːɹ juː?"
    ids = phonemes.encode("Hello, world! How are you?")
    assert len(ids) == len(ipa) and all(0 < i < phonemes.vocab_size for i in ids)
    assert phonemes.decode(ids) == ipa
    assert ids[ipa.index("ː")] == ids[ipa.rindex("ː")]  # the same symbol, the same id, wherever it stands
    assert phonemes.encode("cat") != phonemes.encode("dog")
    assert phonemes.encode("") == []


def test_phoneme_tokenizer_keeps_clause_punctuation_and_word_spaces(phonemes):
    ipa = phonemes.phonemize('"Well," she said - I will read it; then: done... Really?! Yes.')
    assert ipa.count(",") == 4 and ipa.endswith("? jˈɛs.")
    assert ipa.count(" ") >= 9  # ten words
    decimal = phonemes.phonemize("3.5")  # espeak-ng reads it; the point must not become a clause break
    assert "." not in decimal and decimal.count(" ") == 2
    assert phonemes.phonemize("?! ...") == ""


def test_phoneme_tokenizer_handles_read_in_context_and_non_ascii(phonemes):
    for sentence in ["I read a book yesterday.", "I will read it tomorrow.", "Read it!", "naïve café, 東京 😀"]:
        assert phonemes.phonemize(sentence)
    # espeak-ng's "(en)...(fr)" language-switch flags do not leak into the IPA.
    french = PhonemeTokenizer("fr").phonemize("J'aime le weekend et le football.")
    assert "(" not in french and french.endswith(".")
    assert PhonemeTokenizer("en-gb").phonemize("tomato") != phonemes.phonemize("tomato")


@pytest.mark.parametrize("language, text", [("fr", "Bonjour le monde"), ("de", "Grüße aus Köln"), ("cmn", "你好世界"),
                                            ("hi", "नमस्ते दुनिया"), ("ru", "Привет мир"), ("ar", "مرحبا بالعالم")])
def test_phoneme_inventory_covers_espeak_ipa_of_other_languages(language, text):
    tokenizer = PhonemeTokenizer(language)
    ids = tokenizer.encode(text)
    assert ids and PhonemeTokenizer.UNK_ID not in ids
    assert tokenizer.decode(ids) == tokenizer.phonemize(text)


def test_phoneme_tokenizer_maps_symbols_outside_the_inventory_to_unk(phonemes, monkeypatch):
    monkeypatch.setattr(phonemes, "phonemize", lambda text: "a\u2603b")
    ids = phonemes.encode("ignored")
    assert ids[1] == PhonemeTokenizer.UNK_ID and phonemes.decode(ids) == "a" + PhonemeTokenizer.UNK_TEXT + "b"


def test_byte_level_phoneme_exports_are_refused(tmp_path):
    PhonemeTokenizer("en-us").save(tmp_path)
    meta = json.loads((tmp_path / "text_tokenizer.json").read_text())
    (tmp_path / "text_tokenizer.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "inventory"}))
    with pytest.raises(ValueError, match="UTF-8 bytes"):
        load_text_tokenizer(tmp_path)


def test_phone_tokenizer_gives_one_id_per_sound(phonemes):
    phones = PhoneTokenizer("en-us")
    sentence = "Hello, world! How are you?"
    assert phones.phones(sentence) == ["h", "ə", "l", "ˈoʊ", ",", "w", "ˈɜː", "l", "d", "!", "h", "ˈaʊ", "ɑː", "ɹ",
                                       "j", "uː", "?"]
    ids = phones.encode(sentence)
    assert all(0 < i < phones.vocab_size for i in ids) and len(set(ids)) == len(set(phones.phones(sentence)))
    assert phones.decode(ids) == phonemes.phonemize(sentence).replace(" ", "")
    assert phones.phones("Call dad.") == ["k", "ˈɔː", "l", "d", "ˈæ", "d"]  # no id for the final period
    assert phones.phones("Watch the judge.")[:3] == ["w", "ˈɑː", "tʃ"] and "dʒ" in phones.phones("Watch the judge.")
    assert phones.encode("") == [] and phones.encode("...") == []
    # Other languages: symbols outside the vowel phones still get their own ids.
    french = PhoneTokenizer("fr")
    assert PhoneTokenizer.UNK_ID not in french.encode("Bonjour le monde")
    assert french.decode(french.encode("Bonjour le monde")) == PhonemeTokenizer("fr").phonemize(
        "Bonjour le monde").replace(" ", "")


def test_phone_tokenizer_round_trips_and_refuses_another_inventory(tmp_path):
    PhoneTokenizer("en-gb").save(tmp_path)
    loaded = load_text_tokenizer(tmp_path)
    assert isinstance(loaded, PhoneTokenizer) and loaded.language == "en-gb"
    assert build_text_tokenizer(TextConfig(tokenizer="phones")).encode("tomato") == PhoneTokenizer().encode("tomato")
    meta = json.loads((tmp_path / "text_tokenizer.json").read_text())
    (tmp_path / "text_tokenizer.json").write_text(json.dumps({**meta, "inventory": 99}))
    with pytest.raises(ValueError, match="inventory 99"):
        load_text_tokenizer(tmp_path)


def test_phoneme_tokenizer_rejects_unknown_language():
    with pytest.raises(ValueError, match="no voice"):
        PhonemeTokenizer("xx-yy")


def test_phonemizer_is_safe_across_threads(phonemes):
    expected = [phonemes.phonemize(s) for s in SENTENCES]
    results = {}

    def work(n):
        results[n] = [PhonemeTokenizer("fr" if n % 2 else "en-us").phonemize(s) for s in SENTENCES * 5]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == results[2] == expected * 5  # voices switched under each other without mixing up
    assert results[1] == results[3] != results[0]


def _phonemize_in_child(sentence):
    return os.getpid(), PhonemeTokenizer("en-us").phonemize(sentence)


def test_phonemizer_in_forked_child_matches_parent(phonemes):
    expected = [phonemes.phonemize(s) for s in SENTENCES]  # the parent has initialised espeak-ng
    context = multiprocessing.get_context("fork")
    with ESPEAK.lock:  # another parent thread inside espeak-ng at fork time must not deadlock the child
        pool = context.Pool(2)
    with pool:
        results = pool.map_async(_phonemize_in_child, SENTENCES).get(timeout=60)
    assert {pid for pid, _ in results}.isdisjoint({os.getpid()})
    assert [ipa for _, ipa in results] == expected


# ---------------------------------------------------------------------------------------------------- HF

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<pad>"])
    bpe.train_from_iterator(SENTENCES * 3, trainer)
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>").save_pretrained(str(directory))
    return directory


def test_hf_tokenizer_round_trip(hf_dir):
    tok = HFTokenizer(hf_dir)
    for sentence in SENTENCES + ["unseen words, ɹˈiːd 😀"]:
        ids = tok.encode(sentence)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == sentence
    assert len(tok.encode("Hello, world!")) < len("Hello, world!")  # merges learnt from the data are used
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        HFTokenizer(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="hf_path"):
        build_text_tokenizer(TextConfig(tokenizer="hf"))


# ---------------------------------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("kind", ["bytes", "chars", "phonemes", "hf"])
def test_save_load_round_trip(kind, tmp_path, hf_dir):
    config = TextConfig(tokenizer=kind, language="fr" if kind == "phonemes" else "en-us", hf_path=str(hf_dir))
    tok = build_text_tokenizer(config, texts=SENTENCES)
    assert isinstance(tok, TextTokenizer)
    tok.save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / text.TOKENIZER_FILE).read_text())["kind"] == kind
    loaded = load_text_tokenizer(tmp_path / "saved")
    assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    for sentence in SENTENCES:
        assert loaded.encode(sentence) == tok.encode(sentence)
        assert loaded.decode(tok.encode(sentence)) == tok.decode(tok.encode(sentence))


def test_load_rejects_missing_or_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_tokenizer.json"):
        load_text_tokenizer(tmp_path)
    (tmp_path / text.TOKENIZER_FILE).write_text(json.dumps({"kind": "words"}))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        load_text_tokenizer(tmp_path)
