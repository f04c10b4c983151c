"""Tests of inference (e2e_tts/synth.py, best_of_n.py, synth_cli.py) on an exported system with tiny random
weights."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from e2e_tts.best_of_n import CandidateScore, choose_candidate  # noqa: E402
from e2e_tts.config import load_config, to_object  # noqa: E402
from e2e_tts.scoring.reward_model import RewardModelRecognizer  # noqa: E402
from e2e_tts.scoring.verifiers import build_asr  # noqa: E402
from e2e_tts.synth import Synthesizer  # noqa: E402
from e2e_tts.synth_cli import read_text_list, register  # noqa: E402
from e2e_tts.synthesis_config import SynthesisConfig  # noqa: E402
from e2e_tts.system import TRAINED_FILE, TTSSystem  # noqa: E402
from e2e_tts.text import ByteTokenizer, PhonemeTokenizer  # noqa: E402
from e2e_tts.vocab import EOS_ID  # noqa: E402
from shared import MICRO_MODEL_OVERRIDES  # noqa: E402

OVERRIDES = MICRO_MODEL_OVERRIDES
# The random vocoder asked for by name: the library decodes with it (the commands would refuse it, since the
# fixture's export records it as never trained).
FAST = dict(max_len_ratio=1.5, batch_size=4, vocoder="model")
SAMPLES_PER_TOKEN = 2 * 320  # token_mel_ratio x hop_length



@pytest.fixture(scope="module")
def export(tmp_path_factory):
    config = load_config(overrides=OVERRIDES)
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), ["alice", "bob"])
    directory = system.export(tmp_path_factory.mktemp("export"), config)
    return directory, system.state_dict()


@pytest.fixture(scope="module")
def synth(export):
    return Synthesizer.from_pretrained(export[0])


@pytest.fixture
def fresh_synth(export):
    """A synthesizer of its own, for tests that change its weights or tokenizer."""
    return Synthesizer.from_pretrained(export[0])


@pytest.fixture(scope="module")
def prompt_audio():
    """Half a second of a harmonic tone with some noise, at 22.05 kHz (not the model rate)."""
    rate = 22050
    t = np.arange(rate // 2) / rate
    wav = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)
    wav += 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return wav.astype(np.float32), rate


def test_from_pretrained_loads_every_weight(export, synth):
    _, state = export
    loaded = synth.system.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert synth.sample_rate == 16000 and not synth.system.training


def test_audio_is_tokenized_with_the_features_it_was_trained_on(synth, tmp_path):
    """A file's features at inference are the data pipeline's features of the same file written into a shard
    (which peak-normalises it), whatever the file's level: the tokenizer sees the level it was trained on."""
    import webdataset as wds

    from e2e_tts.data.features import SampleFeaturizer, SampleFilter
    from e2e_tts.data.manifest import ManifestEntry
    from e2e_tts.data.shards import write_shards

    rate = synth.sample_rate
    t = np.arange(rate) / rate
    wav = 0.2 * np.sin(2 * np.pi * 150 * t) + 0.02 * np.random.default_rng(1).standard_normal(rate)
    sf.write(tmp_path / "utt.wav", wav.astype(np.float32), rate, subtype="FLOAT")
    entry = ManifestEntry(id="utt", audio=str(tmp_path / "utt.wav"), text="hello", speaker="alice")
    write_shards([entry], tmp_path / "shards", synth.audio_config, workers=1)
    raw = next(iter(wds.WebDataset(str(tmp_path / "shards" / "train-000000.tar"), shardshuffle=False)))
    featurizer = SampleFeaturizer(synth.audio_config, synth.system.text_tokenizer, SampleFilter(0.0, 100.0))
    trained_on = featurizer(raw)["mel"]
    for level in (1.0, 0.25, 3.0):
        inferred = synth.speech_encoder.log_mel((wav * level).astype(np.float32))[0]
        # 16-bit FLAC in the shard: equal up to quantisation noise
        torch.testing.assert_close(inferred, trained_on, atol=2e-2, rtol=0)


