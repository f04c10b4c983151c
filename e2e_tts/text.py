"""Text front-end: normalisation, acceptance checks and the text tokenizers (bytes, chars, IPA, HF).

The pipeline for one utterance is ``check_text`` (reject) -> ``normalize_text`` -> ``tokenizer.encode``.
Tokenizers never normalise on their own, so that every kind sees exactly the same text.

Every tokenizer follows :class:`TextTokenizer` and saves itself into a directory holding
``text_tokenizer.json`` (its kind plus whatever rebuilds it); :func:`load_text_tokenizer` rebuilds any kind.
Ids are ``0 .. vocab_size - 1``; :class:`e2e_tts.vocab.TokenLayout` shifts them into the LLM vocabulary.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Protocol, Sequence, runtime_checkable

from e2e_tts.espeak import ESPEAK

TOKENIZER_FILE = "text_tokenizer.json"
TOKENIZER_KINDS = ("bytes", "chars", "phonemes", "phones", "hf")


@dataclass
class TextConfig:
    """Which text tokenizer to use and which texts to accept.

    Attributes:
        tokenizer: one of ``"bytes"``, ``"chars"``, ``"phonemes"`` (IPA symbols through espeak-ng), ``"phones"``
            (the same IPA, one id per sound: :class:`PhoneTokenizer`) or ``"hf"``.
        language: language of the text (espeak-ng voice name, e.g. ``"en-us"``, ``"fr"``); English also
            gets number and abbreviation expansion in :func:`normalize_text`.
        vocab_path: chars vocabulary file (a ``text_tokenizer.json`` written by :meth:`CharTokenizer.save`).
        hf_path: local directory of a Hugging Face tokenizer.
        max_chars: longest accepted text, in characters after normalisation.
        min_chars: shortest accepted non-empty text, in characters after normalisation.
    """

    tokenizer: str = "phonemes"
    language: str = "en-us"
    vocab_path: Optional[str] = None
    hf_path: Optional[str] = None
    max_chars: int = 400
    min_chars: int = 1

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"TextConfig.tokenizer must be one of {TOKENIZER_KINDS}, got {self.tokenizer!r}")
        if not 1 <= self.min_chars <= self.max_chars:
            raise ValueError(f"TextConfig needs 1 <= min_chars <= max_chars, got min_chars={self.min_chars} "
                             f"max_chars={self.max_chars}")


# ----------------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------------

_TYPOGRAPHY = str.maketrans({
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u00b4`", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"),
})
# Zero-width (non-)joiners are format characters that change how Persian or Indic words are written.
_KEEP_FORMAT = {"\u200c", "\u200d"}

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_MAX_SPOKEN_DIGITS = 15  # longer digit strings (ids, phone numbers) are read digit by digit
_IRREGULAR_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                       "nine": "ninth", "twelve": "twelfth"}
_CURRENCIES = {"$": ("dollar", "cent"), "£": ("pound", "penny"), "€": ("euro", "cent")}

# Abbreviations that never end a sentence lose their period; the others keep it where a sentence may end there.
_NEVER_FINAL = {"mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor", "st": "saint", "prof": "professor",
           "capt": "captain", "gen": "general", "lt": "lieutenant", "col": "colonel", "sgt": "sergeant",
           "gov": "governor", "rev": "reverend", "mt": "mount", "ft": "fort", "vs": "versus", "e.g": "for example",
           "i.e": "that is"}
_MAYBE_FINAL = {"etc": "et cetera", "jr": "junior", "sr": "senior", "ltd": "limited",
                    "inc": "incorporated"}
_ABBREVIATION = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted({**_NEVER_FINAL, **_MAYBE_FINAL}, key=len, reverse=True))
    + r")\.(?=(\s+(?-i:[A-Z])|\s*$)?)", re.IGNORECASE)


def normalize_text(text: str, language: str = "en-us") -> str:
    """Cleans text into the form every tokenizer sees; punctuation stays as a prosody cue.

    Unicode NFKC, one kind of quote, apostrophe and dash, no control characters, single spaces, stripped.
    For English (``language`` starting with ``"en"``) also spells out numbers (cardinals, decimals,
    ordinals, years, times, currency, percent) and common abbreviations (``"Dr."`` -> ``"Doctor"``).

    Args:
        text: raw text.
        language: language of the text.
    Returns:
        the normalised text (possibly empty).
    """
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY)
    text = "".join(" " if char.isspace() else char for char in text
                   if char.isspace() or char in _KEEP_FORMAT or not unicodedata.category(char).startswith("C"))
    if language.lower().startswith("en"):
        text = _expand_english(text)
    return re.sub(r"\s+", " ", text).strip()


def _expand_english(text: str) -> str:
    text = _ABBREVIATION.sub(_expand_abbreviation, text)
    text = re.sub(r"(\d),(?=\d{3}(?!\d))", r"\1", text)  # thousands separators: 1,000,000
    text = re.sub(r"([$£€])(\d+(?:\.\d+)?)(\s+(?:thousand|million|billion|trillion)\b)?", _expand_currency, text)
    text = re.sub(r"(\d)\s*%", r"\1 percent", text)
    text = re.sub(r"\b(\d{1,2}):(\d{2})\b", _expand_time, text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: _ordinal(_number_words(m.group(1))), text, flags=re.I)
    text = re.sub(r"\b(\d{2,4})'?s\b", lambda m: _plural(_number_words(m.group(1))), text)  # the 1990s
    text = re.sub(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])", " ", text)  # mp3, 4x4: read the digits apart
    text = re.sub(r"(\d+)\.(\d+)", lambda m: _decimal_words(m.group(1), m.group(2)), text)
    text = re.sub(r"(?<![\w.-])-(?=\d)", "minus ", text)
    text = re.sub(r"\d+", lambda m: _number_words(m.group(0)), text)
    return re.sub(r"\s*&\s*", " and ", text)


def _expand_abbreviation(match: re.Match) -> str:
    written = match.group(1)
    key = written.lower()
    spoken = _NEVER_FINAL.get(key) or _MAYBE_FINAL[key] + ("." if match.group(2) is not None else "")
    return spoken[0].upper() + spoken[1:] if written[0].isupper() else spoken


def _expand_currency(match: re.Match) -> str:
    unit, subunit = _CURRENCIES[match.group(1)]
    amount, scale = match.group(2), (match.group(3) or "").strip()
    whole, _, fraction = amount.partition(".")
    if scale or (fraction and len(fraction) != 2):  # $1.5 million, $0.125: one number, then the unit
        words = _decimal_words(whole, fraction) if fraction else _number_words(whole)
        return " ".join(filter(None, (words, scale, _plural(unit))))
    spoken = f"{_number_words(whole)} {unit if int(whole) == 1 else _plural(unit)}"
    if fraction and int(fraction):
        cents = int(fraction)
        sub = subunit if cents == 1 else ("pence" if subunit == "penny" else _plural(subunit))
        spoken += f" {_int_words(cents)} {sub}"
    return spoken


def _expand_time(match: re.Match) -> str:
    hours, minutes = int(match.group(1)), int(match.group(2))
    if hours > 24 or minutes > 59:  # not a clock time (a score, a ratio): read both numbers
        return f"{_int_words(hours)} {_int_words(minutes)}"
    if minutes == 0:
        return f"{_int_words(hours)} o'clock"
    return f"{_int_words(hours)} {'oh ' if minutes < 10 else ''}{_int_words(minutes)}"


def _int_words(number: int) -> str:
    """0 <= number < 10**15 -> "forty two" (American style, no "and")."""
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_int_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if number >= scale:
            head, rest = divmod(number, scale)
            return f"{_int_words(head)} {name}" + (f" {_int_words(rest)}" if rest else "")
    raise ValueError(f"number too large to spell: {number}")


def _number_words(digits: str) -> str:
    """A digit string as it is read: years in pairs, leading zeros and very long strings digit by digit."""
    if (len(digits) > 1 and digits[0] == "0") or len(digits) > _MAX_SPOKEN_DIGITS:
        return _digit_words(digits)
    number = int(digits)
    if len(digits) == 4 and 1100 <= number <= 2099 and not 2000 <= number <= 2009:
        high, low = divmod(number, 100)
        if low == 0:
            return f"{_int_words(high)} hundred"
        return f"{_int_words(high)} {'oh ' if low < 10 else ''}{_int_words(low)}"
    return _int_words(number)


def _digit_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _decimal_words(whole: str, fraction: str) -> str:
    return f"{_number_words(whole)} point {_digit_words(fraction)}"


def _ordinal(cardinal: str) -> str:
    head, _, last = cardinal.rpartition(" ")
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def _plural(words: str) -> str:
    if words.endswith("y"):
        return words[:-1] + "ies"
    if words.endswith("x"):
        return words + "es"
    return words + "s"


def check_text(text: str, config: TextConfig) -> Optional[str]:
    """Judges a text as it will be spoken, i.e. after :func:`normalize_text`.

    Args:
        text: raw text.
        config: bounds and language.
    Returns:
        ``None`` if the text is acceptable, else a short countable reason:
        ``"empty_text"``, ``"text_too_long"`` or ``"text_too_short"``.
    """
    length = len(normalize_text(text, config.language))
    if length == 0:
        return "empty_text"
    if length > config.max_chars:
        return "text_too_long"
    if length < config.min_chars:
        return "text_too_short"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------------

@runtime_checkable
class TextTokenizer(Protocol):
    """What every text tokenizer offers. Ids are ``0 .. vocab_size - 1``."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> None:
        """Writes ``directory/text_tokenizer.json`` (kind + settings) and any files needed to rebuild it."""


