from pathlib import Path

import pytest

from e2e_tts.config import ConfigError, load_config, model_preset, save_config, to_object


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
    ("model.llm.prompt_pairs=2", "model.llm.prompt_pairs"),
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