def test_synthesize_without_prompt_gives_audio_of_the_generated_tokens(synth):
    texts = ["Hello world.", "It costs $5."]
    results = synth.synthesize(texts, config=SynthesisConfig(**FAST))
    assert [r.text for r in results] == texts
    assert results[1].normalized_text == "It costs five dollars."
    for result in results:
        num_ids = len(result.normalized_text.encode())
        assert int(0.5 * num_ids) <= result.tokens.numel() <= int(1.5 * num_ids)  # the length guards
        assert result.wav.dtype == np.float32 and result.sample_rate == 16000
        assert len(result.wav) == result.tokens.numel() * SAMPLES_PER_TOKEN
        assert result.duration == pytest.approx(len(result.wav) / 16000)
        assert np.isfinite(result.wav).all() and np.abs(result.wav).max() > 0
        assert set(result.timings) == {"llm", "flow", "vocoder", "verify"} and result.timings["verify"] == 0
        assert result.rtf == pytest.approx(sum(result.timings.values()) / result.duration)
        assert result.chosen_candidate == 0 and len(result.candidates) == 1


def spy_on_llm_and_flow(synth):
    """Records what the synthesizer passes to the LLM's ``generate`` (its keyword arguments, as ``"llm"``) and to the
    flow's ``sample`` (speech ids and prompt mel, as ``"flow"``); the calls still run."""
    seen = {}
    generate, sample = synth.system.llm.generate, synth.system.flow.sample

    def spy_generate(*args, **kwargs):
        seen["llm"] = kwargs
        return generate(*args, **kwargs)

    def spy_sample(speech, speech_mask, codebook, prompt_mel=None, **kwargs):
        seen["flow"] = (speech, prompt_mel)
        return sample(speech, speech_mask, codebook, prompt_mel, **kwargs)

    synth.system.llm.generate, synth.system.flow.sample = spy_generate, spy_sample
    return seen


def test_zero_shot_prompt_conditions_llm_and_flow_but_is_not_in_the_output(fresh_synth, prompt_audio, tmp_path):
    synth = fresh_synth
    wav, rate = prompt_audio
    path = tmp_path / "prompt.wav"
    sf.write(str(path), wav, rate)
    prompt = synth.encode_prompt(path, "A prompt, 1 line.")
    from_array = synth.encode_prompt(wav, "A prompt, 1 line.", sample_rate=rate)
    assert torch.equal(prompt.speech_ids, from_array.speech_ids)
    # 0.5 s resampled to 16 kHz: 8000 samples -> 25 mel frames -> 12 tokens of 2 frames.
    assert prompt.speech_ids.shape == (12,) and prompt.mel.shape == (24, 80)
    assert prompt.text_ids.tolist() == list(b"A prompt, one line.")

    seen = spy_on_llm_and_flow(synth)
    result, = synth.synthesize(["Hello there."], path, "A prompt, 1 line.", SynthesisConfig(**FAST))
    assert all(torch.equal(ids, prompt.text_ids) for ids in seen["llm"]["prompt_text_ids"])
    assert all(torch.equal(ids, prompt.speech_ids) for ids in seen["llm"]["prompt_speech_ids"])
    speech, prompt_mel = seen["flow"]
    assert torch.equal(speech[0, :12], prompt.speech_ids) and torch.equal(speech[0, 12:], result.tokens)
    torch.testing.assert_close(prompt_mel[0], prompt.mel)
    # Only the new tokens' frames come back.
    assert len(result.wav) == result.tokens.numel() * SAMPLES_PER_TOKEN
    # The LLM's attention over the text (not the prompt's) at each prediction of a new token and of EOS.
    assert result.text_attention.shape == (result.tokens.numel() + 1, len(b"Hello there."))
    assert (result.text_attention >= 0).all() and (result.text_attention.sum(1) <= 1 + 1e-5).all()


def test_without_llm_prompt_only_the_flow_hears_the_prompt(fresh_synth, prompt_audio):
    synth = fresh_synth
    wav, rate = prompt_audio
    prompt = synth.encode_prompt(wav, "A prompt, 1 line.", sample_rate=rate)
    seen = spy_on_llm_and_flow(synth)
    result, = synth.synthesize(["Hello there."], wav, "A prompt, 1 line.",
                               SynthesisConfig(**FAST, llm_prompt=False), prompt_sample_rate=rate)
    assert seen["llm"]["prompt_text_ids"] is None and seen["llm"]["prompt_speech_ids"] is None
    speech, prompt_mel = seen["flow"]
    assert torch.equal(speech[0, :12], prompt.speech_ids) and torch.equal(speech[0, 12:], result.tokens)
    torch.testing.assert_close(prompt_mel[0], prompt.mel)
    # The recorded attention is that of the text alone, as the LLM read it.
    assert result.text_attention.shape == (result.tokens.numel() + 1, len(b"Hello there."))