def word_index(tokenizer: TextTokenizer, text: str) -> list[int]:
    """For each id of ``tokenizer.encode(text)``, the index of the word it belongs to, or -1 for an id of no word
    (a space). Words are what the tokenizer's front end separates by spaces: the text's words for bytes and chars,
    espeak-ng's words for phonemes and phones (which joins a few, e.g. "in the" -> "ɪnðə").

    Raises:
        ValueError: for a tokenizer that keeps no word boundaries (hf).
    """
    words = getattr(tokenizer, "word_index", None)
    if words is None:
        raise ValueError(f"the {getattr(tokenizer, 'KIND', type(tokenizer).__name__)} text tokenizer keeps no word "
                         f"boundaries")
    return words(text)


def _char_words(text: str) -> list[int]:
    """For each character of ``text``, the index of its space-separated word, -1 on spaces."""
    index, word, in_word = [], -1, False
    for char in text:
        if char.isspace():
            in_word = False
            index.append(-1)
            continue
        if not in_word:
            word, in_word = word + 1, True
        index.append(word)
    return index


def _checked_ids(ids: Sequence[int], vocab_size: int, kind: str) -> list[int]:
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"{kind} tokenizer: ids out of range [0, {vocab_size}): {bad[:8]}")
    return ids


def _write_kind_file(directory: str | Path, kind: str, **settings) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / TOKENIZER_FILE).write_text(json.dumps({"kind": kind, **settings}, ensure_ascii=False, indent=1),
                                            encoding="utf-8")


