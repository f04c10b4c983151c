"""TTSSystem and the objectives across modules: where gradients go, what stays frozen, export round trip."""

import dataclasses
import json
import re
import shutil
import subprocess

import pytest
import torch
import transformers
import yaml

from e2e_tts.audio import AudioConfig, MelSpectrogram, load_audio
from e2e_tts.config import load_config, model_preset, to_object
from e2e_tts.objectives.e2e import EndToEndObjective
from e2e_tts.objectives.prompting import prefix_partners, same_speaker_partners
from e2e_tts.objectives.multitask import MultiTaskObjective
from e2e_tts.models.llm import GuideConfig
from e2e_tts.stage import GumbelConfig, MultiTaskConfig, StageConfig
from e2e_tts.system import CONFIG_FILE, LLM_DECODER_FILE, MODULES, TRAINED_FILE, TTSSystem, read_trained
from e2e_tts.text import PHONEME_INVENTORY_VERSION, ByteTokenizer
from shared import MICRO_MODEL_OVERRIDES


def small_models():
    models = model_preset("tiny")
    return dataclasses.replace(
        models,
        tokenizer=dataclasses.replace(models.tokenizer, dim=48, depth=2, heads=2),
        llm=dataclasses.replace(models.llm, hidden_size=48, num_layers=2, num_heads=2, num_kv_heads=1,
                                intermediate_size=96),
        flow=dataclasses.replace(models.flow, dim=48, depth=2, heads=2),
        reward=dataclasses.replace(models.reward, encoder_dim=48, encoder_depth=2, encoder_heads=2, decoder_dim=48,
                                   decoder_depth=1, decoder_heads=2, dropout=0.0),
        vocoder=dataclasses.replace(models.vocoder, dim=16, intermediate_dim=32, num_blocks=1))


def make_batch(batch_size=3, frames=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([frames, frames - 6, frames - 11])[:batch_size]
    mel = torch.randn(batch_size, frames, 80, generator=gen) * 2 - 5
    mel_mask = torch.arange(frames)[None] < lengths[:, None]
    text_lengths = torch.tensor([9, 7, 5])[:batch_size]
    text_ids = torch.randint(0, 256, (batch_size, 9), generator=gen)
    text_mask = torch.arange(9)[None] < text_lengths[:, None]
    return {"mel": mel, "mel_mask": mel_mask, "text_ids": text_ids, "text_mask": text_mask,
            "speaker": ["a", "b", "a"][:batch_size], "keys": [f"seed{seed}_{i}" for i in range(batch_size)]}


@pytest.fixture
def system():
    torch.manual_seed(0)
    return TTSSystem(small_models(), ByteTokenizer(), speakers=["a", "b"])


def grads_of(module):
    return [p.grad for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("consumer", ["llm", "flow", "reward"])
def test_joint_stage_gradients_reach_the_tokenizer_from_each_consumer(system, consumer):
    stage = StageConfig(trainable=["tokenizer", consumer], loss_weights={consumer: 1.0})
    loss, _ = MultiTaskObjective(system, stage)(make_batch())
    loss.backward()
    encoder_grads = [g for g in grads_of(system.tokenizer) if g is not None]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)


def test_guided_attention_adds_to_the_llm_loss_in_training_only(system):
    guide = MultiTaskConfig(guide=GuideConfig(weight=0.5, layers=[1], heads=1))
    objective = MultiTaskObjective(system, StageConfig(trainable=["tokenizer", "llm"], loss_weights={"llm": 1.0},
                                                       multitask=guide))
    _, metrics = objective.train()(make_batch())
    assert 0 < metrics["llm_guide"] < 1
    assert metrics["llm"] == pytest.approx(metrics["llm_nll"] + 0.5 * metrics["llm_guide"], rel=1e-5)
    _, metrics = objective.eval()(make_batch())
    assert "llm_guide" not in metrics and metrics["llm"] == metrics["llm_nll"]


def test_validation_scores_the_own_tokens_behind_a_same_speaker_prompt(system):
    """In eval mode rows 0 and 2 (speaker a) are also scored behind each other; the result equals the LLM run on
    each concatenated row alone, counting only the positions after the prompt's speech (own tokens and EOS)."""
    system.set_trainable(["llm"])
    objective = MultiTaskObjective(system, StageConfig(trainable=["llm"], loss_weights={"llm": 1.0})).eval()
    batch = make_batch()
    _, metrics = objective(batch)
    with torch.no_grad():
        tokens = system.tokenizer(batch["mel"], batch["mel_mask"])
        nll, correct = [], []
        for row, partner in ((0, 2), (2, 0)):
            text = torch.cat([batch["text_ids"][b][batch["text_mask"][b]] for b in (partner, row)])[None]
            prompt = tokens.ids[partner][tokens.mask[partner]]
            speech = torch.cat([prompt, tokens.ids[row][tokens.mask[row]]])[None]
            out = system.llm(text, torch.ones_like(text, dtype=torch.bool), speech,
                             torch.ones_like(speech, dtype=torch.bool), system.codebook(), speech_ids=speech)
            logits, targets = out.logits[0, len(prompt):], out.targets[0, len(prompt):]
            nll.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
            correct.append(logits.argmax(-1) == targets)
    assert metrics["llm_nll_prompted"] == pytest.approx(torch.cat(nll).mean().item(), rel=1e-4)
    assert metrics["llm_acc_prompted"] == pytest.approx(torch.cat(correct).float().mean().item())
    _, metrics = objective.train()(batch)
    assert "llm_acc_prompted" not in metrics
    _, metrics = objective.eval()({**batch, "speaker": ["a", "b", "c"]})
    assert "llm_acc_prompted" not in metrics  # no row has a partner


def test_separate_stage_never_touches_the_frozen_tokenizer(system):
    system.set_trainable(["llm", "flow", "reward"])
    stage = StageConfig(trainable=["llm", "flow", "reward"], loss_weights={"llm": 1.0, "flow": 1.0, "reward": 1.0})
    objective = MultiTaskObjective(system, stage).train()
    assert not system.tokenizer.training and system.llm.training
    loss, _ = objective(make_batch())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in system.tokenizer.parameters())