def test_prior_decoder_vocodes_the_prior_heads_mel_of_the_new_tokens(synth, prompt_audio):
    wav, rate = prompt_audio
    config = SynthesisConfig(**{**FAST, "decoder": "prior", "vocoder": "model"})
    result, = synth.synthesize(["Hello there."], wav, "A prompt.", config, prompt_sample_rate=rate)
    assert len(result.wav) == result.tokens.numel() * SAMPLES_PER_TOKEN  # the prompt's frames are not returned
    prompt = synth.encode_prompt(wav, "A prompt.", sample_rate=rate)
    speech = torch.cat([prompt.speech_ids, result.tokens])[None]
    with torch.no_grad():
        mel = synth.system.flow.prior(speech, torch.ones_like(speech, dtype=torch.bool), synth.system.codebook())
        expected = synth.system.vocoder(mel[:, 2 * len(prompt.speech_ids):])[0].numpy()
    np.testing.assert_allclose(result.wav, expected, atol=1e-5)
    with pytest.raises(ValueError, match="decoder must be one of"):
        SynthesisConfig(decoder="ode")


def test_a_seed_makes_synthesis_reproducible_and_different_seeds_differ(synth):
    texts = ["One more time.", "Twice."]
    first = synth.synthesize(texts, config=SynthesisConfig(seed=3, **FAST))
    again = synth.synthesize(texts, config=SynthesisConfig(seed=3, **FAST))
    other = synth.synthesize(texts, config=SynthesisConfig(seed=4, **FAST))
    for a, b in zip(first, again):
        assert torch.equal(a.tokens, b.tokens) and np.array_equal(a.wav, b.wav)
    assert not torch.equal(first[0].tokens, other[0].tokens)


def test_griffin_lim_and_model_vocoders_both_run_deterministically(synth):
    config = dict(FAST, seed=1, griffin_lim_iters=4)
    model, = synth.synthesize(["Vocode me."], config=SynthesisConfig(**config))
    griffin, = synth.synthesize(["Vocode me."], config=SynthesisConfig(**{**config, "vocoder": "griffin-lim"}))
    with pytest.warns(UserWarning, match="vocoder was never trained"):  # unset: the export's record decides
        unset, = synth.synthesize(["Vocode me."], config=SynthesisConfig(**{**config, "vocoder": None}))
    assert torch.equal(model.tokens, griffin.tokens)  # the vocoder draws after the LLM and the flow
    assert len(griffin.wav) == len(model.wav) and np.isfinite(griffin.wav).all()
    assert not np.allclose(griffin.wav, model.wav)
    assert np.array_equal(griffin.wav, unset.wav)  # its random phase comes from our seed


class LengthJudge:
    """A fake ASR: the longer the audio, the more words it gets wrong (the shortest is heard perfectly)."""

    name = "length-judge"

    def __init__(self, reference: str):
        self.words = reference.split()
        self.calls = []

    def transcribe(self, wavs, sample_rate):
        self.calls.append([len(w) for w in wavs])
        order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
        transcripts = [""] * len(wavs)
        for rank, i in enumerate(order):
            transcripts[i] = " ".join(["wrong"] * rank + self.words[rank:])
        return transcripts


def test_best_of_n_keeps_the_lowest_wer_candidate_that_is_not_a_dropout(fresh_synth):
    synth = fresh_synth
    with torch.no_grad():  # a strong EOS row makes candidates stop early and at different lengths
        synth.system.llm.decoder.get_output_embeddings().weight[EOS_ID] *= 30
    text = "the cat sat on the mat"
    config = dict(seed=0, min_len_ratio=0.0, max_len_ratio=1.5, top_k=0, top_p=1.0, num_candidates=6, batch_size=4,
                  vocoder="model")

    judge = LengthJudge(text)
    result, = synth.synthesize([text], config=SynthesisConfig(min_seconds_per_char=0.0, **config), verifier=judge)
    candidates = result.candidates
    empty = [c.index for c in candidates if c.num_tokens == 0]
    audible = sorted((c.duration, c.index) for c in candidates if c.num_tokens > 0)
    assert empty and len(audible) >= 2 and audible[0][0] < audible[1][0], "seed no longer gives varied lengths"
    assert judge.calls == [[c.num_tokens * SAMPLES_PER_TOKEN for c in candidates if c.num_tokens]]
    for c in candidates:
        if c.num_tokens == 0:
            assert (c.dropout, c.transcript, c.wer) == ("empty_audio", None, None)
        else:
            assert c.dropout is None and c.wer == pytest.approx(sorted(audible).index((c.duration, c.index)) / 6)
    assert result.chosen_candidate == audible[0][1] and result.candidates[result.chosen_candidate].wer == 0
    assert result.tokens.numel() == candidates[audible[0][1]].num_tokens and result.timings["verify"] > 0

    # The same seed with a duration floor between the two shortest: the perfect one is now a dropout.
    floor = (audible[0][0] + audible[1][0]) / 2 / len(text.replace(" ", ""))
    rerun, = synth.synthesize([text], config=SynthesisConfig(min_seconds_per_char=floor, **config),
                              verifier=LengthJudge(text))
    assert [c.num_tokens for c in rerun.candidates] == [c.num_tokens for c in candidates]
    assert rerun.candidates[audible[0][1]].dropout == "too_short_for_text"
    assert rerun.chosen_candidate == audible[1][1]


