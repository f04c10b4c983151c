import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from e2e_tts.config import (MOVED_KEYS, REMOVED_KEYS, ConfigError, load_config, load_export_config, model_preset,
                            save_config, to_object)
from e2e_tts.models.llm import GuideConfig
from e2e_tts.stage import MultiTaskConfig


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_are_the_tiny_preset():
    config = load_config()
    assert config.preset == "tiny"
    assert to_object(config.model) == model_preset("tiny")


def test_files_then_overrides_merge_in_order(tmp_path):
    first = write(tmp_path / "a.yaml", "seed: 1\nmodel:\n  llm:\n    num_layers: 3\n")
    second = write(tmp_path / "b.yaml", "seed: 2\n")
    config = load_config([first, second], ["model.llm.hidden_size=128"])
    assert config.seed == 2 and config.model.llm.num_layers == 3 and config.model.llm.hidden_size == 128


def test_preset_selects_paper_sizes_and_files_still_override(tmp_path):
    path = write(tmp_path / "p.yaml", "preset: paper\nmodel:\n  flow:\n    depth: 2\n")
    config = load_config([path])
    paper = model_preset("paper")
    assert config.model.llm.hidden_size == paper.llm.hidden_size
    assert config.model.flow.depth == 2
    assert load_config(overrides=["preset=paper"]).model.reward == to_object(load_config([path]).model).reward


@pytest.mark.parametrize("old, new", sorted(MOVED_KEYS.items()))
def test_a_moved_key_is_refused_naming_its_new_key(tmp_path, old, new):
    *parents, name = old.split(".")
    path = write(tmp_path / "old.yaml", "".join(f"{'  ' * depth}{part}:\n" for depth, part in enumerate(parents))
                 + f"{'  ' * len(parents)}{name}: 0.1\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: {old} is now {new}')}"):
        load_config([path])
    with pytest.raises(ConfigError, match=f"^command line: {re.escape(old)} is now {re.escape(new)}"):
        load_config(overrides=[f"{old}=0.1"])


@pytest.mark.parametrize("key", sorted(REMOVED_KEYS))
def test_a_removed_key_is_refused_with_the_reason(key):
    """Above all the values derived when the system is built (they used to be settable, and silently overwritten)."""
    with pytest.raises(ConfigError, match=f"^command line: {re.escape(key)} cannot be set: {REMOVED_KEYS[key]}"):
        load_config(overrides=[f"{key}=4"])


def old_export_config(tmp_path, guide_weight: float) -> Path:
    """A config.yaml as exports wrote it before the training choices left the model configs."""
    config = yaml.safe_load(OmegaConf.to_yaml(load_config()))
    del config["stage"]["multitask"], config["model"]["llm"]["attn_implementation"]
    config["model"]["llm"].update(codebook_dim=4, guide_weight=guide_weight, guide_layers=[1, 2], guide_heads=2,
                                  guide_sigma=0.3, speech_input_noise=0.2, prompt_pairs=0.5)
    config["model"]["flow"].update(codebook_dim=4, speaker_embedding_dim=None)
    config["model"]["reward"].update(codebook_dim=4, num_speakers=16, token_noise_prob=0.1)
    return write(tmp_path / "config.yaml", yaml.safe_dump(config))


def test_an_export_written_before_the_move_loads_with_its_keys_moved(tmp_path):
    config = load_export_config(old_export_config(tmp_path, guide_weight=1.0))
    assert to_object(config.stage.multitask) == MultiTaskConfig(
        prompt_pairs=0.5, llm_input_noise=0.2, reward_input_noise=0.1,
        guide=GuideConfig(weight=1.0, layers=[1, 2], heads=2, sigma=0.3))
    assert "codebook_dim" not in config.model.llm and "num_speakers" not in config.model.reward
    # It guided attention on the eager path, and synthesised on it: so it still does.
    assert config.model.llm.attn_implementation == "eager"
    assert load_export_config(old_export_config(tmp_path, guide_weight=0.0)).model.llm.attn_implementation == "sdpa"
    # An export of today loads as it was written.
    save_config(load_config(overrides=["stage.multitask.prompt_pairs=0.25"]), tmp_path / "new.yaml")
    assert load_export_config(tmp_path / "new.yaml") == load_config(overrides=["stage.multitask.prompt_pairs=0.25"])


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  llm:\n    hiden_size: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert "hiden_size" in str(err.value) and str(path) in str(err.value)


def test_wrong_type_names_key_and_source(tmp_path):
    path = write(tmp_path / "bad.yaml", "engine:\n  zero_stage: two\n")
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert "engine.zero_stage" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["seed=abc"])
    assert "seed" in str(err.value) and "command line" in str(err.value)


