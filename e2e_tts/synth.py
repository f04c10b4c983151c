"""Inference: text (+ a zero-shot voice prompt) -> speech tokens -> mel -> waveform, with best-of-N verification.

One row of a batch goes through the modules of a :class:`~e2e_tts.system.TTSSystem` like this::

    text --normalize_text--> text ids --LLM.generate--> speech ids --flow.sample--> mel --vocoder--> wav
                                        (min/max length ratios, EOS masked      (in-context infilling
                                         in the min window, RAS sampling)         after the prompt mel)

Zero-shot voice cloning (CosyVoice style): the prompt audio is resampled to the model rate, turned into a log-mel
and tokenized; the LLM row becomes ``SOS prompt_text text TASK prompt_speech`` and continues after the prompt
speech; the flow decodes prompt + new tokens with the prompt mel as in-context condition and returns only the new
frames. Without a prompt the model speaks in whatever voice it learned.

Best-of-N (METHODS.md section 5, ANCHORS lesson 14): each text is sampled ``num_candidates`` times; a verifier (an
ASR backend of :mod:`e2e_tts.eval.asr`, or ``"rm"``: the project's reward model reading the generated tokens)
transcribes every candidate and the kept one has the lowest Seed-TTS-Eval WER among the candidates that are not
dropouts (silent, or too short for the text); ties go to the earlier candidate.

Settings (:meth:`Synthesizer.settings`): :class:`SynthesisConfig` defaults < the export's ``synthesis`` section (the
recipe's decoding settings, recorded in its config.yaml) < what the caller gives. The vocoder left unset is the
trained one, or Griffin-Lim with a note when the export records that its vocoder was never trained; asked for by
name, a never-trained vocoder is an error in the commands.

Randomness comes from one ``torch.Generator`` seeded with ``SynthesisConfig.seed`` per :meth:`Synthesizer.synthesize`
call and handed to every sampler, so a call is reproducible. Rows share the generator in batch order, so a text's
audio also depends on the batch it was sampled in (the batch size, and the texts before it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from e2e_tts.audio import (LOG_FLOOR, AudioConfig, MelSpectrogram, is_silent, load_audio, normalize_peak, resample,
                           write_audio)
from e2e_tts.data.manifest import utterance_id_problem
from e2e_tts.models.flow import SCHEDULES
from e2e_tts.models.llm import MAX_LEN_RATIO, MIN_LEN_RATIO
from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.models.vocoder import griffin_lim
from e2e_tts.system import TRAINED_FILE, TTSSystem, read_trained
from e2e_tts.text import TextConfig, check_text, normalize_text

VOCODERS = ("model", "griffin-lim")
DECODERS = ("flow", "prior")  # the flow's ODE, or its prior head's regression mel alone (no ODE)
TOKEN_VERIFIER = "rm"  # the reward model reading the generated tokens (no audio round trip)
WER_LANGUAGES = ("en", "zh")
RESULTS_FILE = "synthesis.json"
VOCODER_HOWTO = ("for a trained vocoder run `bash recipes/tiny/run.sh --vocoder-steps N` (its stage 5), or train "
                 "`-c stages/vocoder.yaml stage.init_from=<this export>`")


@dataclass
class SynthesisConfig:
    """Sampling, decoding and verification settings of one synthesis run (defaults = the ``tiny`` preset).

    Attributes:
        temperature, top_k, top_p, repetition_aware: LLM sampling (see
            :func:`e2e_tts.models.sampling.sample_next_token`; CosyVoice 2 uses 1.0 / 25 / 0.8 / RAS).
        min_len_ratio, max_len_ratio: speech tokens per text id: EOS is masked below the minimum, a row stops at
            the maximum (see :meth:`e2e_tts.models.llm.SpeechLLM.generate`).
        decoder: ``"flow"`` (the flow's ODE from the prior) or ``"prior"`` (the flow's prior head: the mean mel
            of the tokens, no ODE and no prompt mel; deterministic, and where the flow is undertrained the better
            reading of the tokens).
        solver, nfe, schedule, sway_coef, cfg_strength: flow ODE sampling; None = the flow config's value.
        vocoder: ``"model"`` (the trained vocoder), ``"griffin-lim"`` (training-free phase reconstruction) or
            None: the model's when the export's vocoder was trained, else Griffin-Lim (see
            :meth:`Synthesizer.choose_vocoder`).
        griffin_lim_iters: Griffin-Lim iterations.
        seed: seeds the generator of every random draw of a call.
        batch_size: rows per model call; with best-of-N every text takes ``num_candidates`` rows.
        num_candidates: N of best-of-N (1 = plain sampling).
        verifier: ASR spec for :func:`e2e_tts.eval.asr.build_asr` (``pocketsphinx``, ``whisper:<dir>``,
            ``paraformer:<dir>``, ``rm:<export dir>``) or ``"rm"`` for this system's reward model on the generated
            tokens; None = no verification (needs ``num_candidates == 1``).
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


PRESETS: dict[str, SynthesisConfig] = {
    "tiny": SynthesisConfig(),
    # Same sampling as CosyVoice 2/3; a GPU takes larger batches.
    "paper": SynthesisConfig(batch_size=32),
}


