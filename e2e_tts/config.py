"""Structured configuration: dataclass schemas composed into one :class:`ExperimentConfig`.

Each component owns the schema of its own settings (``AudioConfig`` in audio.py, ``TokenizerConfig`` in
models/tokenizer.py, ...); this module composes them, applies a size preset, merges YAML files and
``key=value`` overrides, and validates the result. A mistake is a :class:`ConfigError` that names the key
and where it came from (file or command line). A resolved config saved with :func:`save_config`
loads back identically with :func:`load_config`.

Merge order (later wins): schema defaults < preset (``preset: tiny|paper``) < YAML files in order < overrides.

Keys that have left a schema (:data:`MOVED_KEYS`, :data:`REMOVED_KEYS`) are refused with what to write instead;
an export's ``config.yaml`` written before they left loads with them moved or dropped (:func:`load_export_config`).
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
from e2e_tts.synthesis_config import SynthesisConfig
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


# Training choices that the model configs held until they moved to the objective that makes them.
MOVED_KEYS = {
    "model.llm.prompt_pairs": "stage.multitask.prompt_pairs",
    "model.llm.speech_input_noise": "stage.multitask.llm_input_noise",
    "model.llm.guide_weight": "stage.multitask.guide.weight",
    "model.llm.guide_layers": "stage.multitask.guide.layers",
    "model.llm.guide_heads": "stage.multitask.guide.heads",
    "model.llm.guide_sigma": "stage.multitask.guide.sigma",
    "model.reward.token_noise_prob": "stage.multitask.reward_input_noise",
}
# Keys that are gone, and why: mostly values the system takes from the tokenizer or the data when it builds the
# modules, which older configs could set (and saw overwritten).
_CODE_DIM = "it is the tokenizer's code dimension, taken when the system is built"
REMOVED_KEYS = {
    "model.llm.codebook_dim": _CODE_DIM,
    "model.flow.codebook_dim": _CODE_DIM,
    "model.reward.codebook_dim": _CODE_DIM,
    "model.reward.num_speakers": "it is the number of training speakers, taken when the system is built",
    "model.flow.speaker_embedding_dim": "the flow takes no speaker vector",
}


def _node_at(layer: DictConfig, key: str) -> Any:
    """The node of dotted ``key`` in ``layer``, or None; interpolations are left unresolved."""
    node: Any = layer
    for part in key.split("."):
        node = node._get_node(part) if isinstance(node, DictConfig) else None
        if node is None:
            return None
    return node


def _refuse_old_keys(layer: DictConfig, source: str) -> None:
    for old, new in MOVED_KEYS.items():
        if _node_at(layer, old) is not None:
            raise ConfigError(f"{source}: {old} is now {new} (a training choice, made by the stage's objective)")
    for key, reason in REMOVED_KEYS.items():
        if _node_at(layer, key) is not None:
            raise ConfigError(f"{source}: {key} cannot be set: {reason}; remove it")


def _upgrade_export(data: dict) -> dict:
    """An export's config tree with the keys of :data:`MOVED_KEYS` at their new place (unless that is set) and
    those of :data:`REMOVED_KEYS` dropped. An LLM that guided attention then ran on the eager path, in training and
    synthesis alike: it still does. Whatever else is wrong is left for the schema to name."""
    moved = {old: _pop_key(data, old) for old in MOVED_KEYS}
    for key in REMOVED_KEYS:
        _pop_key(data, key)
    for old, value in moved.items():
        if value is not _ABSENT:
            _set_default(data, MOVED_KEYS[old], value)
    weight = moved["model.llm.guide_weight"]
    if isinstance(weight, (int, float)) and weight > 0:
        _set_default(data, "model.llm.attn_implementation", "eager")
    return data


_ABSENT = object()


def _pop_key(tree: dict, key: str) -> Any:
    """Removes dotted ``key`` from the nested mappings of ``tree``; returns its value, or ``_ABSENT``."""
    *parents, name = key.split(".")
    for part in parents:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree.pop(name) if isinstance(tree, dict) and name in tree else _ABSENT


def _set_default(tree: dict, key: str, value: Any) -> None:
    """Sets dotted ``key`` of ``tree`` to ``value`` unless it is set, adding mappings on the way; a value that is
    no mapping in the way is left alone."""
    *parents, name = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {}) if isinstance(tree, dict) else None
    if isinstance(tree, dict):
        tree.setdefault(name, value)


def _read_yaml(path: Path, export: bool = False) -> DictConfig:
    """The YAML mapping of ``path`` (with ``export``, upgraded by :func:`_upgrade_export`)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    if _too_many_values(data, MAX_CONFIG_VALUES):  # YAML aliases can make a few lines expand to billions
        raise ConfigError(f"{path}: more than {MAX_CONFIG_VALUES} values once its aliases are expanded")
    return OmegaConf.create(_upgrade_export(data) if export else data)


MAX_CONFIG_VALUES = 100_000  # a whole resolved config (paper recipe, joint stage) has 257


def _too_many_values(data: Any, limit: int) -> bool:
    """Whether the tree ``data`` (shared subtrees counted each time they appear) has more than ``limit`` nodes;
    stops counting past the limit."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


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
    for layer, source in layers:
        _refuse_old_keys(layer, source)
    return _build(layers, schema)


def load_export_config(path: str | Path) -> Any:
    """The ``config.yaml`` of an export as :func:`load_config` builds it, also when an earlier version wrote it
    (keys that have moved since are read at their new place, removed ones dropped).

    Raises:
        ConfigError: as :func:`load_config`.
    """
    return _build([(_read_yaml(Path(path), export=True), str(path))], ExperimentConfig)


def _build(layers: Sequence[tuple[DictConfig, str]], schema: type) -> Any:
    """The read-only config of the schema with a preset and the ``(layer, source)`` pairs merged in order."""
    preset = "tiny"
    for layer, _ in layers:
        preset = layer.get("preset", preset)
    base = OmegaConf.structured(schema)
    if "model" in base:
        base = _merge(base, OmegaConf.create({"preset": preset}), "preset")
        base.model = OmegaConf.structured(model_preset(str(preset)))
    for layer, source in layers:
        base = _merge(base, layer, source)
    try:
        missing = sorted(OmegaConf.missing_keys(base))
        if missing:
            raise ConfigError(f"missing required config value(s): {', '.join(missing)}")
        _check_values(base, "", layers)
    except OmegaConfBaseException as err:  # an interpolation ${...} that does not resolve
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{_source_of(key, layers)}: bad config value {key}: {str(err).splitlines()[0]}") from None
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
    except (ValueError, ArithmeticError) as err:  # a check that does not name its field: name the section
        problem = repr(err) if isinstance(err, ArithmeticError) else str(err)  # e.g. a division by a zero size
        raise ConfigError(f"{_source_of(path.rstrip('.'), layers)}: bad config value in {path.rstrip('.')}: "
                          f"{problem}") from None


def _source_of(key: str, layers: Sequence[tuple[DictConfig, str]]) -> str:
    """The last layer that sets ``key``, where its value comes from."""
    for layer, source in reversed(layers):
        if _node_at(layer, key) is not None:  # without resolving an interpolation that may be the problem
            return source
    return "defaults"


def save_config(config: Any, path: str | Path) -> None:
    """Writes the fully resolved config as YAML (reloadable with :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(config, resolve=True))


def to_object(config: Any) -> Any:
    """The config as plain dataclass instances (for constructing modules)."""
    return OmegaConf.to_object(config)
