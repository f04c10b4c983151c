"""TTSSystem: the five modules, the token-id contract between them, freezing, and the export format.

The training loop and synthesis only talk to this class. An export directory holds one safetensors file
per module, the resolved config, the text tokenizer, the speaker list and which modules were trained
(``trained.json``), and loads without DeepSpeed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from e2e_tts.audio import AudioConfig
from e2e_tts.models.flow import FlowDecoder
from e2e_tts.models.llm import SpeechLLM
from e2e_tts.models.reward import RewardModel
from e2e_tts.models.tokenizer import SpeechTokenizer
from e2e_tts.models.vocoder import Vocoder
from e2e_tts.text import TOKENIZER_FILE, TextTokenizer, load_text_tokenizer
from e2e_tts.vocab import TokenLayout

MODULES = ("tokenizer", "llm", "flow", "reward", "vocoder")
CONFIG_FILE = "config.yaml"
SPEAKERS_FILE = "speakers.json"
TRAINED_FILE = "trained.json"
LLM_DECODER_FILE = "llm_decoder.json"  # the LLM decoder's transformers config: its shape without its checkpoint


def read_trained(directory: str | Path) -> dict[str, bool | None] | None:
    """Which modules of an export were trained: module -> True, False, or None (unknown).

    Returns:
        None for an export written before the record existed (nothing is known).
    Raises:
        ValueError: naming the file when it is not such a record.
    """
    path = Path(directory) / TRAINED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON record of trained modules: {err}") from err
    if not isinstance(record, dict) or set(record) != set(MODULES) or any(
            value not in (True, False, None) for value in record.values()):
        raise ValueError(f"{path}: expected {{module: true | false | null}} for exactly {', '.join(MODULES)}, "
                         f"got {record!r}")
    return record


def trained_modules(config: Any) -> dict[str, bool | None]:
    """What an export of a stage records as trained (see :func:`read_trained`): the stage's trainable modules,
    and for the modules it loaded from ``stage.init_from`` whatever that export recorded (None, unknown, when
    it recorded nothing); modules it neither trained nor loaded are untrained (fresh initialisation)."""
    stage = config.stage
    loaded = (MODULES if stage.init_modules is None else stage.init_modules) if stage.init_from else ()
    before = read_trained(stage.init_from) if stage.init_from else None
    return {name: True if name in stage.trainable else
            (None if before is None else before[name]) if name in loaded else False
            for name in MODULES}


def _unshared_float(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as float32 on the CPU, each with its own memory: safetensors refuses tensors that share it, as a
    tied LLM's output head shares its input embedding's (both keys are kept, so the module loads strictly)."""
    out, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().float().contiguous().cpu()
        if value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