@pytest.mark.parametrize("text,fragment", [
    ("seed: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_malformed_files(tmp_path, text, fragment):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=fragment):
        load_config([path])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["seed"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(overrides=["preset=huge"])


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(overrides=["preset=paper", "seed=7", "stage.loss_weights.llm=0.1",
                                    "data.shards=[a.list,b.tar]"])
    save_config(config, tmp_path / "resolved.yaml")
    reloaded = load_config([tmp_path / "resolved.yaml"])
    assert reloaded == config
    assert to_object(reloaded) == to_object(config)


def test_config_is_read_only():
    config = load_config()
    with pytest.raises(Exception):
        config.seed = 3


@pytest.mark.parametrize("override, key", [
    ("engine.zero_stage=7", "engine.zero_stage"),
    ("engine.precision=fp16", "engine.precision"),
    ("engine.gradient_accumulation_steps=0", "engine.gradient_accumulation_steps"),
    ("engine.save_every=0", "engine.save_every"),
    ("stage.objective=sft", "stage.objective"),
    ("stage.trainable=[llm,tokenizr]", "stage.trainable"),
    ("stage.max_steps=0", "stage.max_steps"),
    ("stage.max_steps=-5", "stage.max_steps"),
    ("stage.optim.lr=-0.001", "stage.optim.lr"),
    ("stage.optim.schedule=step", "stage.optim.schedule"),
    ("stage.optim.betas=[0.9,1.5]", "stage.optim.betas"),
    ("stage.grpo.top_p=0", "stage.grpo.top_p"),
    ("stage.gumbel.tau_end=0", "stage.gumbel.tau_end"),
    ("data.max_frames=0", "data.max_frames"),
    ("data.max_error_fraction=2", "data.max_error_fraction"),
    ("data.resampled=true", "data.resampled"),
])
def test_bad_values_are_refused_at_load_naming_key_and_source(override, key):
    """`e2e-tts config` printed these and training failed later (or ran, like max_steps=0 exporting untrained
    weights): each is refused when the config is loaded, naming the dotted key and where it was set."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert f"{key}:" in str(err.value) and str(err.value).startswith("command line:"), str(err.value)


def test_bad_value_in_a_file_names_the_file_that_set_it(tmp_path):
    bad = write(tmp_path / "bad.yaml", "engine:\n  zero_stage: 7\n")
    other = write(tmp_path / "other.yaml", "seed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config([bad, other])
    assert str(err.value).startswith(f"{bad}: bad config value engine.zero_stage: must be one of 0, 1, 2, 3, got 7")
    # a component whose check does not name its field: the section is named
    with pytest.raises(ConfigError) as err:
        load_config([other], ["text.max_chars=-1"])
    assert str(err.value).startswith("command line: bad config value in text: ")
    assert "max_chars" in str(err.value)


@pytest.mark.parametrize("override, key", [
    ("model.llm.hidden_size=0", "model.llm.hidden_size"),
    ("model.llm.hidden_size=-256", "model.llm.hidden_size"),
    ("model.llm.hidden_size=250", "model.llm.hidden_size"),  # not divisible by its 4 heads
    ("model.llm.num_heads=0", "model.llm.num_heads"),  # was named by section only, after a ZeroDivisionError
    ("model.llm.num_kv_heads=0", "model.llm.num_kv_heads"),
    ("model.llm.num_heads=3", "model.llm.num_heads"),  # not a multiple of its 2 key/value heads
    ("model.llm.head_dim=0", "model.llm.head_dim"),
    ("model.llm.intermediate_size=0", "model.llm.intermediate_size"),
    ("model.llm.num_layers=-1", "model.llm.num_layers"),
    ("stage.multitask.prompt_pairs=2", "stage.multitask.prompt_pairs"),
    ("stage.multitask.llm_input_noise=1", "stage.multitask.llm_input_noise"),
    ("stage.multitask.reward_input_noise=-0.1", "stage.multitask.reward_input_noise"),
    ("stage.multitask.guide.weight=1", "stage.multitask.guide.weight"),  # without guided layers
    ("stage.multitask.guide.sigma=0", "stage.multitask.guide.sigma"),
    ("model.llm.attn_implementation=flash", "model.llm.attn_implementation"),
    ("model.flow.nfe=0", "model.flow.nfe"),
    ("model.flow.dim=0", "model.flow.dim"),
    ("model.flow.heads=0", "model.flow.heads"),
    ("model.flow.dim=250", "model.flow.dim"),  # not divisible by its 4 heads
    ("model.flow.depth=-1", "model.flow.depth"),
    ("model.flow.n_mels=0", "model.flow.n_mels"),
    ("model.flow.schedule=exponential", "model.flow.schedule"),
    ("model.tokenizer.dim=0", "model.tokenizer.dim"),
    ("model.tokenizer.heads=0", "model.tokenizer.heads"),
    ("model.tokenizer.dim=250", "model.tokenizer.dim"),
    ("model.tokenizer.levels=[0]", "model.tokenizer.levels"),
    ("model.reward.encoder_dim=0", "model.reward.encoder_dim"),
    ("model.reward.decoder_heads=0", "model.reward.decoder_heads"),
    ("model.reward.encoder_dim=100", "model.reward.encoder_dim"),  # 4 heads of odd width 25
    ("model.reward.max_text_length=0", "model.reward.max_text_length"),
    ("model.vocoder.dim=0", "model.vocoder.dim"),
    ("model.vocoder.hop_length=600", "model.vocoder.hop_length"),
    ("model.vocoder.n_fft=1023", "model.vocoder.n_fft"),
])
def test_bad_model_sizes_are_refused_at_load_naming_the_full_key(override, key):
    """The model configs' checks name their field (e2e_tts.checks.FieldError): model.llm.hidden_size=0 and
    model.flow.nfe=0 were accepted, model.llm.num_heads=0 was reported by section only."""
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert str(err.value).startswith(f"command line: bad config value {key}: "), str(err.value)


def test_every_shipped_stage_and_recipe_passes_the_value_checks():
    root = Path(__file__).resolve().parents[1]
    for recipe in sorted((root / "recipes").glob("*/config.yaml")):
        for stage in sorted((root / "stages").glob("*.yaml")):
            load_config([recipe, stage])