@pytest.mark.parametrize("loss_name", ["flow", "asr", "speaker"])
def test_e2e_stage_llm_learns_through_each_frozen_consumer(system, loss_name):
    system.set_trainable(["llm"])
    stage = StageConfig(name="e2e", objective="e2e", trainable=["llm"], loss_weights={loss_name: 1.0}, kl_beta=0.0,
                        gumbel=GumbelConfig(tau_start=1.0, tau_end=1.0, hard=True))
    objective = EndToEndObjective(system, stage).train()
    frozen_before = {name: [p.detach().clone() for p in getattr(system, name).parameters()]
                     for name in ("tokenizer", "flow", "reward")}
    loss, metrics = objective(make_batch())
    loss.backward()
    llm_grads = [g for g in grads_of(system.llm) if g is not None]
    assert llm_grads and sum(float(g.abs().sum()) for g in llm_grads) > 0, metrics
    for name in ("tokenizer", "flow", "reward"):
        module = getattr(system, name)
        assert all(p.grad is None for p in module.parameters())
        assert all(torch.equal(a, b) for a, b in zip(frozen_before[name], module.parameters()))
        assert not module.training


def test_e2e_kl_is_zero_at_the_start_and_reference_is_frozen(system):
    system.set_trainable(["llm"])
    stage = StageConfig(name="e2e", objective="e2e", trainable=["llm"], loss_weights={"flow": 1.0}, kl_beta=0.1)
    objective = EndToEndObjective(system, stage).train()
    _, metrics = objective(make_batch())
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference starts as a copy of the policy
    assert all(not p.requires_grad for p in objective.reference(system.llm).parameters())
    # Held outside the module tree: no checkpoint or export holds a second LLM.
    assert not any(key.startswith("reference") for key in objective.state_dict())


def test_stage_specs_with_inconsistent_weights_are_refused(system):
    with pytest.raises(ValueError, match="frozen"):
        MultiTaskObjective(system, StageConfig(trainable=["llm"], loss_weights={"llm": 1.0, "flow": 1.0}))
    with pytest.raises(ValueError, match="no non-zero loss weight"):
        MultiTaskObjective(system, StageConfig(trainable=["llm", "flow"], loss_weights={"llm": 1.0}))
    with pytest.raises(ValueError, match="LLM only"):
        EndToEndObjective(system, StageConfig(objective="e2e", trainable=["llm", "flow"], loss_weights={"flow": 1}))
    with pytest.raises(ValueError, match="unknown module"):
        system.set_trainable(["decoder"])


