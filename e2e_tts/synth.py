"""Inference: text (+ a zero-shot voice prompt) -> speech tokens -> mel -> waveform.

One row of a batch goes through the modules of a :class:`~e2e_tts.system.TTSSystem` like this::

    text --normalize_text--> text ids --LLM.generate--> speech ids --flow.sample--> mel --vocoder--> wav
                                        (min/max length ratios, EOS masked      (in-context infilling
                                         in the min window, RAS sampling)         after the prompt mel)

Zero-shot voice cloning (CosyVoice style): the prompt audio is resampled to the model rate, turned into a log-mel
and tokenized; the LLM row becomes ``SOS prompt_text text TASK prompt_speech`` and continues after the prompt
speech; the flow decodes prompt + new tokens with the prompt mel as in-context condition and returns only the new
frames. Without a prompt the model speaks in whatever voice it learned. Each result also holds the LLM's attention
over its text (:mod:`e2e_tts.text_attention`), which the commands save and the evaluation report draws.

Best-of-N: each text is sampled ``num_candidates`` times and :mod:`e2e_tts.best_of_n` keeps the candidate a
verifier (:mod:`e2e_tts.scoring.verifiers`) hears best.

Settings (:meth:`Synthesizer.settings`): :class:`~e2e_tts.synthesis_config.SynthesisConfig` defaults < the export's
``synthesis`` section (the recipe's decoding settings, recorded in its config.yaml) < what the caller gives. The
vocoder left unset is the trained one, or Griffin-Lim with a note when the export records that its vocoder was never
trained (:func:`~e2e_tts.synthesis_config.choose_vocoder`); asked for by name, a never-trained vocoder is an error
in the commands.

Randomness comes from one ``torch.Generator`` seeded with ``SynthesisConfig.seed`` per :meth:`Synthesizer.synthesize`
call and handed to every sampler, so a call is reproducible. Rows share the generator in batch order, so a text's
audio also depends on the batch it was sampled in (the batch size, and the texts before it).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from e2e_tts.audio import LOG_FLOOR, AudioConfig, is_silent, load_audio, resample
from e2e_tts.best_of_n import CandidateScore, choose_candidate, score_candidates
from e2e_tts.models.masks import lengths_to_mask
from e2e_tts.models.vocoder import griffin_lim
from e2e_tts.scoring.normalize import wer_language_of
from e2e_tts.scoring.reward_model import RewardModelRecognizer
from e2e_tts.scoring.verifiers import Verifier, build_verifier, verifier_of
from e2e_tts.speech_encoder import SpeechEncoder
from e2e_tts.synthesis_config import SynthesisConfig, choose_vocoder
from e2e_tts.system import TRAINED_FILE, TTSSystem, read_trained
from e2e_tts.text import TextConfig, check_text, normalize_text
from e2e_tts.text_attention import text_attention


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
        text_attention: ``(T + 1, L)`` the LLM's attention over the text while it predicted ``tokens`` and EOS,
            layers and heads averaged (:func:`e2e_tts.text_attention.text_attention`).
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
    text_attention: Optional[np.ndarray] = None

    def to_json(self) -> dict[str, Any]:
        """Everything but the waveform and the attention, as JSON-serialisable values."""
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
        export_dir: where the system was loaded from (reported, and reused by an ``rm-audio:<same dir>`` verifier).
        defaults: the settings a run starts from (the export's ``synthesis`` section; None = ``SynthesisConfig()``).
        trained: which modules were trained (:func:`e2e_tts.system.read_trained`; None = unknown).
    Raises:
        ValueError: when the modules disagree on framing.
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
        self.speech_encoder = SpeechEncoder(system.tokenizer, audio_config)
        self.recognizer = RewardModelRecognizer(system, self.speech_encoder, text_config.language, export_dir)
        self._verifiers: dict[str, Verifier] = {}  # built once per spec

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
        """:func:`~e2e_tts.synthesis_config.choose_vocoder` by this export's record."""
        trained = None if self.trained is None else self.trained["vocoder"]
        record = TRAINED_FILE if self.export_dir is None else str(self.export_dir / TRAINED_FILE)
        return choose_vocoder(config, trained, record)

    # ---- inputs -------------------------------------------------------------------------------------------------

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
            speech_ids, mel = self.speech_encoder.encode(audio)
        except ValueError as err:  # too short for one token
            raise ValueError(f"{what}: {err}") from err
        return Prompt(text_ids=text_ids, speech_ids=speech_ids, mel=mel)

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
        check = self.verifier_for(config, verifier)
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
        for t, (text, (normalized, text_ids)) in enumerate(zip(texts, prepared)):
            candidates = outputs[t * config.num_candidates:(t + 1) * config.num_candidates]
            result = self._select(text, normalized, candidates, config, check)
            llm_prompt = self.llm_prompt(prompt, config)
            prompt_ids = (None, None) if llm_prompt is None else (llm_prompt.text_ids, llm_prompt.speech_ids)
            result.text_attention = text_attention(self.system.llm, self.system.codebook(), text_ids, result.tokens,
                                                   *prompt_ids).mean(0)
            results.append(result)
        return results

    def _synthesize_rows(self, text_ids: list[torch.Tensor], prompt: Optional[Prompt], config: SynthesisConfig,
                         generator: torch.Generator) -> list[tuple[torch.Tensor, np.ndarray, dict[str, float]]]:
        """LLM -> flow -> vocoder for one batch of rows; returns (tokens, wav, timings) per row."""
        device, batch = self.device, len(text_ids)
        start = time.perf_counter()
        tokens = self.generate_tokens(text_ids, prompt, config, generator)
        seconds = {"llm": _elapsed(start, device)}

        wavs, decode_seconds = self.decode_audio(tokens, [prompt] * batch, config, generator)
        seconds.update(decode_seconds)

        weights = np.array([len(row) + 1 for row in tokens], dtype=np.float64)
        shares = weights / weights.sum()
        return [(tokens[b], wavs[b], {stage: float(total * shares[b]) for stage, total in seconds.items()})
                for b in range(batch)]

    @staticmethod
    def llm_prompt(prompt: Optional[Prompt], config: SynthesisConfig) -> Optional[Prompt]:
        """The prompt the LLM continues: the call's, unless ``config.llm_prompt`` keeps it for the flow alone."""
        return prompt if config.llm_prompt else None

    def generate_tokens(self, text_ids: list[torch.Tensor], prompt: Optional[Prompt], config: SynthesisConfig,
                        generator: torch.Generator) -> list[torch.Tensor]:
        """The LLM's speech ids ``(T_b,)`` for each row of text ids (after :meth:`llm_prompt`'s, if any), sampled
        with ``config``'s LLM settings."""
        batch = len(text_ids)
        prompt = self.llm_prompt(prompt, config)
        return self.system.llm.generate(
            text_ids, self.system.codebook(),
            prompt_text_ids=None if prompt is None else [prompt.text_ids] * batch,
            prompt_speech_ids=None if prompt is None else [prompt.speech_ids] * batch,
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
            repetition_aware=config.repetition_aware, min_len_ratio=config.min_len_ratio,
            max_len_ratio=config.max_len_ratio, generator=generator)

    def decode_audio(self, tokens: Sequence[torch.Tensor], prompts: Sequence[Optional[Prompt]],
                     config: SynthesisConfig, generator: torch.Generator) -> tuple[list[np.ndarray], dict[str, float]]:
        """The waveform ``(N_b,)`` of each row of generated speech ids ``(T_b,)``, decoded after its own prompt
        (None: none) by ``config``'s decoder and vocoder (set: see :meth:`settings`), in one flow call and one
        vocoder call for all rows; and the seconds the ``flow`` and the ``vocoder`` took.

        A row without tokens becomes empty audio (a dropout): it has nothing to decode.
        """
        spoken = [b for b in range(len(tokens)) if len(tokens[b])]
        wavs = [np.zeros(0, dtype=np.float32) for _ in tokens]
        seconds = {"flow": 0.0, "vocoder": 0.0}
        if spoken:
            start = time.perf_counter()
            mel, mel_mask = self._decode_tokens([tokens[b] for b in spoken], [prompts[b] for b in spoken], config,
                                                generator)
            seconds["flow"] = _elapsed(start, self.device)
            start = time.perf_counter()
            for b, wav in zip(spoken, self._vocode(mel, mel_mask, config, generator)):
                wavs[b] = wav
            seconds["vocoder"] = _elapsed(start, self.device)
        return wavs, seconds

    def _decode_tokens(self, tokens: list[torch.Tensor], prompts: Sequence[Optional[Prompt]],
                       config: SynthesisConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes generated tokens ``B x (T_b,)`` (each after its prompt's, if any) with ``config.decoder`` -> the
        new mel frames ``(B, T, n_mels)`` and their mask ``(B, T)``."""
        device = self.device
        prompt_ids = [torch.zeros(0, dtype=torch.long) if p is None else p.speech_ids.cpu() for p in prompts]
        lengths = torch.tensor([len(p) + len(row) for p, row in zip(prompt_ids, tokens)], device=device)
        speech = pad_sequence([torch.cat([p, row.cpu()]).to(device) for p, row in zip(prompt_ids, tokens)],
                              batch_first=True)
        speech_mask = lengths_to_mask(lengths, speech.shape[1])
        if config.decoder == "prior":
            ratio = self.system.flow.config.token_mel_ratio
            skip = torch.tensor([len(p) * ratio for p in prompt_ids], device=device)
            new_frames = lengths * ratio - skip
            mel = self.system.flow.prior(speech, speech_mask, self.system.codebook())
            frames = skip[:, None] + torch.arange(int(new_frames.max()), device=device)[None]
            mel = mel.gather(1, frames.clamp(max=mel.shape[1] - 1)[..., None].expand(-1, -1, mel.shape[2]))
            return mel, lengths_to_mask(new_frames, int(new_frames.max()))
        prompt_mel = prompt_mask = None
        if any(p is not None for p in prompts):  # rows without a prompt get none of its frames
            like = next(p.mel for p in prompts if p is not None)
            mels = [like.new_zeros(0, like.shape[1]) if p is None else p.mel for p in prompts]
            prompt_mel = pad_sequence([m.to(device) for m in mels], batch_first=True)
            prompt_mask = lengths_to_mask(torch.tensor([len(m) for m in mels], device=device), prompt_mel.shape[1])
        return self.system.flow.sample(speech, speech_mask, self.system.codebook(), prompt_mel,
                                       prompt_mask=prompt_mask, solver=config.solver, nfe=config.nfe,
                                       schedule=config.schedule, sway_coef=config.sway_coef,
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
                config: SynthesisConfig, check: Optional[Verifier]) -> SynthesisResult:
        """Keeps the best of one text's candidates (:mod:`e2e_tts.best_of_n`; the first one without a verifier)."""
        tokens, wavs = [c[0] for c in candidates], [c[1] for c in candidates]
        language = config.wer_language or wer_language_of(self.text_config.language)
        start = time.perf_counter()
        scores = score_candidates(text, normalized, tokens, wavs, self.sample_rate, check, language,
                                  config.min_seconds_per_char, self.audio_config.silence_threshold_db)
        timings = {stage: sum(c[2][stage] for c in candidates) for stage in ("llm", "flow", "vocoder")}
        timings["verify"] = 0.0 if check is None else _elapsed(start, self.device)
        chosen = choose_candidate(scores)
        duration = len(wavs[chosen]) / self.sample_rate
        return SynthesisResult(text=text, normalized_text=normalized, wav=wavs[chosen], sample_rate=self.sample_rate,
                               tokens=tokens[chosen], duration=duration, timings=timings,
                               rtf=sum(timings.values()) / duration if duration > 0 else None,
                               chosen_candidate=chosen, candidates=scores)

    def verifier_for(self, config: SynthesisConfig, backend: Any = None) -> Optional[Verifier]:
        """The verifier of a call: an explicit ASR backend, else ``config.verifier`` (None: no verification)."""
        if backend is not None:
            if not callable(getattr(backend, "transcribe", None)):
                raise TypeError(f"verifier must have transcribe(wavs, sample_rate), got {type(backend).__name__}")
            return verifier_of(backend)
        if config.verifier is not None and config.verifier not in self._verifiers:
            self._verifiers[config.verifier] = build_verifier(config.verifier, self.recognizer, str(self.device))
        return self._verifiers.get(config.verifier)
