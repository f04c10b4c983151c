"""The LLM token-id contract: one vocabulary for special, text and speech ids.

Layout (ids increase left to right)::

    [ PAD SOS EOS TASK | text ids (text_vocab_size) | speech ids (speech_vocab_size) ]
      0   1   2   3      4 ...                          speech_offset ...

A training sequence is ``SOS text... TASK speech... EOS``. Speech ids are offset above the text
vocabulary so that a codec id can never collide with a text id (the LLaSA #20 trap). Every
producer and consumer of LLM ids goes through :class:`TokenLayout`; ranges are validated, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_ID = 0
SOS_ID = 1
EOS_ID = 2  # ends the speech part; the only stop token
TASK_ID = 3  # separates the text prompt from the speech tokens
NUM_SPECIAL = 4


@dataclass(frozen=True)
class TokenLayout:
    """Maps text ids and speech ids into the LLM's single vocabulary.

    Args:
        text_vocab_size: number of ids of the text tokenizer.
        speech_vocab_size: number of speech tokenizer codes (FSQ: prod(levels)).
    """

    text_vocab_size: int
    speech_vocab_size: int

    def __post_init__(self) -> None:
        if self.text_vocab_size <= 0 or self.speech_vocab_size <= 0:
            raise ValueError(f"vocab sizes must be positive, got text={self.text_vocab_size} "
                             f"speech={self.speech_vocab_size}")

    @property
    def text_offset(self) -> int:
        return NUM_SPECIAL

    @property
    def speech_offset(self) -> int:
        return NUM_SPECIAL + self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.speech_offset + self.speech_vocab_size

    def text_to_llm(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Text tokenizer ids ``(...)`` -> LLM ids ``(...)``."""
        _check_range(text_ids, 0, self.text_vocab_size, "text id")
        return text_ids + self.text_offset

    def speech_to_llm(self, speech_ids: torch.Tensor) -> torch.Tensor:
        """Speech tokenizer ids ``(...)`` -> LLM ids ``(...)``."""
        _check_range(speech_ids, 0, self.speech_vocab_size, "speech id")
        return speech_ids + self.speech_offset


def _check_range(ids: torch.Tensor, low: int, high: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < low or int(ids.max()) >= high):
        raise ValueError(f"{what} out of range [{low}, {high}): min={int(ids.min())} max={int(ids.max())}")
