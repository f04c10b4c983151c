"""ASR and speaker-similarity judges: real offline models where the packages ship them, tiny random models for the
official architectures (Whisper, WavLM + ECAPA-TDNN) built and loaded from local files exactly as the real ones."""

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from e2e_tts.audio import resample
from e2e_tts.eval.ecapa_tdnn import PRESETS, EcapaTdnnWavLM, WavLM
from e2e_tts.eval.similarity import build_similarity, mean_similarity, sinc_resample
from e2e_tts.scoring.asr import parse_asr_spec
from e2e_tts.scoring.verifiers import build_asr
from e2e_tts.scoring.wer import score_utterance
from shared import flite

CARDS = Path("/usr/share/pocketsphinx/test/data/cards")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------------------------
# ASR
# ---------------------------------------------------------------------------------------------------------------

def test_asr_spec_parsing():
    assert parse_asr_spec("pocketsphinx").path is None
    assert parse_asr_spec("whisper:/m/whisper-large-v3").path == "/m/whisper-large-v3"
    assert parse_asr_spec("rm-audio:C:/ckpt").path == "C:/ckpt"
    for bad in ("whisperx:/m", "whisper", "whisper:", "pocketsphinx:/m", "", "rm-audio", "rm-tokens"):
        with pytest.raises(ValueError):
            parse_asr_spec(bad)
    # the reward model's old spellings are refused with the new ones
    with pytest.raises(ValueError, match="'rm:/x' is now spelt rm-audio:<export dir>"):
        parse_asr_spec("rm:/x")
    with pytest.raises(ValueError, match="'rm' is now spelt rm-tokens"):
        parse_asr_spec("rm")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_asr("whisper:/nonexistent/dir")


def test_pocketsphinx_transcribes_real_speech_at_any_rate():
    if not (CARDS / "001.wav").exists():
        pytest.skip("Debian pocketsphinx-testdata is not installed")
    asr = build_asr("pocketsphinx")
    wav, rate = sf.read(str(CARDS / "001.wav"), dtype="float32")
    assert rate == 16000
    [text] = asr.transcribe([wav], rate)
    assert score_utterance("001", "ten of clubs", text, "en").wer <= 0.34, text
    [text] = asr.transcribe([resample(wav, rate, 22050)], 22050)
    assert score_utterance("001", "ten of clubs", text, "en").wer <= 0.34, text