def test_same_speaker_partners_prompt_each_row_with_another_row_of_its_speaker():
    assert same_speaker_partners(["a", "b", "a", "c", "a"]) == [2, None, 4, None, 0]
    assert same_speaker_partners(["a"]) == [None]


def test_prefix_partners_puts_a_same_speaker_utterance_before_the_chosen_rows():
    text = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    text_mask = text != 0
    speech_ids = torch.tensor([[10, 11, 0], [12, 13, 14], [15, 16, 0]])
    speech_mask = torch.tensor([[True, True, False], [True, True, True], [True, True, False]])
    codes = speech_ids[..., None].float().repeat(1, 1, 2).requires_grad_()  # (B, S, Dc), as in the joint stage
    speakers = ["a", "b", "a"]  # rows 0 and 2 are partners; row 1 has none

    new_text, new_text_mask, new_codes, new_mask, new_ids = prefix_partners(
        text, text_mask, codes, speech_mask, speech_ids, speakers, fraction=1.0)
    assert [row[m].tolist() for row, m in zip(new_text, new_text_mask)] == [[6, 1, 2, 3], [4, 5], [1, 2, 3, 6]]
    assert [row[m].tolist() for row, m in zip(new_ids, new_mask)] == [[15, 16, 10, 11], [12, 13, 14],
                                                                       [10, 11, 15, 16]]
    assert torch.equal(new_codes[..., 0].detach().long() * new_mask, new_ids * new_mask)
    assert not new_codes[~new_mask].any() and not new_ids[~new_mask].any()  # zero at padding
    new_codes.sum().backward()
    assert codes.grad[0, :2].eq(2).all() and codes.grad[1, :3].eq(1).all()  # row 0 is also row 2's prompt
    assert not codes.grad[0, 2].any()  # padding feeds nothing

    unchanged = prefix_partners(text, text_mask, speech_ids, speech_mask, speech_ids, speakers, fraction=0.0)
    assert torch.equal(unchanged[0], text) and torch.equal(unchanged[4], speech_ids)


def test_prompt_pairs_lengthen_the_llm_rows_in_training_only(system):
    objective = MultiTaskObjective(system, StageConfig(trainable=["tokenizer", "llm"], loss_weights={"llm": 1.0},
                                                       multitask=MultiTaskConfig(prompt_pairs=1.0)))
    seen = []
    forward = system.llm.forward
    system.llm.forward = lambda *args, **kwargs: seen.append(args[3].sum(1).tolist()) or forward(*args, **kwargs)
    batch = make_batch()  # speakers a, b, a: rows 0 and 2 prompt each other
    objective.train()(batch)
    objective.eval()(batch)
    trained, evaluated, behind_prompt = seen  # eval mode also scores rows 0 and 2 behind each other
    assert trained[1] == evaluated[1] and trained[0] == trained[2] == evaluated[0] + evaluated[2]
    assert behind_prompt == [trained[0], trained[2]]


def test_export_round_trip(system, tmp_path):
    config = load_config(overrides=["text.tokenizer=bytes"])
    system.export(tmp_path, config)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(f"{m}.safetensors" for m in MODULES)
    # the export's config describes the shrunk models: rebuild from the same dataclasses instead
    rebuilt = TTSSystem(small_models(), ByteTokenizer(), speakers=["a", "b"])
    rebuilt.load_modules(tmp_path)
    for (name, a), (_, b) in zip(system.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name
    (tmp_path / "flow.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="flow.safetensors"):
        rebuilt.load_modules(tmp_path)


def test_an_export_written_before_the_training_keys_moved_loads_and_computes_as_before(tmp_path):
    """Its config.yaml names the guide, noise and prompt pairs under model.llm and the derived sizes: it loads,
    and its LLM runs on the eager attention its guided training (and synthesis) ran on."""
    config = load_config(overrides=MICRO_MODEL_OVERRIDES)
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), speakers=["a", "b"]).eval()
    system.export(tmp_path, config)
    old = yaml.safe_load((tmp_path / CONFIG_FILE).read_text())
    del old["stage"]["multitask"], old["model"]["llm"]["attn_implementation"]
    old["model"]["llm"].update(codebook_dim=3, guide_weight=1.0, guide_layers=[0], guide_heads=1, guide_sigma=0.2,
                               speech_input_noise=0.2, prompt_pairs=0.5)
    old["model"]["flow"].update(codebook_dim=3, speaker_embedding_dim=None)
    old["model"]["reward"].update(codebook_dim=3, num_speakers=2, token_noise_prob=0.1)
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(old))

    loaded, loaded_config = TTSSystem.from_export(tmp_path)
    assert loaded_config.stage.multitask.guide.layers == [0] and loaded_config.stage.multitask.prompt_pairs == 0.5
    assert loaded.llm.decoder.config._attn_implementation == "eager"
    batch = make_batch()
    text_ids, text_mask = batch["text_ids"], batch["text_mask"]
    speech_ids, speech_mask = system.tokenizer.encode(batch["mel"], batch["mel_mask"])
    system.llm.decoder.set_attn_implementation("eager")
    torch.testing.assert_close(loaded.llm(text_ids, text_mask, speech_ids, speech_mask, loaded.codebook()).logits,
                               system.llm(text_ids, text_mask, speech_ids, speech_mask, system.codebook()).logits,
                               rtol=0, atol=0)


