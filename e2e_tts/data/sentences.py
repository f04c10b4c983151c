"""English sentences for the embedded default corpus, and a held-out list for evaluating on unseen text.

Source: the usage examples inside the glosses of WordNet 3.0 (Princeton University; Debian package ``wordnet-base``),
e.g. ``"the children were arguing hotly"``. They are short, ordinary, modern English written by lexicographers, which
suits the flite voices and pocketsphinx's generic English language model alike. The WordNet 3.0 licence allows
redistribution with its notice, shipped as ``resources/WORDNET_LICENSE.txt``.

``resources/wordnet_sentences_en.txt.gz`` (the pool) and ``resources/heldout_en.txt`` were built offline, once, by
``python -m e2e_tts.data.sentences --wordnet-dir /usr/share/wordnet --out-dir e2e_tts/data/resources`` (needs
``wordnet-base`` and pocketsphinx), which:

1. takes every quoted example of every gloss, skipping synsets whose gloss marks them offensive, vulgar or a slur;
2. splits the examples into sentences and cleans them (:func:`clean_sentence`);
3. keeps clauses, not bare noun phrases (:func:`looks_like_clause`), whose words are all in the recogniser's
   vocabulary (pocketsphinx's en-us dictionary and language model), so that a perfect synthesis can be transcribed
   perfectly;
4. dedups case-insensitively and sets aside a seeded sample of held-out sentences that the pool then excludes.

At run time nothing is downloaded: the pool is read from the package, cleaned again, deduplicated, and checked to share
no sentence with the held-out list.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import random
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Optional

RESOURCES = Path(__file__).parent / "resources"
POOL_FILE = RESOURCES / "wordnet_sentences_en.txt.gz"
HELDOUT_FILE = RESOURCES / "heldout_en.txt"
MIN_WORDS = 4
MAX_WORDS = 20

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_ALLOWED_CHARS = re.compile(r"[A-Za-z' ,;:.?!]+")
_TYPOGRAPHIC_TO_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                                       "\u2013": "-", "\u2014": "-"})
# A sentence opening with one of these is a clause (subject + verb) in practice.
_SUBJECT_PRONOUNS = frozenset("i you he she it we they there".split())
# A sentence opening with one of these is a clause only if it has a finite verb; auxiliaries detect most of them
# without a tagger ("the land had never been plowed" yes, "a race of long gaunt men" no).
_DETERMINERS = frozenset("the a an this that these those my your his her its our their some many most all no every each"
                         " both several few any".split())
_AUXILIARIES = frozenset("is was are were has had have will would can could shall should may might must does did do"
                         " isn't wasn't aren't weren't hasn't hadn't haven't won't wouldn't can't couldn't shouldn't"
                         " doesn't didn't don't".split())
_GLOSS_MARKERS_TO_SKIP = ("offensive", "obscene", "vulgar", "slur", "derogatory", "disparaging")


def clean_sentence(text: str) -> Optional[str]:
    """Normalises one sentence for synthesis and recognition, or returns None when it cannot be used.

    Kept: ASCII letters (accents are stripped), apostrophes inside words, ``, ; :`` and one final ``. ? !`` (a period
    is added when missing), 4-20 words, first letter capitalised. Rejected: digits, brackets, quotes, hyphens, inner
    periods (abbreviations) and acronyms, because the synthesiser and the recogniser would disagree on how to say or
    spell them.
    """
    text = unicodedata.normalize("NFKD", text.translate(_TYPOGRAPHIC_TO_ASCII))
    text = " ".join("".join(ch for ch in text if not unicodedata.combining(ch)).split())
    text = re.sub(r" ([,;:.?!])", r"\1", text).rstrip(",;: ")
    if not text:
        return None
    if text[-1] not in ".?!":
        text += "."
    if not _ALLOWED_CHARS.fullmatch(text) or re.search(r"[.?!]", text[:-1]):
        return None
    words = [token.rstrip(",;:") for token in text[:-1].split(" ")]
    if any(not _WORD.fullmatch(word) or sum(ch.isupper() for ch in word) > 1 for word in words):
        return None
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    return text[0].upper() + text[1:]


def sentence_key(text: str) -> str:
    """Case- and punctuation-insensitive identity of a sentence, used for deduplication."""
    return " ".join(_WORD.findall(text.lower()))


def split_sentences(text: str) -> list[str]:
    """Splits running text at ``. ? !`` followed by a capitalised word."""
    return [part for part in re.split(r"(?<=[.?!])\s+(?=[A-Z])", text.strip()) if part]


def looks_like_clause(sentence: str) -> bool:
    """True for a sentence that opens with a subject pronoun, or with a determiner and contains an auxiliary verb."""
    words = [word.lower() for word in _WORD.findall(sentence)]
    if not words:
        return False
    if words[0].split("'")[0] in _SUBJECT_PRONOUNS:
        return True
    return words[0] in _DETERMINERS and any(word in _AUXILIARIES for word in words)


def _dedup_clean(lines: Iterable[str]) -> list[str]:
    """Cleans lines and keeps the first of each case-insensitive duplicate, in order."""
    seen: set[str] = set()
    sentences = []
    for line in lines:
        sentence = clean_sentence(line)
        if sentence is not None and sentence_key(sentence) not in seen:
            seen.add(sentence_key(sentence))
            sentences.append(sentence)
    return sentences


@functools.lru_cache(maxsize=1)
def _heldout() -> tuple[str, ...]:
    lines = [line.strip() for line in HELDOUT_FILE.read_text(encoding="ascii").splitlines() if line.strip()]
    sentences = _dedup_clean(lines)
    if sentences != lines:
        raise RuntimeError(f"{HELDOUT_FILE} must hold distinct, already clean sentences (one per line)")
    return tuple(sentences)


@functools.lru_cache(maxsize=1)
def _pool() -> tuple[str, ...]:
    with gzip.open(POOL_FILE, "rt", encoding="ascii") as handle:
        pool = _dedup_clean(handle.read().splitlines())
    heldout_keys = {sentence_key(sentence) for sentence in _heldout()}
    leaked = [sentence for sentence in pool if sentence_key(sentence) in heldout_keys]
    if leaked:
        raise RuntimeError(f"{len(leaked)} held-out sentences are in the corpus pool {POOL_FILE}, e.g. {leaked[:3]}")
    return tuple(pool)


def heldout_sentences() -> list[str]:
    """The held-out English sentences (``resources/heldout_en.txt``), none of which is in the corpus pool."""
    return list(_heldout())


def pool_sentences() -> list[str]:
    """Every sentence that :func:`corpus_sentences` can return, in file order."""
    return list(_pool())


def corpus_sentences(n: int, seed: int) -> list[str]:
    """Returns ``n`` distinct sentences from the pool, in an order fixed by ``seed``.

    Raises:
        ValueError: if ``n`` is negative or larger than the pool.
    """
    pool = _pool()
    if not 0 <= n <= len(pool):
        raise ValueError(f"cannot draw {n} distinct sentences: the pool holds {len(pool)}")
    return random.Random(seed).sample(pool, n)


# Rebuilding the shipped resources (maintenance only; needs Debian wordnet-base and pocketsphinx).

def extract_wordnet_examples(wordnet_dir: str | Path) -> list[str]:
    """The quoted usage examples of every gloss in WordNet's ``data.{noun,verb,adj,adv}``, in file order."""
    examples = []
    for part_of_speech in ("noun", "verb", "adj", "adv"):
        for line in (Path(wordnet_dir) / f"data.{part_of_speech}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header lines start with two spaces
                continue
            gloss = line.split("|", 1)[1]
            if not any(marker in gloss.lower() for marker in _GLOSS_MARKERS_TO_SKIP):
                examples.extend(re.findall(r'"([^"]+)"', gloss))
    return examples


def recogniser_vocabulary(words: Iterable[str]) -> set[str]:
    """The lower-cased ``words`` that pocketsphinx's en-us model can output: in its dictionary and its LM."""
    import pocketsphinx  # the [eval] extra; only this maintenance path needs it

    model = Path(pocketsphinx.get_model_path()) / "en-us"
    dictionary = {re.sub(r"\(\d+\)$", "", line.split()[0])
                  for line in (model / "cmudict-en-us.dict").read_text().splitlines() if line.strip()}
    # The model keeps pointers into config and logmath: hold references, or it crashes once they are collected.
    config, logmath = pocketsphinx.Config(), pocketsphinx.LogMath()
    language_model = pocketsphinx.NGramModel(config, logmath, str(model / "en-us.lm.bin"))
    return {word for word in {word.lower() for word in words}
            if word in dictionary and language_model.prob([word]) > logmath.get_zero()}


def build_sentence_lists(examples: Iterable[str], vocabulary: set[str], num_heldout: int,
                         seed: int) -> tuple[list[str], list[str]]:
    """Turns raw examples into ``(pool, heldout)``: clean clauses within ``vocabulary``, disjoint by key.

    Held-out sentences are drawn (seeded) from those of 6-14 words, a typical evaluation length.
    """
    candidates = [sentence for sentence in _dedup_clean(part for example in examples
                                                          for part in split_sentences(example))
                  if looks_like_clause(sentence)
                  and all(word.lower() in vocabulary for word in _WORD.findall(sentence))]
    typical = [sentence for sentence in candidates if 6 <= len(_WORD.findall(sentence)) <= 14]
    if len(typical) < num_heldout:
        raise ValueError(f"only {len(typical)} candidates for {num_heldout} held-out sentences")
    heldout = random.Random(seed).sample(typical, num_heldout)
    heldout_keys = {sentence_key(sentence) for sentence in heldout}
    pool = [sentence for sentence in candidates if sentence_key(sentence) not in heldout_keys]
    return pool, heldout


def main(argv: Optional[list[str]] = None) -> None:
    """Command line of the rebuild: writes the pool and held-out files into --out-dir."""
    parser = argparse.ArgumentParser(description="Rebuild the sentence pool and held-out list from WordNet 3.0.")
    parser.add_argument("--wordnet-dir", default="/usr/share/wordnet", help="holds data.noun etc. (wordnet-base)")
    parser.add_argument("--out-dir", default=str(RESOURCES))
    parser.add_argument("--num-heldout", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    examples = extract_wordnet_examples(args.wordnet_dir)
    vocabulary = recogniser_vocabulary(word for example in examples for word in _WORD.findall(example))
    pool, heldout = build_sentence_lists(examples, vocabulary, args.num_heldout, args.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the archive byte-identical across rebuilds.
    (out_dir / POOL_FILE.name).write_bytes(gzip.compress("\n".join(pool).encode("ascii") + b"\n", mtime=0))
    (out_dir / HELDOUT_FILE.name).write_text("\n".join(heldout) + "\n", encoding="ascii")
    print(f"{len(pool)} pool sentences and {len(heldout)} held-out sentences written to {out_dir}")


if __name__ == "__main__":
    main()
