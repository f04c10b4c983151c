"""The settings of a synthesis run: sampling, decoding and best-of-N verification (:class:`SynthesisConfig`), its
presets, and the choice of vocoder by what an export records of its training (:func:`choose_vocoder`).

Apart from the synthesizer so that a config file can hold them (``synthesis:`` of e2e_tts.config) without loading
the inference pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from e2e_tts.models.flow import SCHEDULES
from e2e_tts.models.llm import MAX_LEN_RATIO, MIN_LEN_RATIO
from e2e_tts.scoring.normalize import LANGUAGES as WER_LANGUAGES

VOCODERS = ("model", "griffin-lim")
DECODERS = ("flow", "prior")  # the flow's ODE, or its prior head's regression mel alone (no ODE)
VOCODER_HOWTO = ("for a trained vocoder run `bash recipes/tiny/run.sh --vocoder-steps N` (its stage 5), or train "
                 "`-c stages/vocoder.yaml stage.init_from=<this export>`")


@dataclass
class SynthesisConfig:
    """Sampling, decoding and verification settings of one synthesis run.

    Attributes:
        temperature, top_k, top_p, repetition_aware: LLM sampling (see
            :func:`e2e_tts.models.sampling.sample_next_token`; CosyVoice 2 uses 1.0 / 25 / 0.8 / RAS).
        min_len_ratio, max_len_ratio: speech tokens per text id: EOS is masked below the minimum, a row stops at
            the maximum (see :meth:`e2e_tts.models.llm.SpeechLLM.generate`).
        llm_prompt: the LLM continues the prompt (its text before the text, its speech tokens before the new
            ones), as in zero-shot synthesis; False: the LLM reads the text alone and only the flow hears the prompt
            (CosyVoice's cross-lingual mode), for a model that reads its text better than it continues a prompt.
        decoder: ``"flow"`` (the flow's ODE from the prior) or ``"prior"`` (the flow's prior head: the mean mel
            of the tokens, no ODE and no prompt mel; deterministic, and where the flow is undertrained the better
            reading of the tokens).
        solver, nfe, schedule, sway_coef, cfg_strength: flow ODE sampling; None = the flow config's value.
        vocoder: ``"model"`` (the trained vocoder), ``"griffin-lim"`` (training-free phase reconstruction) or
            None: the model's when the export's vocoder was trained, else Griffin-Lim (see :func:`choose_vocoder`).
        griffin_lim_iters: Griffin-Lim iterations.
        seed: seeds the generator of every random draw of a call.
        batch_size: rows per model call; with best-of-N every text takes ``num_candidates`` rows.
        num_candidates: N of best-of-N (1 = plain sampling).
        verifier: spec of :func:`e2e_tts.scoring.verifiers.build_verifier`: ``rm-tokens`` (this system's reward
            model reading the generated tokens) or an ASR spec (``pocketsphinx``, ``whisper:<dir>``,
            ``paraformer:<dir>``, ``rm-audio:<export dir>``); None = no verification (needs ``num_candidates == 1``).
        wer_language: ``"en"`` (word level) or ``"zh"`` (character level) Seed-TTS-Eval scoring; None = from the
            system's text language.
        min_seconds_per_char: a candidate shorter than this per spoken character is a dropout (the lower bound
            of :class:`e2e_tts.eval.failures.FailureConfig`: about half the fastest measured speaking rate).
    """

    temperature: float = 1.0
    top_k: int = 25
    top_p: float = 0.8
    repetition_aware: bool = True
    min_len_ratio: float = MIN_LEN_RATIO
    max_len_ratio: float = MAX_LEN_RATIO
    llm_prompt: bool = True
    decoder: str = "flow"
    solver: Optional[str] = None
    nfe: Optional[int] = None
    schedule: Optional[str] = None
    sway_coef: Optional[float] = None
    cfg_strength: Optional[float] = None
    vocoder: Optional[str] = None
    griffin_lim_iters: int = 32
    seed: int = 0
    batch_size: int = 8
    num_candidates: int = 1
    verifier: Optional[str] = None
    wer_language: Optional[str] = None
    min_seconds_per_char: float = 0.025

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"SynthesisConfig needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1, got "
                             f"{self.temperature}, {self.top_k}, {self.top_p}")
        if not 0 <= self.min_len_ratio <= self.max_len_ratio:
            raise ValueError(f"SynthesisConfig needs 0 <= min_len_ratio <= max_len_ratio, got "
                             f"{self.min_len_ratio} and {self.max_len_ratio}")
        if self.decoder not in DECODERS:
            raise ValueError(f"SynthesisConfig.decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.vocoder is not None and self.vocoder not in VOCODERS:
            raise ValueError(f"SynthesisConfig.vocoder must be one of {VOCODERS}, got {self.vocoder!r}")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"SynthesisConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("batch_size", "num_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"SynthesisConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.nfe is not None and self.nfe < 1:
            raise ValueError(f"SynthesisConfig.nfe must be >= 1, got {self.nfe}")
        if self.griffin_lim_iters < 0 or self.min_seconds_per_char < 0:
            raise ValueError("SynthesisConfig.griffin_lim_iters and min_seconds_per_char must be >= 0")
        if self.wer_language is not None and self.wer_language not in WER_LANGUAGES:
            raise ValueError(f"SynthesisConfig.wer_language must be one of {WER_LANGUAGES}, got {self.wer_language!r}")


def choose_vocoder(config: SynthesisConfig, trained: Optional[bool], record: str
                   ) -> tuple[SynthesisConfig, Optional[str]]:
    """Sets ``config.vocoder`` by what the export records of its vocoder, and says why when it matters.

    Unset: the model's when trained (or unknown, noted), else Griffin-Lim (noted). ``"model"`` when the record
    says never trained: refused, since it decodes near-silent noise.

    Args:
        config: the settings.
        trained: whether the export's vocoder was trained (None = unknown: no record, or an older one).
        record: the record's path, named in notes and errors.
    Returns:
        the settings with a vocoder, and a note or None.
    Raises:
        ValueError: ``"model"`` asked for on a never-trained vocoder, saying how to get one.
    """
    if config.vocoder == "griffin-lim":
        return config, None
    if trained is False:
        if config.vocoder == "model":
            raise ValueError(f"vocoder 'model' asked for, but {record} says the export's vocoder was never "
                             f"trained: it would decode noise. Use --vocoder griffin-lim, or {VOCODER_HOWTO}")
        return dataclasses.replace(config, vocoder="griffin-lim"), (
            f"the export's vocoder was never trained ({record}): decoding with Griffin-Lim; {VOCODER_HOWTO}")
    note = None if trained else (f"{record} is missing or does not know the vocoder (an older export): "
                                 f"decoding with its vocoder, which may never have been trained; "
                                 f"--vocoder griffin-lim if the audio is noise")
    return dataclasses.replace(config, vocoder="model"), note
