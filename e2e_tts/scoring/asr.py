"""Speech recognisers behind one interface, named by a spec string (built by
:func:`e2e_tts.scoring.verifiers.build_asr`).

Specs:

* ``pocketsphinx`` - offline English CMU Sphinx with the model the PyPI package ships; the default judge where no
  neural ASR checkpoint is at hand. Not comparable with published Seed-TTS-Eval numbers.
* ``whisper:<local dir>`` - the official English judge (``openai/whisper-large-v3`` in Seed-TTS-Eval): HF
  ``WhisperForConditionalGeneration`` + ``WhisperProcessor`` loaded offline in float32, forced English
  transcription, greedy, audio resampled to 16 kHz with ``scipy.signal.resample`` exactly as ``run_wer.py`` does.
* ``paraformer:<local dir>`` - the official Chinese judge (FunASR ``paraformer-zh``), output converted to simplified
  characters with zhconv as ``run_wer.py`` does. Needs the optional ``funasr`` and ``zhconv`` packages.
* ``rm-audio:<export dir>`` - the project's own reward model, which recognises speech *tokens*: the export's speech
  tokenizer turns the audio into tokens first; see :class:`e2e_tts.scoring.reward_model.RewardModelRecognizer`.

Every backend takes mono waveforms at their native rate and resamples itself, so that each mirrors its reference
pipeline; pass the audio as read from the file, not pre-resampled.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import soundfile as sf

from e2e_tts.audio import resample
from e2e_tts.scoring.normalize import to_simplified_chinese

ASR_RATE = 16000  # every judge here works at 16 kHz
REWARD_AUDIO = "rm-audio"  # an export's speech tokenizer + reward model transcribing audio
ASR_KINDS = ("pocketsphinx", "whisper", "paraformer", REWARD_AUDIO)
# Spellings before the two reward-model verifiers got distinct names (see e2e_tts.scoring.verifiers).
RENAMED = {"rm": "rm-tokens (this system's reward model reading the generated tokens)",
           "rm:": f"{REWARD_AUDIO}:<export dir> (that export's tokenizer and reward model transcribing the audio)"}


@runtime_checkable
class ASRBackend(Protocol):
    """A recogniser: mono waveforms ``(N,)`` at ``sample_rate`` -> one transcript each."""

    name: str

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        ...


def check_waveforms(wavs: Sequence[np.ndarray], sample_rate: int) -> None:
    """Rejects what no backend can read, naming the offending item.

    Raises:
        ValueError: for a non-positive rate, a non-1-D array or non-finite samples.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    for index, wav in enumerate(wavs):
        wav = np.asarray(wav)
        if wav.ndim != 1:
            raise ValueError(f"waveform {index} must be mono (N,), got shape {wav.shape}")
        if not np.isfinite(wav).all():
            raise ValueError(f"waveform {index} contains NaN or Inf")


@functools.lru_cache(maxsize=1)
def _pocketsphinx_decoder() -> Any:
    # One decoder per process: loading the acoustic model and LM takes seconds, and a decoder is reusable.
    from pocketsphinx import Decoder

    return Decoder(loglevel="FATAL")


class PocketsphinxASR:
    """Offline English recognition with pocketsphinx's bundled en-us model (16 kHz, 16-bit PCM)."""

    name = "pocketsphinx"

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        return pocketsphinx_hypotheses(_pocketsphinx_decoder(), wavs, sample_rate)