def test_an_llm_with_tied_embeddings_round_trips_through_an_export(tmp_path):
    """Its output head shares the input embedding's memory, which safetensors alone refuses to write."""
    config = load_config(overrides=[*MICRO_MODEL_OVERRIDES, "model.llm.tie_word_embeddings=true"])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), speakers=["a"])
    loaded, _ = TTSSystem.from_export(system.export(tmp_path, config))
    head, embedding = loaded.llm.decoder.get_output_embeddings().weight, loaded.llm.decoder.get_input_embeddings().weight
    assert head is embedding and torch.equal(embedding, system.llm.decoder.get_input_embeddings().weight)


def test_an_export_of_an_llm_started_from_a_checkpoint_loads_without_the_checkpoint(tmp_path):
    """The export records the decoder's shape (llm_decoder.json), so it loads where the local checkpoint it started
    from is gone, with the shape of the checkpoint (not of the config's size fields); an export without the record
    (written before it existed) still rebuilds the decoder from the checkpoint."""
    checkpoint = tmp_path / "checkpoint"
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=ByteTokenizer().vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, rope_theta=5000.0)).save_pretrained(checkpoint)
    config = load_config(overrides=[*MICRO_MODEL_OVERRIDES, f"model.llm.pretrained_path={checkpoint}"])
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), speakers=["a"]).eval()
    export = system.export(tmp_path / "export", config)
    with_checkpoint, _ = TTSSystem.from_export(export)
    shutil.rmtree(checkpoint)
    loaded, _ = TTSSystem.from_export(export)
    assert loaded.llm.hidden_size == 48 and loaded.llm.decoder.config.rope_parameters["rope_theta"] == 5000.0
    batch = make_batch()
    speech_ids, speech_mask = system.tokenizer.encode(batch["mel"], batch["mel_mask"])
    logits = [model.llm(batch["text_ids"], batch["text_mask"], speech_ids, speech_mask, model.codebook()).logits
              for model in (system, with_checkpoint, loaded)]
    torch.testing.assert_close(logits[2], logits[0], rtol=0, atol=0)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)
    (export / LLM_DECODER_FILE).unlink()
    with pytest.raises(OSError, match="checkpoint"):
        TTSSystem.from_export(export)
    (export / LLM_DECODER_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=LLM_DECODER_FILE):
        TTSSystem.from_export(export)


def test_id_embeddings_learn_in_every_consumer_and_round_trip_through_an_export(tmp_path):
    models = small_models()
    models = dataclasses.replace(models, **{name: dataclasses.replace(getattr(models, name), id_embedding=True)
                                            for name in ("llm", "flow", "reward")})
    torch.manual_seed(0)
    system = TTSSystem(models, ByteTokenizer(), speakers=["a", "b"])
    system.set_trainable(["llm", "flow", "reward"])
    objective = MultiTaskObjective(system, StageConfig(trainable=["llm", "flow", "reward"],
                                                       loss_weights={"llm": 1.0, "flow": 1.0, "reward": 1.0})).train()
    loss, _ = objective(make_batch())
    loss.backward()
    for name in ("llm", "flow", "reward"):
        table = getattr(system, name).speech_embedding.table
        assert table.num_embeddings == system.tokenizer.codebook_size and table.weight.grad.abs().sum() > 0, name
    system.export(tmp_path, load_config(overrides=["text.tokenizer=bytes"]))
    rebuilt = TTSSystem(models, ByteTokenizer(), speakers=["a", "b"])
    rebuilt.load_modules(tmp_path)
    assert torch.equal(rebuilt.flow.speech_embedding.table.weight, system.flow.speech_embedding.table.weight)


