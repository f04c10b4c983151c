"""The reward components (one registry, :data:`REGISTRY`) and a stage's rewards composed into one reward per rollout
(:class:`RewardSet`).

Each component gives a raw score per rollout; its shaping (the spec's, else the kind's default) maps the score to
[0, 1]; the rollout's reward is the weighted sum of the shaped scores, times every gate::

    reward = prod_gates gate(rollout) * sum_i weight_i * shape_i(raw_i(rollout))

Kinds (raw score; default shaping):

========  ==========================================================================================  ==============
cer       id error rate of the reward model's greedy CTC read-back of the tokens against the text ids  1 - rate
asr       the reward model's mean log P(text | tokens) per text id (and EOS)                           none
speaker   the reward model's probability of the speaker the rollout should sound like                  none
quality   the reward model's expected quality (MOS) bin, scaled to [0, 1]: reference-free             none
wer       Seed-TTS-Eval error rate (WER; CER for zh) of a recogniser's transcript of the decoded       1 - rate
          audio (``backend``: a verifier spec, default pocketsphinx; ``rm-tokens`` reads the tokens
          instead); a dropout (silent, or too short for its text) counts as 1
sim       cosine of the speaker embeddings of the decoded audio and its prompt's audio (``backend``:   none
          a similarity spec, default resemblyzer); 0 without a prompt or for silent audio
w3ar      W3AR's word reward (0.5 purity + 0.5 monotonicity of the reward model's cross-attention      none
          over the tokens, teacher-forced on the text; e2e_tts.rewards.w3ar), mean over the words
length    gate: 1 when the rollout has ``min_ratio``..``max_ratio`` speech tokens per text id, else 0
========  ==========================================================================================  ==============

The kinds on tokens cost one reward-model pass for all of them; the kinds on audio decode every rollout once
(flow and vocoder, as synthesis does), whatever number of them reads it. ``w3ar`` here is one score per rollout;
the ``w3ar`` stage (e2e_tts.objectives.w3ar) keeps it per word and turns it into advantages per speech token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from e2e_tts.audio import is_silent
from e2e_tts.best_of_n import score_candidates
from e2e_tts.models.reward import expected_bin
from e2e_tts.rewards.judges import Judges, Judging
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.rewards.spec import KINDS, RewardSpec, WordRewardConfig, check_specs, kind_of, ratios_of
from e2e_tts.rewards.w3ar import rollout_word_scores
from e2e_tts.scoring.similarity import cosine
from e2e_tts.scoring.verifiers import TOKEN_VERIFIER
from e2e_tts.scoring.wer import id_error_rates, score_utterance
from e2e_tts.system import TTSSystem
from e2e_tts.text import normalize_text, word_index

class Component(ABC):
    """The scoring of a kind of reward (see the module docstring; what a config may say of it: its
    :class:`~e2e_tts.rewards.spec.Kind` in :data:`~e2e_tts.rewards.spec.KINDS`).

    Class attributes:
        kind: its name in the registry.
        reads_reward_forward: it reads the reward model's full forward (texts and task heads), not its encoder alone.
    """

    kind = ""
    reads_reward_forward = False

    def __init__(self, name: str, spec: RewardSpec, judges: Judges):
        declared = KINDS[self.kind]
        self.name, self.spec, self.judges, self.gate = name, spec, judges, declared.gate
        self.shaping = spec.shaping or declared.shaping
        self.backend = spec.backend or declared.backend

    def missing(self, system: TTSSystem) -> Optional[str]:
        """What the system lacks for this reward, or None."""
        return None

    @abstractmethod
    def score(self, judging: Judging) -> torch.Tensor:
        """The raw score ``(N,)`` of each rollout."""

    def shape(self, raw: torch.Tensor) -> torch.Tensor:
        return raw if self.shaping is None else self.shaping(raw)


class ReadBackErrorRate(Component):
    kind = "cer"

    def score(self, judging: Judging) -> torch.Tensor:
        _, speech_mask = judging.speech
        readings = judging.system.reward.greedy_ctc(judging.encoded, speech_mask)
        rates = id_error_rates([row.tolist() for row in judging.rollouts.text_ids], readings)["per"]
        return torch.tensor(rates, device=judging.device) / 100.0


class TextLogProbability(Component):
    kind = "asr"
    reads_reward_forward = True

    def score(self, judging: Judging) -> torch.Tensor:
        _, text_mask = judging.text
        return judging.reward_output.text_log_prob.float() / (text_mask.sum(1) + 1)  # the text ids and EOS


class SpeakerProbability(Component):
    kind = "speaker"
    reads_reward_forward = True

    def missing(self, system: TTSSystem) -> Optional[str]:
        return None if system.reward.num_speakers else "the reward model's speaker head (no training speakers)"

    def score(self, judging: Judging) -> torch.Tensor:
        known = judging.speaker_labels >= 0
        return judging.reward_output.label_log_probs["speaker"].float().exp() * known


class ExpectedQuality(Component):
    kind = "quality"
    reads_reward_forward = True

    def missing(self, system: TTSSystem) -> Optional[str]:
        return None if "quality" in system.reward.task_heads else "the reward model's quality head"

    def score(self, judging: Judging) -> torch.Tensor:
        return expected_bin(judging.reward_output.task_logits["quality"])


class RoundTripErrorRate(Component):
    kind = "wer"

    def score(self, judging: Judging) -> torch.Tensor:
        settings, rollouts = self.judges.settings, judging.rollouts
        verifier, language = self.judges.verifier(self.backend), settings.wer_language
        normalized = [normalize_text(text, settings.text.language) for text in rollouts.texts]
        if self.backend == TOKEN_VERIFIER:  # the reward model reads the tokens: no audio to decode
            transcripts = verifier.transcribe([], settings.audio.sample_rate, rollouts.speech)
            rates = [score_utterance(f"rollout {n}", verifier.reference(text), transcript, language).wer
                     for n, (text, transcript) in enumerate(zip(normalized, transcripts))]
        else:
            rates, wavs, group = [], judging.audio, rollouts.group
            for start in range(0, len(rollouts), group):
                rows = slice(start, start + group)
                for candidate in score_candidates(
                        rollouts.texts[start], normalized[start], rollouts.speech[rows], wavs[rows],
                        settings.audio.sample_rate, verifier, language, settings.synthesis.min_seconds_per_char,
                        settings.audio.silence_threshold_db):
                    rates.append(1.0 if candidate.dropout else candidate.wer)
        return torch.tensor(rates, device=judging.device)


class PromptSimilarity(Component):
    kind = "sim"

    def score(self, judging: Judging) -> torch.Tensor:
        rollouts, judge = judging.rollouts, self.judges.similarity(self.backend)
        rate, threshold = self.judges.settings.audio.sample_rate, self.judges.settings.audio.silence_threshold_db
        prompts: dict[int, np.ndarray] = {}  # one embedding per prompt, which its K rollouts share
        scores = []
        for prompt, audio, wav in zip(rollouts.prompts, rollouts.prompt_audio, judging.audio):
            if prompt is None or is_silent(wav, threshold):
                scores.append(0.0)
                continue
            if audio is None:
                raise ValueError("the sim reward compares each rollout with its prompt's audio, which the batch does "
                                 "not carry: set data.return_wav: true")
            if id(audio) not in prompts:
                prompts[id(audio)] = judge.embed(audio, rate)
            scores.append(cosine(judge.embed(wav, rate), prompts[id(audio)]))
        return torch.tensor(scores, device=judging.device)


class WordAlignment(Component):
    kind = "w3ar"
    reads_reward_forward = True

    def missing(self, system: TTSSystem) -> Optional[str]:
        try:
            word_index(system.text_tokenizer, "a b")
        except ValueError as err:
            return f"word boundaries in its text ids ({err})"
        return None

    def score(self, judging: Judging) -> torch.Tensor:
        return torch.stack([words.reward.mean() for words in rollout_word_scores(judging, WordRewardConfig())])


class LengthGate(Component):
    kind = "length"

    def score(self, judging: Judging) -> torch.Tensor:
        low, high = ratios_of(self.spec, KINDS[self.kind])
        ratios = [len(speech) / len(text) for speech, text in zip(judging.rollouts.speech, judging.rollouts.text_ids)]
        return torch.tensor([float(low <= ratio <= high) for ratio in ratios], device=judging.device)


REGISTRY: dict[str, type[Component]] = {kind.kind: kind for kind in (
    ReadBackErrorRate, TextLogProbability, SpeakerProbability, ExpectedQuality, RoundTripErrorRate, PromptSimilarity,
    WordAlignment, LengthGate)}


@dataclass
class RewardScores:
    """The rewards of N rollouts.

    Attributes:
        total: ``(N,)`` the composed reward.
        shaped: reward name -> ``(N,)`` its shaped score (a gate's 0 or 1).
        raw: reward name -> ``(N,)`` its raw score.
    """

    total: torch.Tensor
    shaped: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]


class RewardSet:
    """The rewards a stage names, composed (see the module docstring); those of weight 0 are off.

    Args:
        specs: reward name -> spec.
        judges: the system and the judges the rewards read.
    Raises:
        ValueError: when no reward (other than gates) is on, or the system lacks what one needs.
    """

    def __init__(self, specs: Mapping[str, RewardSpec], judges: Judges):
        check_specs(specs)
        self.judges = judges
        self.components = [REGISTRY[kind_of(name, spec)](name, spec, judges)
                           for name, spec in specs.items() if spec.weight != 0]
        if all(component.gate for component in self.components):
            raise ValueError(f"no reward with a non-zero weight (gates alone reward nothing); known kinds: "
                             f"{', '.join(name for name, kind in KINDS.items() if not kind.gate)}")
        for component in self.components:
            missing = component.missing(judges.system)
            if missing:
                raise ValueError(f"the {component.name} reward needs {missing}, which this system has not")
        self.reads_reward_forward = any(component.reads_reward_forward for component in self.components)

    @torch.no_grad()
    def __call__(self, rollouts: Rollouts) -> RewardScores:
        """Scores rollouts; what several rewards read is read once."""
        judging = Judging(rollouts, self.judges, self.reads_reward_forward)
        raw = {c.name: c.score(judging).float() for c in self.components}
        shaped = {c.name: c.shape(raw[c.name]) for c in self.components}
        total = sum(c.spec.weight * shaped[c.name] for c in self.components if not c.gate)
        for component in self.components:
            if component.gate:
                total = total * shaped[component.name]
        return RewardScores(total=total, shaped=shaped, raw=raw)
