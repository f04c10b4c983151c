"""Who judges rollouts and with what settings: the run's settings (:class:`Settings`), the judges the rewards name,
each built once (:class:`Judges`), and one judging pass over rollouts that reads each thing several rewards need
once (:class:`Judging`).

Audio is decoded exactly as synthesis decodes it (:meth:`e2e_tts.synth.Synthesizer.decode_audio`): the run's
decoder, solver and vocoder, Griffin-Lim when the record of trained modules says the vocoder never trained.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from e2e_tts.audio import AudioConfig
from e2e_tts.models.masks import pad_rows
from e2e_tts.models.reward import RewardOutput
from e2e_tts.rewards.rollouts import Rollouts
from e2e_tts.scoring.normalize import wer_language_of
from e2e_tts.scoring.similarity import SpeakerSimilarity, build_similarity
from e2e_tts.scoring.verifiers import Verifier
from e2e_tts.synth import Synthesizer
from e2e_tts.synthesis_config import SynthesisConfig
from e2e_tts.system import TTSSystem, trained_modules
from e2e_tts.text import TextConfig

logger = logging.getLogger(__name__)


@dataclass
class Settings:
    """The settings of a run that sampling and judging speech follow.

    Attributes:
        synthesis: how the run's export will be synthesised: the LLM's layout (``llm_prompt``) and length bounds of
            the rollouts, the decoding of their audio, the WER language and the dropout bound.
        audio: the mel analysis and sample rate; text: the text language.
        trained: which modules were trained (:func:`e2e_tts.system.trained_modules`; None = unknown), to choose
            the vocoder as synthesis does.
    """

    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    trained: Optional[dict[str, Optional[bool]]] = None

    @classmethod
    def of(cls, config: Any) -> "Settings":
        """The settings of an experiment config (:class:`e2e_tts.config.ExperimentConfig`); None gives defaults."""
        if config is None:
            return cls()
        return cls(OmegaConf.to_object(config.synthesis), OmegaConf.to_object(config.audio),
                   OmegaConf.to_object(config.text), trained_modules(config))

    @property
    def wer_language(self) -> str:
        """The Seed-TTS-Eval scoring language (``en``: words, ``zh``: characters)."""
        return self.synthesis.wer_language or wer_language_of(self.text.language)


class Judges:
    """The system's frozen modules, the synthesizer that decodes audio and the recognisers and similarity judges
    the rewards name, each built on first use (after DeepSpeed has moved the system to its device).

    Args:
        system: the system being trained (its reward model, flow and vocoder are frozen).
        settings: the run's settings.
    """

    def __init__(self, system: TTSSystem, settings: Settings):
        self.system, self.settings = system, settings
        self._synthesizer: Optional[tuple[Synthesizer, SynthesisConfig]] = None
        self._similarity: dict[str, SpeakerSimilarity] = {}

    def _synthesis(self) -> tuple[Synthesizer, SynthesisConfig]:
        if self._synthesizer is None:
            modes = [(module, module.training) for module in self.system.modules()]
            synthesizer = Synthesizer(self.system, self.settings.audio, self.settings.text,
                                      defaults=self.settings.synthesis, trained=self.settings.trained)
            for module, mode in modes:  # the synthesizer puts the system in eval mode: training decides that
                module.training = mode
            decoding, notes = synthesizer.settings()
            for note in notes:
                logger.warning("rewards on audio: %s", note)
            self._synthesizer = synthesizer, decoding
        return self._synthesizer

    @property
    def synthesizer(self) -> Synthesizer:
        """The synthesizer of the system."""
        return self._synthesis()[0]

    @property
    def decoding(self) -> SynthesisConfig:
        """The synthesis settings audio is decoded with, the vocoder chosen by the record (a fallback is logged
        once)."""
        return self._synthesis()[1]

    def decode(self, rollouts: Rollouts) -> list[np.ndarray]:
        """Each rollout's waveform ``(N_b,)`` at the audio rate, decoded after its prompt, with a generator seeded
        from torch's global RNG (so that a resumed run draws the same noise)."""
        synthesizer = self.synthesizer
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        generator = torch.Generator(device=synthesizer.device).manual_seed(seed)
        with torch.no_grad():
            wavs, _ = synthesizer.decode_audio(rollouts.speech, rollouts.prompts, self.decoding, generator)
        return wavs

    def verifier(self, spec: str) -> Verifier:
        """The verifier of a spec (:func:`e2e_tts.scoring.verifiers.build_verifier`), built once."""
        return self.synthesizer.verifier_for(dataclasses.replace(self.decoding, verifier=spec))

    def similarity(self, spec: str) -> SpeakerSimilarity:
        """The similarity judge of a spec (:func:`e2e_tts.scoring.similarity.build_similarity`), built once."""
        if spec not in self._similarity:
            self._similarity[spec] = build_similarity(spec, device=str(self.system.codebook().device))
        return self._similarity[spec]


class Judging:
    """One pass of the rewards over rollouts: the padded rows, the reward model's reading of the tokens and the
    decoded audio are computed when a reward first asks for them, and once.

    Args:
        rollouts: what is judged.
        judges: who judges.
        reward_forward: whether a reward reads the reward model's full forward (text log-probability, task heads):
            its encoding then serves the rewards that only need the encoder.
    """

    def __init__(self, rollouts: Rollouts, judges: Judges, reward_forward: bool):
        self.rollouts, self.judges, self.reward_forward = rollouts, judges, reward_forward
        self.system = judges.system
        self.device = self.system.codebook().device

    @functools.cached_property
    def speech(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech ids ``(N, T)`` (0 at padding) and their mask."""
        return pad_rows(self.rollouts.speech, self.device)

    @functools.cached_property
    def text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Text ids ``(N, L)`` (0 at padding) and their mask."""
        return pad_rows(self.rollouts.text_ids, self.device)

    @functools.cached_property
    def speaker_labels(self) -> torch.Tensor:
        """``(N,)`` each row's speaker label, -1 for a speaker the reward model never learnt."""
        return self.system.speaker_ids(self.rollouts.speakers, self.device)

    @functools.cached_property
    def reward_output(self) -> RewardOutput:
        """The reward model's forward on the rows with their texts (and speaker labels when it has the head)."""
        speech, speech_mask = self.speech
        text, text_mask = self.text
        speaker = self.speaker_labels if self.system.reward.num_speakers else None
        return self.system.reward(speech, speech_mask, self.system.codebook(), text, text_mask, speaker=speaker)

    @functools.cached_property
    def encoded(self) -> torch.Tensor:
        """``(N, T, encoder_dim)`` the reward model's encoding of the rows (the full forward's when it runs)."""
        if self.reward_forward:
            return self.reward_output.encoded
        speech, speech_mask = self.speech
        return self.system.reward.encode(speech, speech_mask, self.system.codebook())

    @functools.cached_property
    def audio(self) -> list[np.ndarray]:
        """Each row's decoded waveform ``(N_b,)`` at the audio rate."""
        return self.judges.decode(self.rollouts)