def test_export_records_the_trained_modules_across_init_from(system, tmp_path):
    def export(name, *overrides):
        config = load_config(overrides=["text.tokenizer=bytes", *overrides])
        return system.export(tmp_path / name, config)

    joint = export("joint", "stage.trainable=[tokenizer,llm,flow,reward]")
    assert read_trained(joint) == {"tokenizer": True, "llm": True, "flow": True, "reward": True, "vocoder": False}
    vocoder = export("vocoder", f"stage.init_from={joint}", "stage.trainable=[vocoder]")
    assert read_trained(vocoder) == dict.fromkeys(MODULES, True)
    # Modules not loaded from init_from start fresh: untrained, whatever the earlier export says of them.
    partial = export("partial", f"stage.init_from={vocoder}", "stage.init_modules=[tokenizer,vocoder]",
                     "stage.trainable=[llm]")
    assert read_trained(partial) == {"tokenizer": True, "llm": True, "flow": False, "reward": False,
                                     "vocoder": True}
    # An export from before the record: what it held is unknown, not untrained.
    (joint / TRAINED_FILE).unlink()
    assert read_trained(joint) is None
    after_old = export("after_old", f"stage.init_from={joint}", "stage.trainable=[vocoder]")
    assert read_trained(after_old) == {**dict.fromkeys(MODULES, None), "vocoder": True}
    (joint / TRAINED_FILE).write_text(json.dumps({"vocoder": "yes"}))
    with pytest.raises(ValueError, match=f"{joint / TRAINED_FILE}: expected"):
        read_trained(joint)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:len(data) // 2], "not a readable safetensors file"),  # truncated
    (lambda data: bytes(range(256)) * 8, "not a readable safetensors file"),  # random bytes
    (lambda data: b"", "not a readable safetensors file"),
])
def test_corrupt_weights_are_named_with_what_is_wrong(system, tmp_path, damage, message):
    system.export(tmp_path, load_config(overrides=["text.tokenizer=bytes"]))
    path = tmp_path / "vocoder.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        system.load_modules(tmp_path)


def test_weights_with_nan_or_the_wrong_shape_are_named(system, tmp_path):
    from safetensors.torch import load_file, save_file

    system.export(tmp_path, load_config(overrides=["text.tokenizer=bytes"]))
    path = tmp_path / "flow.safetensors"
    tensors = load_file(str(path))
    key = next(iter(tensors))
    save_file({**tensors, key: torch.full_like(tensors[key], float("nan"))}, str(path))
    with pytest.raises(ValueError, match=f"{path}: tensor '{key}' holds NaN or Inf"):
        system.load_modules(tmp_path)
    save_file({**tensors, key: torch.zeros(3)}, str(path))
    with pytest.raises(ValueError, match=f"(?s){path}: does not fit the flow of .*size mismatch for {key}"):
        system.load_modules(tmp_path)


@pytest.mark.parametrize("name, content, message", [
    ("speakers.json", b'["a", "b"', "not a JSON list of speaker names"),
    ("speakers.json", b'{"a": 1}', "not a JSON list of speaker names"),
    ("text_tokenizer.json", b"\x00\xff", "not a saved text tokenizer"),
    ("text_tokenizer.json", json.dumps({"kind": "phonemes", "inventory": PHONEME_INVENTORY_VERSION}).encode(),
     "not a saved text tokenizer: KeyError('language')"),
    ("config.yaml", b"model: [", "not valid YAML"),
])
def test_a_damaged_export_file_is_named(system, tmp_path, name, content, message):
    system.export(tmp_path, load_config(overrides=["text.tokenizer=bytes"]))
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name}: {message}")):
        TTSSystem.from_export(tmp_path)


def test_speaker_ids_mark_unknown_speakers(system):
    assert system.speaker_ids(["b", "zzz", "a"], torch.device("cpu")).tolist() == [1, -1, 0]