class TTSSystem(nn.Module):
    """Speech tokenizer, LLM, flow decoder, reward model and vocoder, built from one models config.

    Args:
        models: a ``ModelsConfig`` (dataclass instances). The consumers' code dimension and codebook size and the
            reward model's speaker count are no settings: they are taken here from the tokenizer and the speakers,
            so they cannot disagree with them.
        text_tokenizer: the text front-end; its vocabulary defines the text part of the LLM vocabulary.
        speakers: training speaker names, index = speaker label of the reward model's speaker head.
        audio: the mel analysis the data uses (default: ``AudioConfig()``); the vocoder's own mel loss and
            the consumers' ``n_mels`` must agree with it.
        llm_decoder_config: the LLM decoder's recorded transformers config, when its weights are loaded afterwards
            (:meth:`from_export`; see :class:`~e2e_tts.models.llm.SpeechLLM`).
    """

    def __init__(self, models: Any, text_tokenizer: TextTokenizer, speakers: Sequence[str],
                 audio: AudioConfig | None = None, llm_decoder_config: dict[str, Any] | None = None):
        super().__init__()
        self.text_tokenizer = text_tokenizer
        self.speakers = list(speakers)
        self.tokenizer = SpeechTokenizer(models.tokenizer)
        code_dim, codes = self.tokenizer.codebook_dim, self.tokenizer.codebook_size
        self.layout = TokenLayout(text_tokenizer.vocab_size, codes)
        self.llm = SpeechLLM(models.llm, self.layout, code_dim, llm_decoder_config)
        self.flow = FlowDecoder(models.flow, code_dim, codes)
        self.reward = RewardModel(models.reward, text_tokenizer.vocab_size, code_dim, codes, len(self.speakers))
        self.vocoder = Vocoder(models.vocoder, audio)
        audio = audio or AudioConfig()
        for name in ("tokenizer", "flow"):
            if getattr(models, name).n_mels != audio.n_mels:
                raise ValueError(f"model.{name}.n_mels={getattr(models, name).n_mels} but audio.n_mels={audio.n_mels}")

    def codebook(self) -> torch.Tensor:
        """The tokenizer's enumerated codebook ``(V, Dc)`` that every consumer embeds tokens with."""
        return self.tokenizer.codebook()

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where the module's forward reads a parameter it does not own.

        ZeRO-3 only gathers a module's own parameters around its forward; these must be registered with
        ``deepspeed.zero.register_external_parameter``. The LLM slices its output head's speech rows.
        """
        return [(self.llm, self.llm.decoder.get_output_embeddings().weight)]

    def speaker_ids(self, names: Sequence[str], device: torch.device) -> torch.Tensor:
        """Speaker labels ``(B,)``; a speaker unseen in training gets -1 (ignored by the loss)."""
        index = {name: i for i, name in enumerate(self.speakers)}
        return torch.tensor([index.get(name, -1) for name in names], dtype=torch.long, device=device)

    def set_trainable(self, trainable: Sequence[str]) -> None:
        """Trains only the named modules; the others are frozen: no gradients, eval mode (no dropout)."""
        unknown = set(trainable) - set(MODULES)
        if unknown:
            raise ValueError(f"unknown module(s) {sorted(unknown)}; modules are {MODULES}")
        for name in MODULES:
            getattr(self, name).requires_grad_(name in trainable)
        self.trainable = tuple(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "TTSSystem":
        super().train(mode)
        for name in MODULES:
            if name not in getattr(self, "trainable", MODULES):
                getattr(self, name).eval()
        return self

    # ---- export ------------------------------------------------------------------------------------

    def module_state_dicts(self, state_dict: dict[str, torch.Tensor] | None = None, prefix: str = ""
                           ) -> dict[str, dict[str, torch.Tensor]]:
        """Splits a (possibly wrapped, ``prefix``-ed) state dict into one dict per module."""
        state_dict = self.state_dict() if state_dict is None else state_dict
        split: dict[str, dict[str, torch.Tensor]] = {name: {} for name in MODULES}
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            module, _, rest = key[len(prefix):].partition(".")
            if module in split:
                split[module][rest] = value
        return split

    def export(self, directory: str | Path, config: Any, state_dict: dict[str, torch.Tensor] | None = None,
               prefix: str = "") -> Path:
        """Writes ``<module>.safetensors`` for each module, the config, text tokenizer, speakers, the record of
        trained modules (:func:`trained_modules` of ``config``) and the LLM decoder's transformers config (so that
        an LLM started from a local checkpoint loads without it)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, tensors in self.module_state_dicts(state_dict, prefix).items():
            save_file(_unshared_float(tensors), str(directory / f"{name}.safetensors"))
        (directory / CONFIG_FILE).write_text(OmegaConf.to_yaml(config, resolve=True))
        self.text_tokenizer.save(directory)
        (directory / SPEAKERS_FILE).write_text(json.dumps(self.speakers))
        (directory / TRAINED_FILE).write_text(json.dumps(trained_modules(config)))
        (directory / LLM_DECODER_FILE).write_text(self.llm.decoder.config.to_json_string())
        return directory

    def load_modules(self, directory: str | Path, modules: Sequence[str] = MODULES) -> None:
        """Loads the named modules' weights from an export (strict: every key must match).

        Raises:
            FileNotFoundError: naming a missing file.
            ValueError: naming a file that is not safetensors (truncated, random bytes), holds NaN or Inf, or
                whose tensors do not fit the module as configured.
        """
        unknown = sorted(set(modules) - set(MODULES))
        if unknown:
            raise ValueError(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
        for name in modules:
            path = Path(directory) / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"export {directory} has no {path.name}")
            try:
                tensors = load_file(str(path))
            except SafetensorError as err:
                raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {err}") from err
            broken = next((key for key, value in tensors.items()
                           if value.is_floating_point() and not torch.isfinite(value).all()), None)
            if broken is not None:
                raise ValueError(f"{path}: tensor {broken!r} holds NaN or Inf (corrupt weights)")
            try:
                getattr(self, name).load_state_dict(tensors, strict=True)
            except RuntimeError as err:  # missing/unexpected keys or wrong shapes
                raise ValueError(f"{path}: does not fit the {name} of {directory / CONFIG_FILE}: {err}") from err

    @classmethod
    def from_export(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> tuple["TTSSystem", Any]:
        """Rebuilds a system from an export directory; returns it (in eval mode) and its config."""
        from e2e_tts.config import load_export_config, to_object

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"export directory {directory} does not exist")
        config = load_export_config(directory / CONFIG_FILE)
        speakers_path = directory / SPEAKERS_FILE
        try:
            speakers = json.loads(speakers_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{speakers_path}: not a JSON list of speaker names: {err}") from err
        if not isinstance(speakers, list) or not all(isinstance(name, str) for name in speakers):
            raise ValueError(f"{speakers_path}: not a JSON list of speaker names")
        try:
            text_tokenizer = load_text_tokenizer(directory)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError) as err:  # the reader does not name its file
            raise ValueError(f"{directory / TOKENIZER_FILE}: not a saved text tokenizer: {err!r}") from err
        decoder_path = directory / LLM_DECODER_FILE
        try:  # exports written before the record rebuild the decoder from config.yaml, checkpoint included
            decoder_config = json.loads(decoder_path.read_text(encoding="utf-8")) if decoder_path.is_file() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{decoder_path}: not a JSON transformers config: {err}") from err
        if decoder_config is not None and not isinstance(decoder_config, dict):
            raise ValueError(f"{decoder_path}: not a JSON transformers config (an object)")
        system = cls(to_object(config.model), text_tokenizer, speakers, to_object(config.audio), decoder_config)
        system.load_modules(directory)
        return system.to(map_location).eval(), config