@dataclass
class CandidateScore:
    """How best-of-N judged one candidate.

    Attributes:
        index: candidate number (sampling order).
        num_tokens: generated speech tokens.
        duration: seconds of audio.
        dropout: why it counts as a dropout (``"empty_audio"`` or ``"too_short_for_text"``), or None; judged
            only when there is a verifier.
        transcript: the verifier's transcript (None without a verifier, or for empty audio).
        wer: Seed-TTS-Eval WER of the transcript against the reference (None when not transcribed).
    """

    index: int
    num_tokens: int
    duration: float
    dropout: Optional[str] = None
    transcript: Optional[str] = None
    wer: Optional[float] = None


@dataclass
class SynthesisResult:
    """One synthesised text.

    Attributes:
        text: the input text; normalized_text: what the model was asked to say.
        wav: ``(N,)`` float32 waveform at ``sample_rate``.
        tokens: the kept candidate's generated speech ids ``(T,)`` (prompt tokens excluded).
        duration: seconds of ``wav``.
        timings: seconds of ``llm``, ``flow``, ``vocoder`` and ``verify`` spent on this text (a batch's time is
            shared among its rows in proportion to ``tokens + 1``; all candidates count).
        rtf: real-time factor, total timing / duration (None for empty audio).
        chosen_candidate: index of the kept candidate.
        candidates: every candidate's score, in sampling order.
    """

    text: str
    normalized_text: str
    wav: np.ndarray
    sample_rate: int
    tokens: torch.Tensor
    duration: float
    timings: dict[str, float]
    rtf: Optional[float]
    chosen_candidate: int
    candidates: list[CandidateScore]

    def to_json(self) -> dict[str, Any]:
        """Everything but the waveform, as JSON-serialisable values."""
        return {"text": self.text, "normalized_text": self.normalized_text, "duration": self.duration,
                "num_tokens": int(self.tokens.numel()), "tokens": self.tokens.tolist(), "rtf": self.rtf,
                "timings": self.timings, "chosen_candidate": self.chosen_candidate,
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}


@dataclass
class Prompt:
    """An encoded zero-shot prompt.

    Attributes:
        text_ids: ``(P,)`` text ids of the prompt transcript.
        speech_ids: ``(Q,)`` speech ids of the prompt audio.
        mel: ``(Q * frames_per_token, n_mels)`` log-mel frames covered by those tokens.
    """

    text_ids: torch.Tensor
    speech_ids: torch.Tensor
    mel: torch.Tensor


@dataclass
class _Verifier:
    """Transcribes candidates (``wavs, sample_rate, tokens -> transcripts``); ``reference`` maps a normalised text
    to what a perfect transcript would read (the text itself, or the reward model's text-tokenizer rendering)."""

    transcribe: Callable[[list[np.ndarray], int, list[torch.Tensor]], list[str]]
    reference: Callable[[str], str]


def wer_language_of(text_language: str) -> str:
    """Seed-TTS-Eval scoring language of an espeak-style text language: ``"zh"`` for Chinese, else ``"en"``."""
    return "zh" if text_language.lower().startswith(("zh", "cmn", "yue")) else "en"


def choose_candidate(candidates: Sequence[CandidateScore]) -> int:
    """Index of the best candidate: non-dropouts first, then lowest WER (untranscribed last), then earliest."""
    if not candidates:
        raise ValueError("choose_candidate needs at least one candidate")
    best = min(candidates, key=lambda c: (c.dropout is not None, math.inf if c.wer is None else c.wer, c.index))
    return best.index


def dropout_reason(wav: np.ndarray, sample_rate: int, text: str, language: str, min_seconds_per_char: float,
                   silence_threshold_db: float) -> Optional[str]:
    """Why a candidate cannot be the answer whatever its transcript says, or None.

    Args:
        wav: ``(N,)`` waveform; text: the text it should say; language: Seed-TTS-Eval scoring language.
        min_seconds_per_char: shortest plausible duration per spoken (non-space, non-punctuation) character.
        silence_threshold_db: peak dBFS below which the audio is silent.
    Returns:
        ``"empty_audio"`` (no samples, or peak below the silence threshold), ``"too_short_for_text"`` or None.
    """
    from e2e_tts.eval.failures import spoken_characters

    if is_silent(wav, silence_threshold_db):
        return "empty_audio"
    if len(wav) / sample_rate < min_seconds_per_char * spoken_characters(text, language):
        return "too_short_for_text"
    return None