class ByteTokenizer:
    """UTF-8 bytes as ids: 256 ids, any text, no vocabulary file."""

    KIND = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def word_index(self, text: str) -> list[int]:
        """See :func:`word_index`: each byte in its character's word."""
        return [word for char, word in zip(text, _char_words(text)) for _ in char.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text; byte sequences that are not valid UTF-8 (e.g. sampled ids) decode to U+FFFD."""
        return bytes(_checked_ids(ids, self.vocab_size, self.KIND)).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> None:
        _write_kind_file(directory, self.KIND)


class CharTokenizer:
    """One id per character seen in the training texts; id 0 is ``<unk>`` for any other character.

    Args:
        chars: the vocabulary, in id order from id 1.
    """

    KIND = "chars"
    UNK_ID = 0
    UNK_TEXT = "\ufffd"  # what <unk> decodes to: one replacement character per unknown character

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        odd = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if odd:
            raise ValueError(f"CharTokenizer vocabulary entries must be single characters, got {odd[:8]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer vocabulary has duplicate characters")
        self.chars = chars
        self._ids = {c: i + 1 for i, c in enumerate(chars)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = the sorted set of characters of ``texts`` (pass them normalised)."""
        return cls(sorted(set().union(*map(set, texts))))

    @classmethod
    def from_file(cls, path: str | Path) -> CharTokenizer:
        """Reads a vocabulary file written by :meth:`save`."""
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
        if meta.get("kind") != cls.KIND or "chars" not in meta:
            raise ValueError(f"{path} is not a chars vocabulary file (kind={meta.get('kind')!r})")
        return cls(meta["chars"])

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.UNK_ID) for c in text]

    def word_index(self, text: str) -> list[int]:
        """See :func:`word_index`."""
        return _char_words(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = _checked_ids(ids, self.vocab_size, self.KIND)
        return "".join(self.chars[i - 1] if i != self.UNK_ID else self.UNK_TEXT for i in ids)

    def save(self, directory: str | Path) -> None:
        _write_kind_file(directory, self.KIND, chars=self.chars)


# The phoneme tokenizer's symbols: printable ASCII and the Unicode blocks espeak-ng's IPA draws on for any
# language. One id per code point, so "ɑː" is two ids and an English second of speech about 15 (it was 22 as
# UTF-8 bytes, more than the 25 Hz token rate leaves for a CTC alignment).
_IPA_BLOCKS = ((0x20, 0x7E), (0xC0, 0x24F), (0x250, 0x2FF), (0x300, 0x36F), (0x370, 0x3FF), (0x1D00, 0x1DBF),
               (0x2016, 0x2016), (0x203F, 0x203F), (0x2191, 0x2198), (0x2C71, 0x2C71))
_IPA_SYMBOLS = [chr(code) for first, last in _IPA_BLOCKS for code in range(first, last + 1)]
PHONEME_INVENTORY_VERSION = 2  # 1 was UTF-8 bytes


class PhonemeTokenizer:
    """IPA phonemes from espeak-ng, one id per IPA symbol (code point) of a fixed inventory; no vocabulary file.

    Words are separated by spaces and every clause ends in one of ``, . ? !`` (from the text's punctuation),
    so pauses and question intonation survive: ``"Hello, world!"`` -> ``"həlˈoʊ, wˈɜːld!"``. Id 0 is the
    unknown symbol (a code point outside the inventory); ``decode`` writes it as ``UNK_TEXT``.

    Args:
        language: espeak-ng voice, e.g. ``"en-us"``, ``"en-gb"``, ``"fr"``, ``"cmn"``.
    Raises:
        ValueError: espeak-ng has no voice for ``language``.
    """

    KIND = "phonemes"
    UNK_ID = 0
    UNK_TEXT = "\ufffd"
    _IDS = {symbol: index + 1 for index, symbol in enumerate(_IPA_SYMBOLS)}

    def __init__(self, language: str = "en-us"):
        self.language = language
        ESPEAK.clauses("", language)  # fails now, not in the middle of training, on an unknown language

    @property
    def vocab_size(self) -> int:
        return len(_IPA_SYMBOLS) + 1

    def phonemize(self, text: str) -> str:
        """Text -> IPA string, clause punctuation kept."""
        spoken = ""
        for i, piece in enumerate(_CLAUSE_BREAK.split(text)):
            if i % 2 == 0:  # text between clause breaks
                phonemes = " ".join(p for p in ESPEAK.clauses(piece, self.language) if p)
                phonemes = re.sub(r"\s+", " ", _LANGUAGE_SWITCH.sub("", phonemes)).strip()
                if phonemes:
                    spoken = f"{spoken} {phonemes}" if spoken else phonemes
            elif spoken and spoken[-1] not in _CLAUSE_MARKS:
                spoken += _clause_mark(piece)
        return spoken

    def encode(self, text: str) -> list[int]:
        return [self._IDS.get(symbol, self.UNK_ID) for symbol in self.phonemize(text)]

    def word_index(self, text: str) -> list[int]:
        """See :func:`word_index`: words of the IPA string; a clause mark belongs to the word it follows."""
        return _char_words(self.phonemize(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> the IPA string (the text itself cannot be recovered)."""
        ids = _checked_ids(ids, self.vocab_size, self.KIND)
        return "".join(_IPA_SYMBOLS[i - 1] if i != self.UNK_ID else self.UNK_TEXT for i in ids)

    def save(self, directory: str | Path) -> None:
        _write_kind_file(directory, self.KIND, language=self.language, inventory=PHONEME_INVENTORY_VERSION)


# Phones: a vowel core (a vowel, or one of the diphthongs below) with its stress and length marks is one sound,
# and so is an affricate; every other symbol stands alone. The inventory is fixed, so no vocabulary file is needed.
_VOWELS = "aɐɑɒæɛeəɜɚɝiɪɨᵻoɔøœuʊʉʌyʏɤɯɵ"
_DIPHTHONGS = ("aɪ", "aʊ", "eɪ", "oʊ", "ɔɪ", "əʊ", "eə", "ɪə", "ʊə")
_AFFRICATES = ("tʃ", "dʒ")
_STRESS_MARKS = "ˈˌ"
_LENGTH_MARK = "ː"
_VOWEL_PHONES = [stress + core + length for core in (*_DIPHTHONGS, *_VOWELS) for stress in ("", *_STRESS_MARKS)
                 for length in ("", _LENGTH_MARK)]
_PHONES = [*_IPA_SYMBOLS, *_VOWEL_PHONES, *_AFFRICATES]  # single symbols first: every IPA string is encodable
PHONE_INVENTORY_VERSION = 1
_PHONE = re.compile("|".join(re.escape(phone) for phone in sorted(_VOWEL_PHONES + list(_AFFRICATES), key=len,
                                                                    reverse=True)) + "|.", re.DOTALL)


class PhoneTokenizer:
    """One id per sound of espeak-ng's IPA (:class:`PhonemeTokenizer`'s string): a vowel or diphthong carries its
    stress and length marks (``"ˈɑː"`` is one id, three as symbols), an affricate is one id, and what makes no sound
    gets no id: the spaces between words and a sentence's final period. Commas, ``?`` and ``!`` stay (a pause, the
    intonation). On the demo domain a sentence has about a third fewer ids than as symbols, so the LLM and the reward
    model's CTC see one step per sound. Id 0 is the unknown symbol.

    Args:
        language: espeak-ng voice, e.g. ``"en-us"``.
    """

    KIND = "phones"
    UNK_ID = 0
    UNK_TEXT = "\ufffd"
    _IDS = {phone: index + 1 for index, phone in enumerate(_PHONES)}

    def __init__(self, language: str = "en-us"):
        self.language = language
        self._phonemes = PhonemeTokenizer(language)

    @property
    def vocab_size(self) -> int:
        return len(_PHONES) + 1

    def phones(self, text: str) -> list[str]:
        """Text -> its phones (strings of IPA symbols), in order."""
        spoken = self._phonemes.phonemize(text).replace(" ", "")
        return _PHONE.findall(spoken[:-1] if spoken.endswith(".") else spoken)

    def encode(self, text: str) -> list[int]:
        return [self._IDS.get(phone, self.UNK_ID) for phone in self.phones(text)]

    def word_index(self, text: str) -> list[int]:
        """See :func:`word_index`: words of the IPA string (no phone is a space); a phone that spans two words
        (a diphthong across a word boundary) belongs to the first."""
        spoken = self._phonemes.phonemize(text)
        spoken = spoken[:-1] if spoken.endswith(".") else spoken
        words = [word for word in _char_words(spoken) if word >= 0]  # the word of each symbol, spaces dropped
        return [words[match.start()] for match in _PHONE.finditer(spoken.replace(" ", ""))]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> the phones joined (word boundaries are not kept)."""
        ids = _checked_ids(ids, self.vocab_size, self.KIND)
        return "".join(_PHONES[i - 1] if i != self.UNK_ID else self.UNK_TEXT for i in ids)

    def save(self, directory: str | Path) -> None:
        _write_kind_file(directory, self.KIND, language=self.language, inventory=PHONE_INVENTORY_VERSION)


# A clause ends at a run of , ; : . ? ! followed by a space, a closing quote/bracket or the end ("3.5" does not),
# or at a dash standing alone between spaces.
_CLAUSE_BREAK = re.compile(r"([,;:.?!]+(?=[\s\"')\]]|$)|(?<=\s)-+(?=\s))")
_CLAUSE_MARKS = ",.?!"
# espeak-ng marks words it reads in another language: "(en)wiːkˈɛnd(fr)"
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")


def _clause_mark(punctuation: str) -> str:
    for mark in "?!.":
        if mark in punctuation:
            return mark
    return ","  # , ; : and lone dashes are all a short pause


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local directory (never downloaded); no special tokens added.

    Args:
        path: directory written by ``save_pretrained``.
    Raises:
        FileNotFoundError: ``path`` is not a directory.
    """

    KIND = "hf"

    def __init__(self, path: str | Path):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"HF tokenizer directory not found: {path}")
        from transformers import AutoTokenizer  # imported here: it takes seconds and most runs never need it

        self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)  # includes added tokens, unlike its .vocab_size

    def encode(self, text: str) -> list[int]:
        # The LLM's own SOS/EOS frame the text (e2e_tts.vocab), so the tokenizer's specials stay out.
        return self._tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        ids = _checked_ids(ids, self.vocab_size, self.KIND)
        return self._tokenizer.decode(ids, clean_up_tokenization_spaces=False)

    def save(self, directory: str | Path) -> None:
        self._tokenizer.save_pretrained(str(directory))
        _write_kind_file(directory, self.KIND)


def build_text_tokenizer(config: TextConfig, texts: Optional[Iterable[str]] = None) -> TextTokenizer:
    """Makes the tokenizer ``config`` names.

    Args:
        config: the text settings.
        texts: normalised training texts; used only to build a chars vocabulary when ``config.vocab_path``
            does not exist yet (save it with ``tokenizer.save`` so that later runs reuse the same ids).
    Raises:
        ValueError: unknown kind, or chars without an existing vocabulary file and without texts,
            or hf without ``hf_path``.
    """
    kind = config.tokenizer
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "phonemes":
        return PhonemeTokenizer(config.language)
    if kind == "phones":
        return PhoneTokenizer(config.language)
    if kind == "hf":
        if not config.hf_path:
            raise ValueError("TextConfig.tokenizer='hf' needs hf_path (a local tokenizer directory)")
        return HFTokenizer(config.hf_path)
    if kind == "chars":
        if config.vocab_path and Path(config.vocab_path).is_file():
            return CharTokenizer.from_file(config.vocab_path)
        if texts is None:
            raise ValueError(f"TextConfig.tokenizer='chars' needs an existing vocab_path (got {config.vocab_path!r}) "
                             "or texts to build the vocabulary from")
        return CharTokenizer.build(texts)
    raise ValueError(f"unknown text tokenizer {kind!r}; expected one of {TOKENIZER_KINDS}")


def load_text_tokenizer(directory: str | Path) -> TextTokenizer:
    """Rebuilds a tokenizer from the directory its ``save`` wrote.

    Raises:
        FileNotFoundError: no ``text_tokenizer.json`` in ``directory``.
        ValueError: naming the file when it is not a JSON object or names an unknown kind.
    """
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {directory}: not a saved text tokenizer")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with the tokenizer's kind, got {type(meta).__name__}")
    kind = meta.get("kind")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "chars":
        return CharTokenizer.from_file(path)
    if kind == "phonemes":
        if meta.get("inventory", 1) != PHONEME_INVENTORY_VERSION:
            raise ValueError(f"{path}: phoneme ids of inventory {meta.get('inventory', 1)} (1 = UTF-8 bytes), but this "
                             f"version encodes inventory {PHONEME_INVENTORY_VERSION}: retrain, or use the older release")
        return PhonemeTokenizer(meta["language"])
    if kind == "phones":
        if meta.get("inventory") != PHONE_INVENTORY_VERSION:
            raise ValueError(f"{path}: phone ids of inventory {meta.get('inventory')}, but this version encodes "
                             f"inventory {PHONE_INVENTORY_VERSION}: retrain, or use the release that wrote it")
        return PhoneTokenizer(meta["language"])
    if kind == "hf":
        return HFTokenizer(directory)
    raise ValueError(f"{path} names unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