def test_choose_candidate_ranks_dropouts_last_and_breaks_ties_by_order():
    scores = [CandidateScore(0, 5, 0.2, dropout="too_short_for_text", wer=0.0), CandidateScore(1, 9, 0.4, wer=0.5),
              CandidateScore(2, 9, 0.4, wer=0.25), CandidateScore(3, 9, 0.4, wer=0.25)]
    assert choose_candidate(scores) == 2
    all_dropouts = [CandidateScore(0, 0, 0.0, dropout="empty_audio"),
                    CandidateScore(1, 2, 0.1, dropout="too_short_for_text", wer=0.8)]
    assert choose_candidate(all_dropouts) == 1


def test_reward_model_verifiers_transcribe_tokens_or_audio(synth, export):
    recognizer = synth.recognizer
    result, = synth.synthesize(["Hi."], config=SynthesisConfig(num_candidates=2, verifier="rm-tokens", **FAST))
    assert [c.transcript for c in result.candidates][result.chosen_candidate] == recognizer.transcribe_tokens(
        [result.tokens])[0]
    assert all(c.wer is not None for c in result.candidates)

    spec = f"rm-audio:{export[0]}"  # the reward model of this same export, reading the audio
    assert build_asr(spec, loaded=recognizer) is recognizer  # not loaded twice
    result, = synth.synthesize(["Hi."], config=SynthesisConfig(num_candidates=2, verifier=spec, **FAST))
    assert result.candidates[result.chosen_candidate].transcript == recognizer.transcribe([result.wav], 16000)[0]

    other = build_asr(spec)  # loaded from the export: the same weights, the same transcript
    assert isinstance(other, RewardModelRecognizer) and other is not recognizer and other.name == spec
    assert other.transcribe([result.wav], 16000) == recognizer.transcribe([result.wav], 16000)


def test_the_retired_reward_model_spellings_name_their_new_ones(synth, export):
    with pytest.raises(ValueError, match="'rm' is now spelt rm-tokens"):
        synth.synthesize(["Hi."], config=SynthesisConfig(num_candidates=2, verifier="rm", **FAST))
    with pytest.raises(ValueError, match=f"'rm:{export[0]}' is now spelt rm-audio:<export dir>"):
        synth.synthesize(["Hi."], config=SynthesisConfig(num_candidates=2, verifier=f"rm:{export[0]}", **FAST))


def test_transcribe_audio_is_batch_invariant_and_resamples(synth):
    rng = np.random.default_rng(1)
    long, short = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 4000)]
    recognizer = synth.recognizer
    together = recognizer.transcribe([long, short, np.zeros(100, np.float32)], 16000)
    assert together == recognizer.transcribe([long], 16000) + recognizer.transcribe([short], 16000) + [""]
    assert recognizer.transcribe([long, short], 16000, batch_size=1) == together[:2]
    at_8k = recognizer.transcribe([long[::2]], 8000)
    assert len(at_8k) == 1 and isinstance(at_8k[0], str)
    with pytest.raises(ValueError, match="waveform 0 must be mono"):
        recognizer.transcribe([np.zeros((2, 100), np.float32)], 16000)