def _elapsed(start: float, device: torch.device) -> float:
    """Seconds since ``start``, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class Synthesizer:
    """Text-to-speech with a trained :class:`TTSSystem`.

    Args:
        system: the modules (put in eval mode here).
        audio_config: the mel analysis and sample rate the system was trained on.
        text_config: text language and acceptance bounds.
        export_dir: where the system was loaded from (reported, and reused by an ``rm:<same dir>`` verifier).
        defaults: the settings a run starts from (the export's ``synthesis`` section; None = ``SynthesisConfig()``).
        trained: which modules were trained (:func:`e2e_tts.system.read_trained`; None = unknown).
    Raises:
        ValueError: when the modules disagree on framing, or the flow needs a speaker embedding (synthesis has
            no speaker encoder).
    """

    def __init__(self, system: TTSSystem, audio_config: AudioConfig, text_config: TextConfig,
                 export_dir: Optional[str | Path] = None, defaults: Optional[SynthesisConfig] = None,
                 trained: Optional[dict[str, Optional[bool]]] = None):
        self.system = system.eval()
        self.defaults, self.trained = defaults or SynthesisConfig(), trained
        self.audio_config, self.text_config = audio_config, text_config
        self.export_dir = None if export_dir is None else Path(export_dir).resolve()
        self.device = next(system.parameters()).device
        system.vocoder.config.check_audio_config(audio_config)
        frames_per_token = system.tokenizer.config.frames_per_token
        if system.flow.config.token_mel_ratio != frames_per_token:
            raise ValueError(f"flow token_mel_ratio {system.flow.config.token_mel_ratio} != tokenizer "
                             f"frames_per_token {frames_per_token}: prompt mel and tokens would not line up")
        if system.flow.config.speaker_embedding_dim is not None:
            raise ValueError("the flow was built with speaker_embedding_dim, but synthesis has no speaker encoder "
                             "to provide one")
        self._mel = MelSpectrogram(audio_config).to(self.device)
        self._verifiers: dict[str, _Verifier] = {}

    @classmethod
    def from_pretrained(cls, export_dir: str | Path, device: str | torch.device = "cpu") -> "Synthesizer":
        """Loads an export directory written by :meth:`TTSSystem.export`, with its recorded decoding settings and
        trained modules."""
        system, config = TTSSystem.from_export(export_dir, map_location=device)
        return cls(system, OmegaConf.to_object(config.audio), OmegaConf.to_object(config.text), export_dir,
                   OmegaConf.to_object(config.synthesis), read_trained(export_dir))

    @property
    def sample_rate(self) -> int:
        return self.audio_config.sample_rate

    @property
    def min_samples(self) -> int:
        """Shortest audio that tokenizes to one speech token (the mel's reflect padding also needs more than
        ``n_fft / 2`` samples)."""
        cfg = self.audio_config
        return max(self.system.tokenizer.config.frames_per_token * cfg.hop_length, cfg.n_fft // 2 + 1)

    # ---- settings ---------------------------------------------------------------------------------------------

    def settings(self, **overrides: Any) -> tuple[SynthesisConfig, list[str]]:
        """A command's settings: the export's (:attr:`defaults`) with every override that is not None on top, the
        vocoder chosen by :meth:`choose_vocoder`.

        Returns:
            the settings and the notes to show the user (a fallback to Griffin-Lim, an export without a record).
        Raises:
            ValueError: for a bad value, or the model vocoder asked for by name when it was never trained.
        """
        config = dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        config, note = self.choose_vocoder(config)
        return config, [note] if note else []

    def choose_vocoder(self, config: SynthesisConfig) -> tuple[SynthesisConfig, Optional[str]]:
        """Sets ``config.vocoder`` by what the export records of its vocoder, and says why when it matters.

        Unset: the model's when trained (or unknown, noted), else Griffin-Lim (noted). ``"model"`` when the record
        says never trained: refused, since it decodes near-silent noise.

        Returns:
            the settings with a vocoder, and a note or None.
        Raises:
            ValueError: ``"model"`` asked for on a never-trained vocoder, saying how to get one.
        """
        if config.vocoder == "griffin-lim":
            return config, None
        trained = None if self.trained is None else self.trained["vocoder"]
        record = TRAINED_FILE if self.export_dir is None else str(self.export_dir / TRAINED_FILE)
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

    # ---- inputs -----------------------------------------------------------------------------------------------

    def log_mel(self, audio: np.ndarray) -> torch.Tensor:
        """The training features of a waveform ``(N,)`` at the model rate: ``(1, T, n_mels)`` on the model's device.

        Peak-normalised first, as the shards store every training utterance (e2e_tts.data.shards): the tokenizer
        and the flow's prompt condition only ever saw that level, and at another one the tokenizer gives other
        ids (about 10 % of flite's raw-level ids agreed with its training-level ids).
        """
        audio = normalize_peak(np.asarray(audio, dtype=np.float32), self.audio_config.peak_level)
        return self._mel(torch.from_numpy(audio).to(self.device))

    def prepare_text(self, text: str, what: str = "text") -> tuple[str, torch.Tensor]:
        """Checks, normalises and tokenizes one text.

        Returns:
            the normalised text and its text ids ``(L,)``.
        Raises:
            ValueError: naming ``what`` and the text when :func:`check_text` rejects it or it has no text id.
        """
        reason = check_text(text, self.text_config)
        if reason is not None:
            raise ValueError(f"{what} {text!r} cannot be synthesised: {reason} (text bounds "
                             f"{self.text_config.min_chars}-{self.text_config.max_chars} characters)")
        normalized = normalize_text(text, self.text_config.language)
        ids = self.system.text_tokenizer.encode(normalized)
        if not ids:
            raise ValueError(f"{what} {text!r} has no text id after normalisation ({normalized!r})")
        return normalized, torch.tensor(ids, dtype=torch.long)

    def encode_prompt(self, wav: str | Path | np.ndarray, text: str, sample_rate: Optional[int] = None) -> Prompt:
        """Encodes a zero-shot prompt: audio -> model rate -> log-mel -> speech ids; transcript -> text ids.

        Args:
            wav: audio file path, or a mono waveform ``(N,)``.
            text: the transcript of the prompt audio.
            sample_rate: rate of an array ``wav`` (None = the model rate); ignored for a path.
        Raises:
            ValueError: for a rejected transcript, unreadable, non-mono, non-finite or silent audio, audio too short
                for one token, or a file whose header declares more than ``audio.max_duration`` (each naming it).
        """
        _, text_ids = self.prepare_text(text, "prompt text")
        what = f"prompt {wav}" if isinstance(wav, (str, Path)) else "prompt audio"
        if isinstance(wav, (str, Path)):
            # no longer than training's longest utterance, judged from the header before anything is decoded
            audio, _ = load_audio(wav, self.sample_rate, self.audio_config.max_duration)
        else:
            audio = np.asarray(wav, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"prompt audio must be mono (N,), got shape {audio.shape}")
            audio = resample(audio, sample_rate or self.sample_rate, self.sample_rate)
        if not np.isfinite(audio).all():
            raise ValueError(f"{what} contains NaN or Inf")
        threshold = self.audio_config.silence_threshold_db
        if is_silent(audio, threshold):  # its tokens and mel would make the model clone silence
            raise ValueError(f"{what} is silent (peak below {threshold} dBFS): a prompt must be speech")
        try:
            speech_ids, mel = self.tokenize_audio(audio)
        except ValueError as err:  # too short for one token
            raise ValueError(f"{what}: {err}") from err
        return Prompt(text_ids=text_ids, speech_ids=speech_ids, mel=mel)

    def tokenize_audio(self, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech ids of one utterance at the model rate: ``(N,)`` -> ids ``(T,)`` (CPU) and the log-mel
        ``(T * frames_per_token, n_mels)`` they cover (on the model's device).

        Raises:
            ValueError: audio shorter than one speech token.
        """
        if len(audio) < self.min_samples:
            raise ValueError(f"audio has {len(audio)} samples at {self.sample_rate} Hz, fewer than one speech "
                             f"token needs ({self.min_samples})")
        with torch.inference_mode():
            mel = self.log_mel(audio)
            ids, _ = self.system.tokenizer.encode(mel, torch.ones(mel.shape[:2], dtype=torch.bool, device=self.device))
        frames = ids.shape[1] * self.system.tokenizer.config.frames_per_token
        return ids[0].cpu(), mel[0, :frames]

    # ---- synthesis --------------------------------------------------------------------------------------------

    def synthesize(self, texts: Sequence[str], prompt_wav: str | Path | np.ndarray | None = None,
                   prompt_text: Optional[str] = None, config: Optional[SynthesisConfig] = None, *,
                   prompt_sample_rate: Optional[int] = None, verifier: Any = None,
                   progress: bool = False) -> list[SynthesisResult]:
        """Synthesises every text (in the prompt's voice when one is given).

        Args:
            texts: raw texts (normalised here).
            prompt_wav: zero-shot prompt audio (path or mono array), or None.
            prompt_text: transcript of ``prompt_wav`` (required with it).
            config: settings (None = the export's, :attr:`defaults`); an unset vocoder is chosen by
                :meth:`choose_vocoder` and its note issued as a warning.
            prompt_sample_rate: rate of an array ``prompt_wav`` (None = the model rate).
            verifier: an ASR backend (anything with ``transcribe(wavs, sample_rate) -> list[str]``); overrides
                ``config.verifier``.
            progress: show a progress bar over texts.
        Returns:
            one :class:`SynthesisResult` per text, in order.
        Raises:
            ValueError: for a rejected text (named), a prompt without transcript or vice versa, or best-of-N
                without a verifier.
        """
        config = config or self.defaults
        if (prompt_wav is None) != (prompt_text is None):
            raise ValueError("zero-shot synthesis needs both prompt_wav and prompt_text (the LLM continues the "
                             "prompt's transcript and speech); give both or neither")
        if config.num_candidates > 1 and verifier is None and config.verifier is None:
            raise ValueError(f"best-of-N with num_candidates={config.num_candidates} needs a verifier "
                             f"(SynthesisConfig.verifier or the verifier argument)")
        prepared = [self.prepare_text(text, f"text {i}") for i, text in enumerate(texts)]
        prompt = None if prompt_wav is None else self.encode_prompt(prompt_wav, prompt_text, prompt_sample_rate)
        check = self._build_verifier(config, verifier)
        if config.vocoder is None:
            config, note = self.choose_vocoder(config)
            if note:
                warnings.warn(note, stacklevel=2)

        generator = torch.Generator(device=self.device).manual_seed(config.seed)
        rows = [(t, c) for t in range(len(texts)) for c in range(config.num_candidates)]
        outputs: list[tuple[torch.Tensor, np.ndarray, dict[str, float]]] = []
        bar = tqdm(total=len(texts), unit="utt", desc="synth", disable=not progress)
        with torch.inference_mode():
            for start in range(0, len(rows), config.batch_size):
                batch = rows[start:start + config.batch_size]
                outputs.extend(self._synthesize_rows([prepared[t][1] for t, _ in batch], prompt, config, generator))
                bar.update(len({t for t, c in batch if c == config.num_candidates - 1}))
        bar.close()

        results = []
        for t, text in enumerate(texts):
            normalized = prepared[t][0]
            candidates = outputs[t * config.num_candidates:(t + 1) * config.num_candidates]
            results.append(self._select(text, normalized, candidates, config, check))
        return results

    def _synthesize_rows(self, text_ids: list[torch.Tensor], prompt: Optional[Prompt], config: SynthesisConfig,
                         generator: torch.Generator) -> list[tuple[torch.Tensor, np.ndarray, dict[str, float]]]:
        """LLM -> flow -> vocoder for one batch of rows; returns (tokens, wav, timings) per row."""
        device, batch = self.device, len(text_ids)
        start = time.perf_counter()
        tokens = self.generate_tokens(text_ids, prompt, config, generator)
        seconds = {"llm": _elapsed(start, device)}

        # A row that stopped at once has nothing to decode: it becomes empty audio (a dropout).
        spoken = [b for b in range(batch) if len(tokens[b])]
        wavs = [np.zeros(0, dtype=np.float32) for _ in range(batch)]
        seconds["flow"] = seconds["vocoder"] = 0.0
        if spoken:
            start = time.perf_counter()
            mel, mel_mask = self._decode_tokens([tokens[b] for b in spoken], prompt, config, generator)
            seconds["flow"] = _elapsed(start, device)
            start = time.perf_counter()
            for b, wav in zip(spoken, self._vocode(mel, mel_mask, config, generator)):
                wavs[b] = wav
            seconds["vocoder"] = _elapsed(start, device)

        weights = np.array([len(row) + 1 for row in tokens], dtype=np.float64)
        shares = weights / weights.sum()
        return [(tokens[b], wavs[b], {stage: float(total * shares[b]) for stage, total in seconds.items()})
                for b in range(batch)]

    def generate_tokens(self, text_ids: list[torch.Tensor], prompt: Optional[Prompt], config: SynthesisConfig,
                        generator: torch.Generator) -> list[torch.Tensor]:
        """The LLM's speech ids ``(T_b,)`` for each row of text ids (after the prompt's, if any), sampled with
        ``config``'s LLM settings."""
        batch = len(text_ids)
        return self.system.llm.generate(
            text_ids, self.system.codebook(),
            prompt_text_ids=None if prompt is None else [prompt.text_ids] * batch,
            prompt_speech_ids=None if prompt is None else [prompt.speech_ids] * batch,
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
            repetition_aware=config.repetition_aware, min_len_ratio=config.min_len_ratio,
            max_len_ratio=config.max_len_ratio, generator=generator)

    def _decode_tokens(self, tokens: list[torch.Tensor], prompt: Optional[Prompt], config: SynthesisConfig,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes generated tokens ``B x (T_b,)`` (after the prompt's, if any) with ``config.decoder`` -> the new
        mel frames ``(B, T, n_mels)`` and their mask ``(B, T)``."""
        device = self.device
        if prompt is not None:
            tokens = [torch.cat([prompt.speech_ids, row]) for row in tokens]
        lengths = torch.tensor([len(row) for row in tokens], device=device)
        speech = pad_sequence([row.to(device) for row in tokens], batch_first=True)
        speech_mask = lengths_to_mask(lengths, speech.shape[1])
        if config.decoder == "prior":
            ratio = self.system.flow.config.token_mel_ratio
            skip = 0 if prompt is None else len(prompt.speech_ids) * ratio
            new_frames = lengths * ratio - skip
            mel = self.system.flow.prior(speech, speech_mask, self.system.codebook())[:, skip:]
            return mel[:, :int(new_frames.max())], lengths_to_mask(new_frames, int(new_frames.max()))
        prompt_mel = None if prompt is None else prompt.mel[None].expand(len(tokens), -1, -1)
        return self.system.flow.sample(speech, speech_mask, self.system.codebook(), prompt_mel, solver=config.solver,
                                       nfe=config.nfe, schedule=config.schedule, sway_coef=config.sway_coef,
                                       cfg_strength=config.cfg_strength, generator=generator)

    def _vocode(self, mel: torch.Tensor, mel_mask: torch.Tensor, config: SynthesisConfig,
                generator: torch.Generator) -> list[np.ndarray]:
        """Mel ``(B, T, n_mels)`` with mask ``(B, T)`` -> B waveforms of ``frames * hop`` samples."""
        hop, frames = self.audio_config.hop_length, mel_mask.sum(1).tolist()
        if config.vocoder == "model":
            wav = self.system.vocoder(mel, mel_mask)
            return [wav[b, :n * hop].float().cpu().numpy() for b, n in enumerate(frames)]
        # griffin_lim draws its initial phase from the global RNG: seed a forked RNG from our generator instead.
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
        min_frames = self.audio_config.n_fft // (2 * hop) + 1  # its reflect padding needs > n_fft / 2 samples
        wavs = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for b, n in enumerate(frames):
                row = mel[b:b + 1, :n]
                if n < min_frames:
                    row = torch.nn.functional.pad(row, (0, 0, 0, min_frames - n), value=math.log(LOG_FLOOR))
                wav = griffin_lim(row, self.audio_config, n_iter=config.griffin_lim_iters)
                wavs.append(wav[0, :n * hop].float().cpu().numpy())
        return wavs

    # ---- best-of-N ----------------------------------------------------------------------------------------------

    def _select(self, text: str, normalized: str, candidates: list[tuple[torch.Tensor, np.ndarray, dict[str, float]]],
                config: SynthesisConfig, check: Optional[_Verifier]) -> SynthesisResult:
        """Scores the candidates of one text (when there is a verifier) and keeps the best."""
        scores = [CandidateScore(index=i, num_tokens=len(tokens), duration=len(wav) / self.sample_rate)
                  for i, (tokens, wav, _) in enumerate(candidates)]
        verify_seconds = 0.0
        if check is not None:
            from e2e_tts.eval.wer import score_utterance

            language = config.wer_language or wer_language_of(self.text_config.language)
            for score, (_, wav, _) in zip(scores, candidates):
                score.dropout = dropout_reason(wav, self.sample_rate, normalized, language,
                                               config.min_seconds_per_char, self.audio_config.silence_threshold_db)
            audible = [i for i, s in enumerate(scores) if s.dropout != "empty_audio"]
            start = time.perf_counter()
            transcripts = check.transcribe([candidates[i][1] for i in audible], self.sample_rate,
                                           [candidates[i][0] for i in audible]) if audible else []
            verify_seconds = _elapsed(start, self.device)
            if len(transcripts) != len(audible):
                raise ValueError(f"the verifier returned {len(transcripts)} transcripts for {len(audible)} waveforms")
            reference = check.reference(normalized)
            for i, transcript in zip(audible, transcripts):
                scores[i].transcript = transcript
                scores[i].wer = score_utterance(f"{text!r} candidate {i}", reference, transcript, language).wer
        chosen = choose_candidate(scores)
        tokens, wav, _ = candidates[chosen]
        timings = {stage: sum(c[2][stage] for c in candidates) for stage in ("llm", "flow", "vocoder")}
        timings["verify"] = verify_seconds
        duration = len(wav) / self.sample_rate
        return SynthesisResult(text=text, normalized_text=normalized, wav=wav, sample_rate=self.sample_rate,
                               tokens=tokens, duration=duration, timings=timings,
                               rtf=sum(timings.values()) / duration if duration > 0 else None,
                               chosen_candidate=chosen, candidates=scores)

    def _build_verifier(self, config: SynthesisConfig, backend: Any) -> Optional[_Verifier]:
        """The verifier of a call: an explicit backend, else ``config.verifier`` (built once per spec)."""
        if backend is not None:
            if not callable(getattr(backend, "transcribe", None)):
                raise TypeError(f"verifier must have transcribe(wavs, sample_rate), got {type(backend).__name__}")
            return _Verifier(lambda wavs, rate, _: backend.transcribe(wavs, rate), _reference_of(backend))
        spec = config.verifier
        if spec is None:
            return None
        if spec not in self._verifiers:
            if spec == TOKEN_VERIFIER:
                self._verifiers[spec] = _Verifier(lambda _, __, tokens: self.transcribe_tokens(tokens),
                                                  self.recognition_reference)
            else:
                from e2e_tts.eval.asr import build_asr, parse_asr_spec

                parsed = parse_asr_spec(spec)
                system = None
                if parsed.kind == "rm":
                    same = self.export_dir is not None and Path(parsed.path).resolve() == self.export_dir
                    system = self if same else Synthesizer.from_pretrained(parsed.path, self.device)
                asr = build_asr(spec, device=str(self.device), system=system)
                self._verifiers[spec] = _Verifier(lambda wavs, rate, _: asr.transcribe(wavs, rate), _reference_of(asr))
        return self._verifiers[spec]

    # ---- recognition with the reward model -----------------------------------------------------------------------

    def recognition_reference(self, normalized_text: str) -> str:
        """What the reward model's transcript of a perfect rendering of ``normalized_text`` reads.

        Its decoder emits text-tokenizer ids, so a transcript is the tokenizer's rendering of the text: the text
        itself for bytes/chars (chars: unknown characters as U+FFFD), the IPA string for the phoneme tokenizer.
        """
        tokenizer = self.system.text_tokenizer
        return tokenizer.decode(tokenizer.encode(normalized_text))

    def transcribe_tokens(self, tokens: Sequence[torch.Tensor], max_len: Optional[int] = None) -> list[str]:
        """Greedy attention-decoder transcripts of speech-id rows ``(T_b,)``; an empty row gives ``""``.

        With the phoneme text tokenizer the transcript is IPA (see :meth:`recognition_reference`).
        """
        texts = ["" for _ in tokens]
        rows = [i for i, row in enumerate(tokens) if len(row)]
        if not rows:
            return texts
        lengths = torch.tensor([len(tokens[i]) for i in rows], device=self.device)
        speech = pad_sequence([tokens[i].to(self.device) for i in rows], batch_first=True)
        mask = lengths_to_mask(lengths, speech.shape[1])
        with torch.inference_mode():
            ids = self.system.reward.transcribe_attention(speech, mask, self.system.codebook(), max_len=max_len)
        for i, row_ids in zip(rows, ids):
            texts[i] = self.system.text_tokenizer.decode(row_ids)
        return texts

    def transcribe_audio(self, wavs: Sequence[np.ndarray], sample_rate: int, batch_size: int = 16) -> list[str]:
        """Recognises waveforms with the system's own modules: speech tokenizer, then the reward model's decoder.

        This is what the ``rm:<export>`` ASR backend calls. The transcript is in the text tokenizer's rendering:
        readable text for bytes/chars/HF tokenizers, IPA for the phoneme tokenizer (compare it with
        :meth:`recognition_reference` of the reference, not with the raw text). Audio shorter than one speech
        token gives ``""``.

        Args:
            wavs: mono waveforms ``(N,)`` at ``sample_rate`` (resampled to the model rate here).
            batch_size: waveforms per tokenizer/decoder call.
        """
        texts = []
        for start in range(0, len(wavs), batch_size):
            audios = [resample(np.asarray(wav, dtype=np.float32), sample_rate, self.sample_rate)
                      for wav in wavs[start:start + batch_size]]
            long_enough = [i for i, audio in enumerate(audios) if len(audio) >= self.min_samples]
            tokens = [torch.zeros(0, dtype=torch.long) for _ in audios]
            if long_enough:
                with torch.inference_mode():
                    mels = {i: self.log_mel(audios[i])[0] for i in long_enough}
                frames = torch.tensor([mels[i].shape[0] for i in long_enough], device=self.device)
                mel = pad_sequence([mels[i] for i in long_enough], batch_first=True)
                mask = lengths_to_mask(frames, mel.shape[1])
                ids, id_mask = self.system.tokenizer.encode(mel, mask)
                for row, i in enumerate(long_enough):
                    tokens[i] = ids[row, id_mask[row]]
            texts.extend(self.transcribe_tokens(tokens))
        return texts


def _reference_of(asr: Any) -> Callable[[str], str]:
    """The reference a backend's transcripts are compared with: the reward model's rendering for a reward-model
    backend (one whose ``system`` has ``recognition_reference``), else the normalised text itself."""
    reference = getattr(getattr(asr, "system", None), "recognition_reference", None)
    return reference if callable(reference) else (lambda text: text)


# ---- command line -------------------------------------------------------------------------------------------------

def read_text_list(path: str | Path) -> list[tuple[str, str]]:
    """Reads ``id<TAB>text`` lines (blank lines are skipped).

    Raises:
        ValueError: naming the file and line number of a line without a tab, with an empty id or text, with an id
            that cannot be a file name, or with a duplicate id.
    """
    items: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt, tab, text = line.partition("\t")
        utt, text = utt.strip(), text.strip()
        where = f"{path}:{number}"
        if not tab:
            raise ValueError(f"{where}: expected 'id<TAB>text', found no tab in {line!r}")
        if not utt or not text:
            raise ValueError(f"{where}: empty {'id' if not utt else 'text'} in {line!r}")
        problem = utterance_id_problem(utt)
        if problem:
            raise ValueError(f"{where}: {problem}")
        if utt in seen:
            raise ValueError(f"{where}: duplicate id {utt!r} (first on line {seen[utt]})")
        seen[utt] = number
        items.append((utt, text))
    if not items:
        raise ValueError(f"{path}: no 'id<TAB>text' line")
    return items


LLM_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "repetition_aware", "min_len_ratio", "max_len_ratio")


VOCODER_HELP = ("default: the export's synthesis.vocoder, else its vocoder when the export records it trained, "
                "else griffin-lim (with a note)")


def export_default(field: str) -> str:
    """Help text of a flag whose default is the export's recorded setting."""
    return f"default: the export's synthesis.{field}, else {getattr(SynthesisConfig(), field)}"


def add_llm_sampling_arguments(group: argparse._ActionsContainer) -> None:
    """Adds the flags of :data:`LLM_SAMPLING_FIELDS` (``e2e-tts synth`` and ``e2e-tts eval seedtts`` share them).

    Every default is None, so that the export's recorded setting applies unless the flag is given.
    """
    group.add_argument("--temperature", type=float, help=export_default("temperature"))
    group.add_argument("--top-k", type=int, help=export_default("top_k"))
    group.add_argument("--top-p", type=float, help=export_default("top_p"))
    group.add_argument("--no-repetition-aware", dest="repetition_aware", action="store_const", const=False,
                       help="plain nucleus sampling instead of repetition-aware sampling")
    group.add_argument("--min-len-ratio", type=float,
                       help="no EOS before this many speech tokens per text id; " + export_default("min_len_ratio"))
    group.add_argument("--max-len-ratio", type=float,
                       help="stop without EOS at this many speech tokens per text id; "
                            + export_default("max_len_ratio"))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``synth`` subcommand to the ``e2e-tts`` command line (flags left out take the export's settings)."""
    parser = subparsers.add_parser("synth", help="synthesise texts with an exported model (zero-shot, best-of-N)",
                                   description="Writes <out>/<id>.wav per text and <out>/synthesis.json. A flag "
                                               "left out takes the export's recorded synthesis setting (the "
                                               "recipe's), else the built-in default.")
    parser.add_argument("--model", required=True, help="export directory (<stage output_dir>/export)")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a text to say (repeatable; ids utt1, utt2, ...)")
    texts.add_argument("--texts", help="TSV file of 'id<TAB>text' lines")
    parser.add_argument("--prompt-wav", help="zero-shot prompt audio (any rate; resampled)")
    parser.add_argument("--prompt-text", help="transcript of --prompt-wav")
    parser.add_argument("--out", required=True, help="output folder")
    add_llm_sampling_arguments(parser.add_argument_group("LLM sampling"))
    decoding = parser.add_argument_group("flow and vocoder (left out: the export's synthesis settings, else the "
                                         "flow config's)")
    decoding.add_argument("--decoder", choices=DECODERS, help="flow (ODE) or prior (the prior head's mel alone); "
                                                             + export_default("decoder"))
    decoding.add_argument("--solver", help="torchdiffeq method (euler, midpoint, rk4, dopri5, ...)")
    decoding.add_argument("--nfe", type=int, help="ODE steps")
    decoding.add_argument("--schedule", choices=SCHEDULES, help="ODE time grid")
    decoding.add_argument("--sway-coef", type=float, help="sway schedule coefficient")
    decoding.add_argument("--cfg-strength", type=float, help="classifier-free guidance strength")
    decoding.add_argument("--vocoder", choices=VOCODERS, help=VOCODER_HELP)
    decoding.add_argument("--griffin-lim-iters", type=int, help=export_default("griffin_lim_iters"))
    best = parser.add_argument_group("best-of-N")
    best.add_argument("--num-candidates", type=int, help="N (1 = off); " + export_default("num_candidates"))
    best.add_argument("--verifier", help="'rm' (reward model on the tokens) or an ASR spec: pocketsphinx, "
                                         "whisper:<dir>, paraformer:<dir>, rm:<export dir>")
    best.add_argument("--wer-language", choices=WER_LANGUAGES, help="WER scoring language (default: from the model)")
    best.add_argument("--min-seconds-per-char", type=float,
                      help="shorter candidates are dropouts; " + export_default("min_seconds_per_char"))
    parser.add_argument("--seed", type=int, help=export_default("seed"))
    parser.add_argument("--batch-size", type=int, help="rows per model call; " + export_default("batch_size"))
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``e2e-tts synth``; bad input is reported on stderr with exit status 2."""
    try:
        items = read_text_list(args.texts) if args.texts else [(f"utt{i}", t) for i, t in enumerate(args.text, 1)]
        synthesizer = Synthesizer.from_pretrained(args.model, args.device)
        for utt, text in items:  # a text the model cannot say is named by its id (and file) before any synthesis
            synthesizer.prepare_text(text, f"{args.texts}: id {utt!r}: text" if args.texts else "text")
        config, notes = synthesizer.settings(**{f.name: getattr(args, f.name)
                                                for f in dataclasses.fields(SynthesisConfig)})
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        results = synthesizer.synthesize([text for _, text in items], args.prompt_wav, args.prompt_text, config,
                                         progress=True)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    utterances = []
    for (utt, _), result in zip(items, results):
        write_audio(out / f"{utt}.wav", result.wav, result.sample_rate)
        utterances.append({"id": utt, "wav": f"{utt}.wav", **result.to_json()})
    audio_seconds = sum(r.duration for r in results)
    compute_seconds = sum(sum(r.timings.values()) for r in results)
    silent = [utt for (utt, _), r in zip(items, results)
              if is_silent(r.wav, synthesizer.audio_config.silence_threshold_db)]
    summary = {"model": str(Path(args.model).resolve()), "device": args.device,
               "prompt_wav": args.prompt_wav, "prompt_text": args.prompt_text,
               "settings": dataclasses.asdict(config), "notes": notes, "sample_rate": synthesizer.sample_rate,
               "totals": {"utterances": len(results), "audio_seconds": audio_seconds,
                          "compute_seconds": compute_seconds,
                          "rtf": compute_seconds / audio_seconds if audio_seconds > 0 else None,
                          "silent": silent},
               "utterances": utterances}
    (out / RESULTS_FILE).write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    if silent:
        print(f"warning: {len(silent)} of {len(results)} outputs are silent: {', '.join(silent)}", file=sys.stderr)
    rtf = summary["totals"]["rtf"]
    print(f"{len(results)} utterances, {audio_seconds:.1f} s of audio, RTF {'n/a' if rtf is None else f'{rtf:.3f}'}"
          f" -> {out}")
    return 0
