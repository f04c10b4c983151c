"""Sentences generated from a template grammar: the demo domain that the embedded default learns on 2 CPU cores.

A grammar is a JSON file with ``slots`` (name -> list of fillers, each one or more lower-case words) and ``templates``
(lower-case words and ``{slot}`` references)::

    {"slots": {"hour": ["one", "two"], ...}, "templates": ["set an alarm for {hour} {minute} in the {daypart}", ...]}

A sentence is one template with each reference replaced by one filler of that slot, drawn uniformly and
independently; the template is drawn uniformly too. The vocabulary is closed (about 110 words for the shipped
``resources/demo_grammar.json``, a copy of the project's demo domain) while the number of distinct sentences is in the
millions, so every word recurs hundreds of times in a few thousand sentences: what a few-million-parameter model can
learn in minutes.

Held-out sentences are new combinations of known words, drawn the same way with a fixed seed of their own
(:data:`HELDOUT_SEED`) before any corpus sentence; :func:`corpus_sentences` never returns one of them. For the shipped
grammar they are kept in the repository (``resources/heldout_demo.txt``) and a test checks that the file is exactly
what :func:`heldout_sentences` draws.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

RESOURCES = Path(__file__).parent / "resources"
DEMO_GRAMMAR_FILE = RESOURCES / "demo_grammar.json"
DEMO_HELDOUT_FILE = RESOURCES / "heldout_demo.txt"
HELDOUT_SEED = 1_000_003  # held-out draws use their own stream, so corpus seeds never reproduce them
NUM_HELDOUT = 100
MAX_DRAWS_PER_SENTENCE = 1000  # rejection sampling gives up after this many duplicates in a row

_SLOT_REFERENCE = re.compile(r"\{([a-z_]+)\}")
_WORDS = re.compile(r"[a-z]+(?: [a-z]+)*")


class GrammarError(ValueError):
    """A malformed grammar file; the message starts with the file's path."""


@dataclass(frozen=True)
class Grammar:
    """Templates with slots; see the module docstring.

    Attributes:
        templates: each a string of lower-case words and ``{slot}`` references.
        slots: slot name -> fillers.
        source: where the grammar was read from (recorded in a corpus's provenance).
    """

    templates: tuple[str, ...]
    slots: dict[str, tuple[str, ...]]
    source: str = ""

    @classmethod
    def load(cls, path: str | Path) -> "Grammar":
        """Reads and validates a grammar JSON file.

        Raises:
            GrammarError: naming the file and what is wrong (unreadable JSON, missing keys, an empty slot, a
                reference to an undefined slot, a filler or template word that is not lower-case a-z).
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GrammarError(f"{path}: cannot read the grammar: {err}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("slots"), dict) \
                or not isinstance(raw.get("templates"), list) or not raw["templates"]:
            raise GrammarError(f"{path}: needs an object with 'slots' (an object) and 'templates' (a non-empty list)")
        slots = {}
        for name, fillers in raw["slots"].items():
            if not isinstance(fillers, list) or not fillers:
                raise GrammarError(f"{path}: slot {name!r} must be a non-empty list")
            bad = [filler for filler in fillers if not isinstance(filler, str) or not _WORDS.fullmatch(filler)]
            if bad:
                raise GrammarError(f"{path}: slot {name!r} has fillers that are not lower-case words: {bad[:3]}")
            slots[name] = tuple(fillers)
        for template in raw["templates"]:
            if not isinstance(template, str):
                raise GrammarError(f"{path}: template {template!r} is not a string")
            undefined = sorted(set(_SLOT_REFERENCE.findall(template)) - set(slots))
            if undefined:
                raise GrammarError(f"{path}: template {template!r} uses undefined slot(s) {undefined}")
            if not _WORDS.fullmatch(_SLOT_REFERENCE.sub("x", template)):
                raise GrammarError(f"{path}: template {template!r} must be lower-case words and {{slot}} references")
        return cls(templates=tuple(raw["templates"]), slots=slots, source=str(path))

    def vocabulary(self) -> set[str]:
        """Every word a sentence of this grammar can contain."""
        words = {word for template in self.templates for word in _SLOT_REFERENCE.sub(" ", template).split()}
        return words | {word for fillers in self.slots.values() for filler in fillers for word in filler.split()}

    def num_sentences(self) -> int:
        """How many sentences the grammar can produce (an upper bound: fillings may coincide)."""
        return sum(math.prod(len(self.slots[name]) for name in _SLOT_REFERENCE.findall(template))
                   for template in self.templates)

    def sample(self, rng: random.Random) -> str:
        """One sentence: a uniform template with each reference filled uniformly and independently."""
        template = rng.choice(self.templates)
        return _SLOT_REFERENCE.sub(lambda match: rng.choice(self.slots[match.group(1)]), template)

    def distinct_sentences(self, n: int, rng: random.Random, exclude: frozenset[str] = frozenset()) -> list[str]:
        """``n`` distinct sentences in draw order, none of them in ``exclude``.

        Raises:
            ValueError: when the grammar runs out of new sentences (``MAX_DRAWS_PER_SENTENCE`` duplicates in a row).
        """
        seen, sentences = set(exclude), []
        while len(sentences) < n:
            for _ in range(MAX_DRAWS_PER_SENTENCE):
                sentence = self.sample(rng)
                if sentence not in seen:
                    break
            else:
                raise ValueError(f"the grammar {self.source or '(unnamed)'} gave only {len(sentences)} of {n} distinct "
                                 f"sentences beside {len(exclude)} excluded ones")
            seen.add(sentence)
            sentences.append(sentence)
        return sentences


@functools.lru_cache(maxsize=8)
def load_grammar(path: str | Path = DEMO_GRAMMAR_FILE) -> Grammar:
    """The grammar at ``path`` (default: the shipped demo grammar), read once per process."""
    return Grammar.load(path)


def heldout_sentences(grammar: Grammar, n: int = NUM_HELDOUT) -> list[str]:
    """The grammar's held-out sentences: the first ``n`` distinct draws of the :data:`HELDOUT_SEED` stream."""
    return grammar.distinct_sentences(n, random.Random(HELDOUT_SEED))


def corpus_sentences(grammar: Grammar, n: int, seed: int) -> list[str]:
    """``n`` distinct sentences for a corpus, in an order fixed by ``seed``, none of them held out.

    A bigger corpus extends a smaller one of the same seed, as for the open-English pool.
    """
    return grammar.distinct_sentences(n, random.Random(seed), exclude=frozenset(heldout_sentences(grammar)))


def as_written(sentence: str) -> str:
    """How a corpus writes a grammar sentence: capitalised, with a final period (the engines read it as a statement)."""
    return sentence[:1].upper() + sentence[1:] + "."


def write_heldout_file(path: str | Path = DEMO_HELDOUT_FILE, grammar_path: str | Path = DEMO_GRAMMAR_FILE) -> None:
    """Rewrites the shipped held-out list (maintenance: after the demo grammar changes)."""
    sentences = heldout_sentences(Grammar.load(grammar_path))
    Path(path).write_text("\n".join(as_written(sentence) for sentence in sentences) + "\n", encoding="ascii")


if __name__ == "__main__":
    write_heldout_file()
    print(f"wrote {DEMO_HELDOUT_FILE}")