def flite_mels(tmp_path, sentences):
    config = AudioConfig()
    mel_fn = MelSpectrogram(config)
    mels = []
    for i, text in enumerate(sentences):
        path = tmp_path / f"{i}.wav"
        subprocess.run(["flite", "-voice", "rms", "-t", text, "-o", str(path)], check=True)
        wav, _ = load_audio(path, config.sample_rate)
        mels.append(mel_fn(torch.from_numpy(wav))[0])
    frames = max(m.shape[0] for m in mels) // 2 * 2
    batch = torch.full((len(mels), frames, 80), -11.5)
    mask = torch.zeros(len(mels), frames, dtype=torch.bool)
    for i, m in enumerate(mels):
        n = min(frames, m.shape[0]) // 2 * 2
        batch[i, :n], mask[i, :n] = m[:n], True
    return batch, mask


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
def test_tokenizer_and_flow_overfit_real_utterances(tmp_path):
    """Joint tokenizer + flow on three real utterances: the mel sampled from the learnt tokens approaches the target."""
    torch.manual_seed(0)
    mel, mask = flite_mels(tmp_path, ["Open the door.", "It was a cold day.", "She sold the house."])
    models = small_models()
    models = dataclasses.replace(
        models, tokenizer=dataclasses.replace(models.tokenizer, dim=64, depth=2),
        flow=dataclasses.replace(models.flow, dim=128, depth=3, heads=4, cfg_dropout=0.0))
    system = TTSSystem(models, ByteTokenizer(), speakers=["rms"])
    system.set_trainable(["tokenizer", "flow"])
    objective = MultiTaskObjective(system, StageConfig(trainable=["tokenizer", "flow"], loss_weights={"flow": 1.0}))
    objective.train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=2e-3)
    batch = {"mel": mel, "mel_mask": mask, "text_ids": torch.zeros(3, 1, dtype=torch.long),
             "text_mask": torch.ones(3, 1, dtype=torch.bool), "speaker": ["rms"] * 3}
    for _ in range(250):
        loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    system.eval()
    with torch.no_grad():
        tokens = system.tokenizer(mel, mask)
        sampled, sampled_mask = system.flow.sample(tokens.ids, tokens.mask, system.codebook(), nfe=10,
                                                   cfg_strength=0.0, generator=torch.Generator().manual_seed(0))
    valid = mask[:, :sampled.shape[1]] & sampled_mask
    error = (sampled - mel[:, :sampled.shape[1]]).abs()[valid].mean()
    baseline = (mel[mask].mean(0) - mel[mask]).abs().mean()  # predicting the average frame
    assert error < 0.5 * baseline, (float(error), float(baseline))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
def test_reward_and_llm_overfit_the_tokens_of_real_utterances(tmp_path):
    """On the tokenizer's ids of real speech, the reward model learns to transcribe it and the LLM to say it."""
    torch.manual_seed(0)
    texts = ["Open the door.", "It was a cold day.", "She sold the house."]
    mel, mask = flite_mels(tmp_path, texts)
    system = TTSSystem(small_models(), ByteTokenizer(), speakers=["rms"])
    tokens = system.tokenizer.encode(mel, mask)
    ids, token_mask = tokens
    text_ids = [torch.tensor(list(t.encode())) for t in texts]
    text_batch = torch.nn.utils.rnn.pad_sequence(text_ids, batch_first=True)
    text_mask = torch.arange(text_batch.shape[1])[None] < torch.tensor([len(t) for t in text_ids])[:, None]
    batch = {"mel": mel, "mel_mask": mask, "text_ids": text_batch, "text_mask": text_mask, "speaker": ["rms"] * 3,
             "keys": texts}
    system.set_trainable(["llm", "reward"])
    objective = MultiTaskObjective(system, StageConfig(trainable=["llm", "reward"],
                                                       loss_weights={"llm": 1.0, "reward": 1.0})).train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(200):
        loss, _ = objective(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    system.eval()
    transcripts = system.reward.transcribe_attention(ids, token_mask, system.codebook(), max_len=40)
    assert [bytes(t).decode(errors="replace") for t in transcripts] == texts
    generated = system.llm.generate(text_ids, system.codebook(), temperature=0.0, min_len_ratio=0.0,
                                    max_len_ratio=10.0)
    for row, (target, valid) in enumerate(zip(ids, token_mask)):
        target = target[valid]
        agreement = (generated[row][:len(target)] == target[:len(generated[row])]).float().mean()
        assert len(generated[row]) == len(target) and agreement > 0.9, (row, float(agreement))
