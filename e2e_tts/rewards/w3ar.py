"""W3AR's word-level reward (Wang and Sun, AAAI 2026, arXiv 2511.17555; ../shared/METHODS.md section 4): how cleanly
and how monotonically a recogniser, teacher-forced on the text, reads each word of a rollout from its speech.

The recogniser is the frozen reward model's attention decoder (the paper's is Whisper's). Its cross-attention map
``A (L, T)``, text ids by speech frames, is :attr:`~e2e_tts.models.reward.RewardOutput.cross_attention` averaged over
the heads (it is already averaged over the decoder layers): row ``i`` is the attention of the step that predicts
text id ``i``, and a speech frame is one speech token, so the map needs no time conversion. Why the mean of all
layers and heads: the paper does not say which it uses (Whisper's alignment heads would be the analogue), this
decoder has no heads known to align, and on the tiny recipe's trained reward model, reading 8 rollouts of held-out
texts, the all-layer mean had the most monotone peaks (64 % of consecutive text ids' peaks non-decreasing, against
58-62 % for any single layer's heads, purity 0.31 against 0.29-0.39).

Per text id ``t``, with peak frame ``j*_t = argmax_j A[t, j]``:

* purity ``P_t = sum_{|j - j*_t| <= W / 2} A[t, j]`` (the paper's window, ``W = 6``: 7 frames, the peak's and 3 each
  side). A clear articulation draws the attention to a few frames.

Per word ``w`` (:func:`e2e_tts.text.word_index`: the words the text front end separates; for phones, espeak-ng's):

* purity ``P_w``: the mean of its text ids' ``P_t``, so each sound is judged at its own peak (the paper's text ids are
  Whisper's word pieces; ours are sounds);
* its attention ``a_w (T,)``: the mean of its text ids' rows, and its peak ``j*_w = argmax a_w``;
* monotonicity ``M_w = tanh(beta (j*_w - j*_{w-1}))``, ``beta = 0.1``: a stall scores 0 and a jump back below 0 (the
  paper's stutters and skips). The first word has no predecessor: ``M_0 = 0``. Its shift from frame 0 would reward
  a leading silence, and the paper's predecessor (Whisper's prompt tokens) has no counterpart here;
* reward ``R_w = lambda_P P_w + lambda_M M_w`` with ``lambda_P = lambda_M = 0.5``, in [-0.5, 1].

The ``w3ar`` reward of a rollout (e2e_tts.rewards.components) is its words' mean ``R_w``; the ``w3ar`` stage
(e2e_tts.objectives.w3ar) keeps them per word and gives each speech token the advantage of the word that attends to
it most (:func:`token_owners`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from e2e_tts.rewards.spec import WordRewardConfig
from e2e_tts.text import normalize_text, word_index

if TYPE_CHECKING:
    from e2e_tts.rewards.judges import Judging


@dataclass
class WordScores:
    """One rollout's words, ``W`` of them, read from ``T`` speech frames.

    Attributes:
        purity, monotonicity, reward: ``(W,)`` ``P_w``, ``M_w`` and ``R_w``.
        peaks: ``(W,)`` long, each word's peak frame ``j*_w``.
        attention: ``(W, T)`` each word's attention ``a_w`` (its text ids' rows averaged; each sums to 1).
    """

    purity: torch.Tensor
    monotonicity: torch.Tensor
    reward: torch.Tensor
    peaks: torch.Tensor
    attention: torch.Tensor


def attention_purity(attention: torch.Tensor, window: int) -> torch.Tensor:
    """``attention (L, T)`` -> ``(L,)``: each row's mass within ``window // 2`` frames of its peak."""
    peaks = attention.argmax(-1)
    frames = torch.arange(attention.shape[-1], device=attention.device)
    inside = (frames[None, :] - peaks[:, None]).abs() <= window // 2
    return (attention * inside).sum(-1)


def score_words(attention: torch.Tensor, words: Sequence[int], config: WordRewardConfig) -> WordScores:
    """Purity, monotonicity and reward of each word (see the module docstring).

    Args:
        attention: ``(L, T)`` the attention of each text id over the speech frames (rows sum to 1).
        words: ``L`` word indices, one per text id (0, 1, ... in order; -1 for an id of no word, which is left out).
        config: the reward's constants.
    Returns:
        the :class:`WordScores` of the ``W = max(words) + 1`` words.
    """
    index = torch.as_tensor(list(words), dtype=torch.long, device=attention.device)
    if index.shape[0] != attention.shape[0]:
        raise ValueError(f"{index.shape[0]} word indices for {attention.shape[0]} text ids")
    keep = index >= 0
    if not bool(keep.any()):
        raise ValueError("a text of no word")
    index, attention = index[keep], attention[keep].float()
    count = int(index.max()) + 1
    sizes = torch.zeros(count, device=attention.device).index_add_(0, index, torch.ones_like(index, dtype=torch.float))
    if bool((sizes == 0).any()):
        raise ValueError(f"word indices must be 0, 1, ... without gaps, got {sorted(set(index.tolist()))}")
    purity = torch.zeros(count, device=attention.device).index_add_(0, index, attention_purity(attention,
                                                                                               config.window)) / sizes
    pooled = torch.zeros(count, attention.shape[1], device=attention.device).index_add_(0, index, attention)
    pooled = pooled / sizes[:, None]
    peaks = pooled.argmax(-1)
    monotonicity = torch.zeros(count, device=attention.device)
    monotonicity[1:] = torch.tanh(config.beta * (peaks[1:] - peaks[:-1]).float())
    reward = config.purity_weight * purity + config.monotonicity_weight * monotonicity
    return WordScores(purity=purity, monotonicity=monotonicity, reward=reward, peaks=peaks, attention=pooled)


def token_owners(attention: torch.Tensor) -> torch.Tensor:
    """``attention (W, T)`` of the words -> ``(T,)`` long: the word that attends to each frame most, or -1 where no
    word attends to it more than a word that read all ``T`` frames alike would (``1 / T``): a silence or babble that
    no word reads."""
    most, owner = attention.max(0)
    return torch.where(most > 1.0 / attention.shape[1], owner, torch.full_like(owner, -1))


def rollout_word_scores(judging: "Judging", config: WordRewardConfig) -> list[WordScores]:
    """The :class:`WordScores` of each rollout of a judging pass, from the reward model's forward on the rollouts and
    their text ids (:attr:`~e2e_tts.rewards.judges.Judging.reward_output`).

    Raises:
        ValueError: when the text tokenizer keeps no word boundaries, or a rollout's text ids are not its text's
            (words could not be found in them).
    """
    rollouts, tokenizer = judging.rollouts, judging.system.text_tokenizer
    language = judging.judges.settings.text.language
    attention = judging.reward_output.cross_attention.float().mean(1)  # (N, L + 1, T): heads averaged
    _, speech_mask = judging.speech
    words_of: dict[str, list[int]] = {}  # a text's K rollouts share its words
    scores = []
    for row, (text, text_ids) in enumerate(zip(rollouts.texts, rollouts.text_ids)):
        if text not in words_of:
            normalized = normalize_text(text, language)
            if tokenizer.encode(normalized) != text_ids.tolist():
                raise ValueError(f"the text ids of {text!r} are not its {language} text's: its words cannot be found")
            words_of[text] = word_index(tokenizer, normalized)
        frames = int(speech_mask[row].sum())
        scores.append(score_words(attention[row, :len(text_ids), :frames], words_of[text], config))
    return scores
