"""The Seed-TTS-Eval text normaliser, reproduced exactly (BytedanceSpeech/seed-tts-eval ``run_wer.py::process_one``).

The official script, applied to the reference and the hypothesis alike:

1. deletes every character of ``zhon.hanzi.punctuation + string.punctuation`` except the apostrophe (deleted, not
   replaced by a space: ``"well-known"`` becomes ``"wellknown"``);
2. replaces double spaces by single ones (one ``str.replace`` pass; jiwer's own default transform then collapses any
   remaining whitespace runs and strips the ends, so the word sequence is the same as a full collapse);
3. ``zh``: puts a space between every character (character-level scoring; Latin words inside Chinese text are
   scored letter by letter, case-sensitively); ``en``: lower-cases. There is no number, abbreviation or
   contraction normalisation and no Whisper English normaliser.

Unlike jiwer 4's ``RemovePunctuation`` (which also deletes the apostrophe) this keeps ``"don't"`` one word, as the
official scores do. Traditional-to-simplified conversion (``zhconv``) is *not* part of the normaliser: the official
pipeline applies it to the Paraformer transcript only, see :func:`to_simplified_chinese`.
"""

from __future__ import annotations

import importlib.util
import string

# Verbatim value of ``zhon.hanzi.punctuation`` (= ``non_stops + stops``, 82 characters) in zhon 2.0.2 and 2.1.1, the
# PyPI releases current when Seed-TTS-Eval was published (2024) and today; source: github.com/tsroten/zhon,
# ``src/zhon/hanzi.py``. zhon itself is not a dependency: the constant is all the official normaliser uses from it.
HANZI_PUNCTUATION = (
    # non_stops: fullwidth ASCII variants
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d"
    "\uff0f\uff1a\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f"
    "\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60"
    # halfwidth CJK punctuation
    "\uff62\uff63\uff64"
    # CJK symbols and punctuation
    "\u3000\u3001\u3003"
    # CJK angle and corner brackets
    "\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011"
    # CJK brackets and symbols/punctuation
    "\u3014\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f"
    # other CJK symbols, special CJK indicators
    "\u3030\u303e\u303f"
    # dashes, quotation marks and apostrophes, general punctuation
    "\u2013\u2014\u2018\u2019\u201b\u201c\u201d\u201e\u201f\u2026\u2027"
    # overscores and underscores, small form variants, middle dot
    "\ufe4f\ufe51\ufe54\u00b7"
    # stops: fullwidth full stop, exclamation and question marks, halfwidth and ideographic full stops
    "\uff0e\uff01\uff1f\uff61\u3002"
)

# The official loop skips exactly the ASCII apostrophe; the typographic ones (U+2018, U+2019) are zhon punctuation
# and are deleted, so "don’t" (curly) scores as "dont" while "don't" stays "don't".
_DELETE = str.maketrans("", "", "".join(c for c in HANZI_PUNCTUATION + string.punctuation if c != "'"))

LANGUAGES = ("en", "zh")


def normalize_for_wer(text: str, language: str) -> str:
    """Applies the official Seed-TTS-Eval normalisation to one reference or hypothesis.

    Args:
        text: raw text (a meta-list target text or an ASR transcript).
        language: ``"en"`` (lower-case, word level) or ``"zh"`` (character level).

    Returns:
        The string the official script hands to jiwer. It may still hold whitespace runs: jiwer's default
        transform collapses them and strips the ends before splitting on spaces.
    Raises:
        ValueError: for a language other than ``en``/``zh`` (the official script raises NotImplementedError).
    """
    if language not in LANGUAGES:
        raise ValueError(f"Seed-TTS-Eval normalisation is defined for {LANGUAGES}, got language={language!r}")
    text = text.translate(_DELETE).replace("  ", " ")
    if language == "zh":
        return " ".join(text)
    return text.lower()


def spoken_characters(text: str, language: str) -> int:
    """Non-space characters of the Seed-TTS-normalised text (punctuation takes no speaking time)."""
    return sum(1 for c in normalize_for_wer(text, language) if not c.isspace())


def wer_language_of(text_language: str) -> str:
    """Seed-TTS-Eval scoring language of an espeak-style text language: ``"zh"`` for Chinese, else ``"en"``."""
    return "zh" if text_language.lower().startswith(("zh", "cmn", "yue")) else "en"


def zhconv_available() -> bool:
    """Whether the optional ``zhconv`` package (traditional -> simplified Chinese) is installed."""
    return importlib.util.find_spec("zhconv") is not None


def to_simplified_chinese(text: str) -> str:
    """Converts a Chinese transcript to simplified characters, as the official script does to Paraformer output.

    Raises:
        ImportError: naming ``pip install zhconv`` when the package is missing.
    """
    if not zhconv_available():
        raise ImportError("traditional -> simplified conversion needs the zhconv package: pip install zhconv")
    import zhconv

    return zhconv.convert(text, "zh-cn")