def pocketsphinx_hypotheses(decoder: Any, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
    """Runs a pocketsphinx ``Decoder`` on mono waveforms ``(N,)`` (validated, resampled to 16 kHz, 16-bit PCM);
    returns each hypothesis string ("" when it has none)."""
    check_waveforms(wavs, sample_rate)
    texts = []
    for wav in wavs:
        pcm = np.clip(resample(np.asarray(wav, dtype=np.float32), sample_rate, ASR_RATE), -1.0, 1.0)
        decoder.start_utt()
        decoder.process_raw((pcm * 32767).astype(np.int16).tobytes(), full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        texts.append(hypothesis.hypstr if hypothesis is not None else "")
    return texts


class WhisperASR:
    """Seed-TTS-Eval's English judge: HF Whisper from a local directory, forced English, greedy.

    Args:
        model_dir: directory holding the model and processor files (e.g. a local ``openai/whisper-large-v3``).
        device: torch device string.
        language, task: the forced decoder prompt (the official ``get_decoder_prompt_ids(language="english",
            task="transcribe")``, expressed through ``generate``'s ``language``/``task`` arguments).
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu", language: str = "english",
                 task: str = "transcribe"):
        model_dir = _existing_dir(model_dir, "whisper")
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.name = f"whisper:{model_dir}"
        self.device, self.language, self.task = device, language, task
        self.processor = WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        # float32 like the official script (transformers >= 5 would otherwise load the checkpoint's fp16).
        self.model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, local_files_only=True, dtype=torch.float32).to(device).eval()

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        import scipy.signal
        import torch

        check_waveforms(wavs, sample_rate)
        texts = []
        for wav in wavs:
            # run_wer.py reads float64 with soundfile and resamples with scipy's FFT method only when needed.
            wav = np.asarray(wav, dtype=np.float64)
            if sample_rate != ASR_RATE:
                wav = scipy.signal.resample(wav, int(len(wav) * ASR_RATE / sample_rate))
            features = self.processor(wav, sampling_rate=ASR_RATE, return_tensors="pt").input_features
            with torch.no_grad():
                ids = self.model.generate(features.to(self.device), language=self.language, task=self.task,
                                          do_sample=False, num_beams=1)
            texts.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0])
        return texts


class ParaformerASR:
    """Seed-TTS-Eval's Chinese judge: FunASR Paraformer from a local directory, transcripts simplified by zhconv.

    Each waveform is written to a temporary float wav and decoded with ``generate(input=path, batch_size_s=300)``,
    the official call, so FunASR reads and resamples it exactly as it reads the official files.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        missing = [name for name in ("funasr", "zhconv") if importlib.util.find_spec(name) is None]
        if missing:
            raise ImportError(f"the paraformer ASR backend needs {' and '.join(missing)}: "
                              f"pip install {' '.join(missing)}")
        from funasr import AutoModel

        model_dir = _existing_dir(model_dir, "paraformer")
        self.name = f"paraformer:{model_dir}"
        self.model = AutoModel(model=str(model_dir), disable_update=True, device=device)

    def transcribe(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        check_waveforms(wavs, sample_rate)
        texts = []
        with tempfile.TemporaryDirectory(prefix="paraformer_") as tmp:
            for index, wav in enumerate(wavs):
                path = Path(tmp) / f"{index}.wav"
                sf.write(str(path), np.asarray(wav, dtype=np.float32), sample_rate, subtype="FLOAT")
                result = self.model.generate(input=str(path), batch_size_s=300)
                texts.append(to_simplified_chinese(result[0]["text"]))
        return texts


@dataclass(frozen=True)
class ASRSpec:
    """A parsed ASR spec: ``kind`` in :data:`ASR_KINDS` and the path after the colon (None for pocketsphinx)."""

    kind: str
    path: Optional[str] = None


def renamed_spec(spec: str) -> Optional[str]:
    """The new spelling of a retired reward-model spec (``rm``, ``rm:<dir>``), or None."""
    kind, sep, _ = spec.partition(":")
    return RENAMED.get(kind + sep) if kind == "rm" else None


def parse_asr_spec(spec: str) -> ASRSpec:
    """Parses ``pocketsphinx``, ``whisper:<dir>``, ``paraformer:<dir>`` or ``rm-audio:<export dir>``.

    Raises:
        ValueError: for an unknown kind (a retired spelling is named with its new one), a missing path, or a path
            given to pocketsphinx.
    """
    kind, sep, path = spec.partition(":")
    if renamed_spec(spec):
        raise ValueError(f"spec {spec!r} is now spelt {renamed_spec(spec)}")
    if kind not in ASR_KINDS:
        raise ValueError(f"unknown ASR spec {spec!r}: expected one of pocketsphinx, whisper:<dir>, "
                         f"paraformer:<dir>, {REWARD_AUDIO}:<export dir>")
    if kind == "pocketsphinx":
        if sep:
            raise ValueError(f"ASR spec {spec!r}: pocketsphinx takes no path (it uses its bundled model)")
        return ASRSpec(kind)
    if not path:
        raise ValueError(f"ASR spec {spec!r} needs a path: {kind}:<path>")
    return ASRSpec(kind, path)


def _existing_dir(path: str | Path, kind: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} ASR: model directory {path} does not exist (models are never downloaded; "
                                f"give a local directory)")
    return path