def test_phoneme_systems_are_verified_against_the_ipa_reference(tmp_path, monkeypatch):
    config = load_config(overrides=OVERRIDES)
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), PhonemeTokenizer("en-us"), ["alice"])
    synth = Synthesizer.from_pretrained(system.export(tmp_path / "export", config))
    ipa = synth.recognizer.reference("Hello world.")
    assert ipa == PhonemeTokenizer("en-us").phonemize("Hello world.") and ipa != "Hello world."
    # raw or model-normalised, a text has one reference ("$5" is said "five dollars")
    assert synth.recognizer.reference("It costs $5.") == synth.recognizer.reference("It costs five dollars.")
    monkeypatch.setattr(synth.recognizer, "transcribe_tokens", lambda tokens: [ipa] * len(tokens))
    result, = synth.synthesize(["Hello world."], config=SynthesisConfig(verifier="rm-tokens", **FAST))
    assert result.candidates[0].transcript == ipa and result.candidates[0].wer == 0.0


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["synth", *argv])
    return args.func(args)


def test_cli_writes_wavs_and_synthesis_json(export, tmp_path):
    texts = tmp_path / "texts.tsv"
    texts.write_text("a1\tHello world.\n\nb2\tGood night, moon.\n")
    out = tmp_path / "out"
    assert run_cli(["--model", str(export[0]), "--texts", str(texts), "--out", str(out), "--seed", "7",
                    "--max-len-ratio", "1.5", "--vocoder", "griffin-lim", "--griffin-lim-iters", "2"]) == 0
    summary = json.loads((out / "synthesis.json").read_text())
    assert summary["model"] == str(export[0].resolve()) and summary["settings"]["seed"] == 7
    assert summary["settings"]["vocoder"] == "griffin-lim" and summary["totals"]["utterances"] == 2
    assert [u["id"] for u in summary["utterances"]] == ["a1", "b2"]
    for utterance in summary["utterances"]:
        wav, rate = sf.read(str(out / f"{utterance['id']}.wav"))
        assert rate == 16000 and len(wav) == utterance["num_tokens"] * SAMPLES_PER_TOKEN
        assert utterance["duration"] == pytest.approx(len(wav) / rate)
        assert len(utterance["tokens"]) == utterance["num_tokens"] and utterance["rtf"] > 0
        attention = np.load(out / utterance["text_attention"])  # beside the wav, for the report
        assert attention.shape == (utterance["num_tokens"] + 1, len(utterance["normalized_text"].encode()))
        assert set(utterance["timings"]) == {"llm", "flow", "vocoder", "verify"}
        assert utterance["candidates"][0]["wer"] is None


