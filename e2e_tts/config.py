"""Structured configuration: dataclass schemas composed into one :class:`ExperimentConfig`.

Each component owns the schema of its own settings (``AudioConfig`` in audio.py, ``TokenizerConfig`` in
models/tokenizer.py, ...); this module composes them, applies a size preset, merges YAML files and
``key=value`` overrides, and validates the result. A mistake is a :class:`ConfigError` that names the key
and where it came from (file or command line). A resolved config saved with :func:`save_config`
loads back identically with :func:`load_config`.

Merge order (later wins): schema defaults < preset (``preset: tiny|paper``) < YAML files in order < overrides.
"""

from __future__ import annotations

from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from e2e_tts.audio import AudioConfig
from e2e_tts.checks import FieldError
from e2e_tts.data.loader import DataConfig
from e2e_tts.engine import EngineConfig
from e2e_tts.models import flow, llm, reward, tokenizer, vocoder
from e2e_tts.stage import StageConfig
from e2e_tts.synth import SynthesisConfig
from e2e_tts.text import TextConfig


@dataclass
class ModelsConfig:
    """Sizes and settings of the five modules."""

    tokenizer: tokenizer.TokenizerConfig = field(default_factory=tokenizer.TokenizerConfig)
    llm: llm.LLMConfig = field(default_factory=llm.LLMConfig)
    flow: flow.FlowConfig = field(default_factory=flow.FlowConfig)
    reward: reward.RewardConfig = field(default_factory=reward.RewardConfig)
    vocoder: vocoder.VocoderConfig = field(default_factory=vocoder.VocoderConfig)


MODEL_PRESET_SOURCES = {"tokenizer": tokenizer, "llm": llm, "flow": flow, "reward": reward, "vocoder": vocoder}


def model_preset(name: str) -> ModelsConfig:
    """The ``tiny`` or ``paper`` sizes of every module, from each module's ``PRESETS``."""
    try:
        return ModelsConfig(**{key: module.PRESETS[name] for key, module in MODEL_PRESET_SOURCES.items()})
    except KeyError:
        known = sorted(tokenizer.PRESETS)
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known)}") from None


@dataclass
class ExperimentConfig:
    """Everything one run needs. ``output_dir`` holds checkpoints, logs and exports."""

    preset: str = "tiny"
    seed: int = 0
    output_dir: str = "exp/default"
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelsConfig = field(default_factory=ModelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    # The recipe's decoding settings: an export carries them, and synth/eval start from them.
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


class ConfigError(ValueError):
    """A config mistake; the message names the key and its source."""


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return OmegaConf.create(data)


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(f"command line: cannot parse overrides: {err}") from err


def _merge(base: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        raise ConfigError(f"{source}: bad config key {key!r}: {reason}") from err


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), schema: type = ExperimentConfig
                ) -> Any:
    """Builds a validated config.

    Args:
        paths: YAML files, merged in order.
        overrides: ``dotted.key=value`` strings, merged last.
        schema: the top-level dataclass (``ExperimentConfig`` unless a caller extends it).
    Returns:
        a read-only omegaconf ``DictConfig`` typed by ``schema``.
    Raises:
        ConfigError: unknown key, wrong type, value refused by its schema's checks, missing required value,
            unreadable or malformed file.
    """
    layers = [(_read_yaml(Path(p)), str(p)) for p in paths]
    layers.append((_parse_overrides(overrides), "command line"))
    preset = "tiny"
    for layer, _ in layers:
        preset = layer.get("preset", preset)
    base = OmegaConf.structured(schema)
    if "model" in base:
        base = _merge(base, OmegaConf.create({"preset": preset}), "preset")
        base.model = OmegaConf.structured(model_preset(str(preset)))
    for layer, source in layers:
        base = _merge(base, layer, source)
    missing = sorted(OmegaConf.missing_keys(base))
    if missing:
        raise ConfigError(f"missing required config value(s): {', '.join(missing)}")
    _check_values(base, "", layers)
    OmegaConf.set_readonly(base, True)
    return base


def _check_values(node: DictConfig, path: str, layers: Sequence[tuple[DictConfig, str]]) -> None:
    """Builds each section's dataclass, innermost first, so that a value its ``__post_init__`` refuses is
    reported with the full key and the last file (or the command line) that set it."""
    for key in node:
        child = node[key]
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
            _check_values(child, f"{path}{key}.", layers)
    try:
        OmegaConf.to_object(node)
    except FieldError as err:
        key = path + err.field
        raise ConfigError(f"{_source_of(key, layers)}: bad config value {key}: {err.problem}") from None
    except ValueError as err:  # a check that does not name its field: name the section
        raise ConfigError(f"{_source_of(path.rstrip('.'), layers)}: bad config value in {path.rstrip('.')}: "
                          f"{err}") from None


_UNSET = object()


def _source_of(key: str, layers: Sequence[tuple[DictConfig, str]]) -> str:
    """The last layer that sets ``key``, where its value comes from."""
    for layer, source in reversed(layers):
        if OmegaConf.select(layer, key, default=_UNSET, throw_on_resolution_failure=False) is not _UNSET:
            return source
    return "defaults"


def save_config(config: Any, path: str | Path) -> None:
    """Writes the fully resolved config as YAML (reloadable with :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(config, resolve=True))


def to_object(config: Any) -> Any:
    """The config as plain dataclass instances (for constructing modules)."""
    return OmegaConf.to_object(config)