def _save_tiny_whisper(path: Path) -> dict[str, int]:
    """A randomly initialised Whisper with a byte-level tokenizer holding the specials of forced decoding."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|notimestamps|>"]
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    vocab.update({token: len(vocab) + i for i, token in enumerate(specials)})
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=specials[1:])
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(path)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    eot = ids["<|endoftext|>"]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500, max_target_positions=32,
                           pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=ids["<|startoftranscript|>"], begin_suppress_tokens=None,
                           suppress_tokens=None)
    model = WhisperForConditionalGeneration(config)
    generation = model.generation_config
    generation.lang_to_id = {"<|en|>": ids["<|en|>"]}
    generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    generation.is_multilingual = True
    generation.max_length = 8
    generation._from_model_config = False  # else from_pretrained rebuilds it from config.json, losing lang_to_id
    model.save_pretrained(path)
    return ids


def test_whisper_loads_from_a_local_dir_and_forces_english_transcription(tmp_path):
    ids = _save_tiny_whisper(tmp_path / "whisper")
    asr = build_asr(f"whisper:{tmp_path / 'whisper'}")
    assert asr.model.dtype == torch.float32
    prompts, generate = [], asr.model.generate

    def spy(*args, **kwargs):  # keep the decoder prompt, which whisper's generate strips by default
        out = generate(*args, **kwargs, return_dict_in_generate=True)
        prompts.append(out.sequences[0, :4].tolist())
        return out.sequences

    asr.model.generate = spy
    texts = asr.transcribe([np.random.randn(16000).astype(np.float32) * 0.1, np.zeros(8000, np.float32)], 16000)
    texts += asr.transcribe([np.random.randn(12000).astype(np.float32) * 0.1], 24000)  # scipy resampling path
    assert len(texts) == 3 and all(isinstance(text, str) for text in texts)
    forced = [ids[t] for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")]
    assert prompts == [forced] * 3


def test_paraformer_names_the_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "funasr" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="pip install funasr"):
        build_asr("paraformer:/models/paraformer-zh")


def test_reward_model_asr_loads_its_export_and_names_a_missing_one():
    with pytest.raises(FileNotFoundError, match="export directory /nonexistent/export does not exist"):
        build_asr("rm-audio:/nonexistent/export")


# ---------------------------------------------------------------------------------------------------------------
# Speaker similarity
# ---------------------------------------------------------------------------------------------------------------

def test_resemblyzer_prefers_the_same_flite_voice(tmp_path):
    rms_a, rate = flite(tmp_path, "rms", "The plane was given clearance to land.")
    rms_b, _ = flite(tmp_path, "rms", "She traced the circumstances of her birth.")
    slt_b, _ = flite(tmp_path, "slt", "She traced the circumstances of her birth.")
    judge = build_similarity("resemblyzer")
    same = judge.similarity(rms_a, rms_b, rate)
    different = judge.similarity(rms_a, slt_b, rate)
    assert same > different + 0.1, (same, different)
    assert judge.similarity(rms_a, rms_a, rate) == pytest.approx(1.0, abs=1e-5)


def test_sinc_resample_matches_torchaudio_conventions():
    rate_in, rate_out = 24000, 16000
    t = np.arange(rate_in) / rate_in
    out = sinc_resample(torch.tensor(np.sin(2 * np.pi * 440 * t), dtype=torch.float32)[None], rate_in, rate_out)[0]
    assert out.shape[-1] == math.ceil(rate_in * rate_out / rate_in)
    expected = np.sin(2 * np.pi * 440 * np.arange(rate_out) / rate_out)
    assert np.abs(out.numpy() - expected)[200:-200].max() < 1e-3  # band-limited interpolation of an in-band tone
    odd = torch.randn(2, 12345)
    assert sinc_resample(odd, 44100, 16000).shape == (2, math.ceil(12345 * 160 / 441))
    assert sinc_resample(odd, 16000, 16000) is odd


def _random_official_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    model = EcapaTdnnWavLM(PRESETS["tiny"])
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
                if "running_var" in name:
                    tensor.abs_()
    state = dict(model.state_dict())
    state["loss_calculator.projection.weight"] = torch.randn(5, PRESETS["tiny"].emb_dim)  # the AAM classifier
    torch.save({"model": state}, path)
    return state


def test_wavlm_ecapa_loads_the_official_key_layout_strictly_and_scores(tmp_path):
    path = tmp_path / "wavlm_large_finetune.pth"
    state = _random_official_checkpoint(path)
    judge = build_similarity(f"wavlm-ecapa:{path}")
    loaded = judge.model.state_dict()
    assert set(loaded) == set(state) - {"loss_calculator.projection.weight"}
    assert all(torch.equal(loaded[key], state[key]) for key in loaded)
    assert "feature_extract.model.encoder.layers.0.self_attn.relative_attention_bias.weight" in loaded
    assert "feature_extract.model.feature_extractor.conv_layers.0.2.1.weight" in loaded

    t = np.arange(16000) / 16000
    a = sum(np.sin(2 * np.pi * f * t + p) for f, p in ((180, 0), (410, 1), (1300, 2), (2900, 3))).astype(np.float32)
    b = np.random.randn(24000).astype(np.float32)
    assert judge.similarity(a, a, 16000) == pytest.approx(1.0, abs=1e-5)
    assert judge.similarity(a, b, 16000) == pytest.approx(judge.similarity(b, a, 16000), abs=1e-6)
    assert -1.0 <= judge.similarity(a, b, 16000) < 0.999
    assert judge.similarity(resample(a, 16000, 24000), a, 24000, 16000) > 0.99  # a 24 kHz copy: same embedding
    assert judge.embed(a, 16000).shape == (PRESETS["tiny"].emb_dim,)


@pytest.mark.parametrize("corrupt, message", [
    (lambda s: s.pop("feature_extract.model.encoder.layers.1.self_attn.grep_a"), "grep_a"),
    (lambda s: s.__setitem__("feature_extract.model.final_proj.weight", torch.zeros(2, 2)), "final_proj"),
    (lambda s: s.__setitem__("pooling.linear2.bias", torch.zeros(3)), "pooling.linear2.bias"),
    (lambda s: s.pop("feature_weight"), "feature_weight"),
])
def test_wavlm_ecapa_rejects_a_mismatched_checkpoint(tmp_path, corrupt, message):
    path = tmp_path / "bad.pth"
    state = _random_official_checkpoint(path)
    corrupt(state)
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_similarity(f"wavlm-ecapa:{path}")


def test_wavlm_ecapa_spec_and_file_errors(tmp_path):
    torch.save({"weights": {}}, tmp_path / "not_official.pth")
    with pytest.raises(ValueError, match="'model'"):
        build_similarity(f"wavlm-ecapa:{tmp_path / 'not_official.pth'}")
    with pytest.raises(FileNotFoundError):
        build_similarity(f"wavlm-ecapa:{tmp_path / 'missing.pth'}")
    for bad in ("wavlm-ecapa", "wavlm-ecapa:", "ecapa:x", "resemblyzer:x"):
        with pytest.raises(ValueError):
            build_similarity(bad)


@pytest.mark.parametrize("damage", [lambda data: data[:len(data) // 2], lambda data: bytes(range(256)) * 8,
                                    lambda data: data[:200] + bytes(100) + data[300:]])
def test_wavlm_ecapa_names_a_damaged_checkpoint(tmp_path, damage):
    path = tmp_path / "wavlm_large_finetune.pth"
    _random_official_checkpoint(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable PyTorch checkpoint")) as caught:
        build_similarity(f"wavlm-ecapa:{path}")
    assert "weights_only" not in str(caught.value)  # torch's advice to unpickle anyway is not repeated


def test_wavlm_matches_transformers_wavlm_with_mapped_weights():
    """Our WavLM (original s3prl names) computes what transformers' independent port computes."""
    from transformers import WavLMConfig, WavLMModel

    cfg = PRESETS["tiny"]
    reference = WavLMModel(WavLMConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.ffn_dim, conv_dim=(cfg.conv_dim,) * 7, conv_bias=False, feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=cfg.conv_pos,
        num_conv_pos_embedding_groups=cfg.conv_pos_groups, num_buckets=cfg.num_buckets,
        max_bucket_distance=cfg.max_distance, hidden_act="gelu", feat_extract_activation="gelu")).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    to_transformers = [  # original (s3prl/UniSpeech) name -> transformers name, applied in order
        (r"conv_layers\.(\d+)\.0\.", r"conv_layers.\1.conv."),
        (r"conv_layers\.(\d+)\.2\.1\.", r"conv_layers.\1.layer_norm."),
        (r"^layer_norm\.", "feature_projection.layer_norm."),
        (r"^post_extract_proj\.", "feature_projection.projection."),
        (r"^mask_emb$", "masked_spec_embed"),
        (r"pos_conv\.0\.bias", "pos_conv_embed.conv.bias"),
        (r"pos_conv\.0\.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0"),
        (r"pos_conv\.0\.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1"),
        (r"self_attn\.relative_attention_bias\.", "attention.rel_attn_embed."),
        (r"self_attn\.grep_a$", "attention.gru_rel_pos_const"),
        (r"self_attn\.grep_linear\.", "attention.gru_rel_pos_linear."),
        (r"self_attn\.", "attention."),
        (r"self_attn_layer_norm\.", "layer_norm."),
        (r"\.fc1\.", ".feed_forward.intermediate_dense."),
        (r"\.fc2\.", ".feed_forward.output_dense."),
    ]
    source = reference.state_dict()
    ours = WavLM(cfg).eval()
    mapped = {}
    for key in ours.state_dict():
        target = key
        for pattern, replacement in to_transformers:
            target = re.sub(pattern, replacement, target)
        mapped[key] = source[target]
    ours.load_state_dict(mapped, strict=True)

    wav = torch.randn(1, 12000)
    with torch.no_grad():
        hidden = ours(wav)
        expected = reference(wav, output_hidden_states=True)
    assert len(hidden) == cfg.num_layers + 1
    for got, want in zip(hidden[:-1], expected.hidden_states[:-1]):  # the inputs of every layer
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden[-1], expected.last_hidden_state, atol=1e-5, rtol=1e-4)  # final layer norm


def test_mean_similarity_is_the_official_summary():
    assert mean_similarity([0.5, 0.7]) == (0.6, 0.01)
    with pytest.raises(ValueError):
        mean_similarity([])