def test_malformed_tsv_lines_are_reported_with_their_line_number(export, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tfine\nb\tfine too\nno tab here\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:3: expected 'id<TAB>text'"):
        read_text_list(bad)
    bad.write_text("a\tfine\n\na\tagain\n")
    with pytest.raises(ValueError, match=r":3: duplicate id 'a' \(first on line 1\)"):
        read_text_list(bad)
    bad.write_text("a\t \n")
    with pytest.raises(ValueError, match=":1: empty text"):
        read_text_list(bad)
    assert run_cli(["--model", str(export[0]), "--texts", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.tsv:1" in capsys.readouterr().err
    for utt in ("../up", "a/b", "/abs", ".hidden", "back\\slash", "tab\x07bell"):
        bad.write_text(f"fine\tText.\n{utt}\tText.\n")
        with pytest.raises(ValueError, match=f":2: id {re.escape(repr(utt))}"):
            read_text_list(bad)


def test_bad_requests_raise_clear_errors(synth):
    with pytest.raises(ValueError, match=r"text 1 '  ' cannot be synthesised: empty_text"):
        synth.synthesize(["Fine.", "  "])
    with pytest.raises(ValueError, match="both prompt_wav and prompt_text"):
        synth.synthesize(["Fine."], prompt_wav=np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="needs a verifier"):
        synth.synthesize(["Fine."], config=SynthesisConfig(num_candidates=3))
    with pytest.raises(ValueError, match="fewer than one speech token"):
        synth.encode_prompt(np.full(100, 0.1, np.float32), "Short.")
    with pytest.raises(ValueError, match="vocoder"):
        SynthesisConfig(vocoder="hifigan")


def test_a_silent_prompt_is_refused_naming_the_file(export, tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.full(16000, 1e-4, np.float32), 16000)  # -80 dBFS: no voice to clone
    assert run_cli(["--model", str(export[0]), "--text", "Hello.", "--prompt-wav", str(silent), "--prompt-text",
                    "Nothing.", "--out", str(tmp_path / "out")]) == 2
    assert f"prompt {silent} is silent" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_silent_outputs_are_counted_and_named(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Synthesizer, "_vocode", lambda self, mel, mask, config, generator:
                        [np.zeros(int(n) * 320, np.float32) for n in mask.sum(1)])
    out = tmp_path / "out"
    assert run_cli(["--model", str(export[0]), "--text", "Hello.", "--out", str(out), "--max-len-ratio", "1.5"]) == 0
    assert json.loads((out / "synthesis.json").read_text())["totals"]["silent"] == ["utt1"]
    assert "1 of 1 outputs are silent: utt1" in capsys.readouterr().err


def with_record(export_dir, tmp_path, vocoder):
    """A copy of the export whose record says the vocoder was trained (True), never trained (False), or that has
    no record (None, an older export)."""
    import shutil

    copy = tmp_path / f"export_{vocoder}"
    shutil.copytree(export_dir, copy)
    record = json.loads((copy / TRAINED_FILE).read_text())
    if vocoder is None:
        (copy / TRAINED_FILE).unlink()
    else:
        (copy / TRAINED_FILE).write_text(json.dumps({**record, "vocoder": vocoder}))
    return copy


def test_an_untrained_vocoder_falls_back_to_griffin_lim_or_is_refused_by_name(export, tmp_path, capsys):
    """The fixture's export was written by a stage that did not train the vocoder: its record says so."""
    argv = ["--model", str(export[0]), "--text", "Hello.", "--max-len-ratio", "1.5", "--griffin-lim-iters", "2"]
    assert run_cli([*argv, "--out", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert "vocoder was never trained" in err and "Griffin-Lim" in err and "--vocoder-steps" in err
    summary = json.loads((tmp_path / "default" / "synthesis.json").read_text())
    assert summary["settings"]["vocoder"] == "griffin-lim" and "never trained" in summary["notes"][0]

    assert run_cli([*argv, "--vocoder", "model", "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "never trained" in err and "bash recipes/tiny/run.sh --vocoder-steps N" in err
    assert "stages/vocoder.yaml" in err and not (tmp_path / "model").exists()

    trained = with_record(export[0], tmp_path, True)
    assert run_cli([*argv[:1], str(trained), *argv[2:], "--out", str(tmp_path / "trained")]) == 0
    summary = json.loads((tmp_path / "trained" / "synthesis.json").read_text())
    assert summary["settings"]["vocoder"] == "model" and summary["notes"] == []

    older = with_record(export[0], tmp_path, None)  # unknown: a warning, not an error
    assert run_cli([*argv[:1], str(older), *argv[2:], "--vocoder", "model", "--out", str(tmp_path / "older")]) == 0
    assert f"{older / TRAINED_FILE} is missing" in capsys.readouterr().err
    assert json.loads((tmp_path / "older" / "synthesis.json").read_text())["settings"]["vocoder"] == "model"


def test_the_exports_decoding_settings_apply_without_flags_and_flags_override(tmp_path, monkeypatch):
    config = load_config(overrides=OVERRIDES + ["synthesis.temperature=0.5", "synthesis.top_k=10",
                                                "synthesis.max_len_ratio=1.5", "synthesis.griffin_lim_iters=2"])
    torch.manual_seed(0)
    directory = TTSSystem(to_object(config.model), ByteTokenizer(), ["alice"]).export(tmp_path / "export", config)
    seen = []
    generate = Synthesizer.generate_tokens
    monkeypatch.setattr(Synthesizer, "generate_tokens",
                        lambda self, ids, prompt, config, gen: seen.append(config) or generate(self, ids, prompt,
                                                                                              config, gen))
    assert run_cli(["--model", str(directory), "--text", "Hello.", "--out", str(tmp_path / "plain")]) == 0
    assert (seen[-1].temperature, seen[-1].top_k, seen[-1].max_len_ratio) == (0.5, 10, 1.5)
    assert seen[-1].top_p == SynthesisConfig().top_p  # not in the recipe: the built-in default
    settings = json.loads((tmp_path / "plain" / "synthesis.json").read_text())["settings"]
    assert (settings["temperature"], settings["top_k"]) == (0.5, 10)

    assert run_cli(["--model", str(directory), "--text", "Hello.", "--out", str(tmp_path / "flag"),
                    "--top-k", "3", "--no-repetition-aware"]) == 0
    assert (seen[-1].temperature, seen[-1].top_k, seen[-1].repetition_aware) == (0.5, 3, False)


def test_corrupt_weights_are_named_by_synth(export, tmp_path, capsys):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(export[0], copy)
    path = copy / "llm.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert run_cli(["--model", str(copy), "--text", "Hello.", "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: not a readable safetensors file" in capsys.readouterr().err
