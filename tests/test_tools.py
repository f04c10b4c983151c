"""The measurement tools' own logic (their model-running parts are exercised by the recipe and the benchmarks)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_stage(run: Path, stage: str, rows: list[tuple[int, float]], exports: list[int]) -> None:
    directory = run / stage
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time": t}) + "\n" for s, t in rows))
    (directory / "export").mkdir()
    for step in exports:
        (directory / "exports" / f"step_{step:06d}").mkdir(parents=True)
        (directory / "exports" / f"step_{step:06d}" / "config.yaml").write_text("{}")


def test_wer_curve_adds_up_resumed_segments_and_stages(tmp_path):
    wer_curve = load_tool("wer_curve")
    # joint: 4 updates, killed after step 2 and resumed (its clock restarts); separate: 2 updates.
    write_stage(tmp_path, "joint", [(1, 10.0), (2, 20.0), (3, 12.0), (4, 24.0)], exports=[2])
    write_stage(tmp_path, "separate", [(1, 5.0), (2, 9.0)], exports=[])
    (tmp_path / "joint" / "exports" / "step_000003").mkdir()  # an export cut off before its config: ignored
    points = wer_curve.curve_points(tmp_path)
    assert [(p["stage"], p["step"], p["train_seconds"]) for p in points] == [
        ("joint", 2, 20.0), ("joint", 4, 44.0), ("separate", 2, 53.0)]


def test_wer_curve_refuses_an_export_at_an_unlogged_step(tmp_path):
    wer_curve = load_tool("wer_curve")
    write_stage(tmp_path, "joint", [(2, 10.0), (4, 20.0)], exports=[3])
    with pytest.raises(SystemExit, match="log_every"):
        wer_curve.curve_points(tmp_path)


def test_kmeans_lookup_recovers_separated_clusters_and_maps_each_frame_group_to_its_centroid():
    import torch

    ceilings = load_tool("ceilings")
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=generator) * 10
    rows = centres.repeat_interleave(30, dim=0) + 0.01 * torch.randn(120, 6, generator=generator)
    centroids = ceilings.fit_kmeans(rows, k=4)
    assert torch.cdist(centroids, centres).min(1).values.max() < 0.1
    mel = rows[[0, 31, 95]].reshape(-1, 3)  # three groups of two 3-channel frames, and no partial group
    decoded = ceilings.kmeans_lookup(torch.cat([mel, mel[:1]]), centroids)
    assert decoded.shape == mel.shape
    assert torch.allclose(decoded, centres[[0, 1, 3]].reshape(-1, 3), atol=0.05)


def micro_synth_and_noise(tmp_path):
    """A synthesizer of a micro export with random weights (seeded), and two noise clips at 16 kHz: an utterance of
    0.4 s and a prompt of 0.2 s."""
    import numpy as np
    import torch

    from e2e_tts.config import load_config, to_object
    from e2e_tts.synth import Synthesizer
    from e2e_tts.system import TTSSystem
    from e2e_tts.text import ByteTokenizer
    from shared import MICRO_MODEL_OVERRIDES

    config = load_config(overrides=MICRO_MODEL_OVERRIDES)
    torch.manual_seed(0)
    synth = Synthesizer.from_pretrained(TTSSystem(to_object(config.model), ByteTokenizer(), ["a"]).export(
        tmp_path / "export", config))
    rng = np.random.default_rng(0)
    wav, prompt = (0.1 * rng.standard_normal(n).astype(np.float32) for n in (6400, 3200))
    return synth, wav, prompt


def test_ceilings_lay_out_the_llms_row_as_the_synthesis_setting_says(tmp_path):
    """With llm_prompt false, the LLM samples and is teacher-forced without the prompt, as synthesis runs it; the
    accuracies behind and without a prompt are both still counted."""
    import torch

    from e2e_tts.synthesis_config import SynthesisConfig

    ceilings = load_tool("ceilings")
    synth, wav, prompt = micro_synth_and_noise(tmp_path)
    prompts_seen, decoded_ids = [], []
    generate, prior = synth.system.llm.generate, synth.system.flow.prior
    synth.system.llm.generate = lambda *a, **k: prompts_seen.append(k["prompt_text_ids"]) or generate(*a, **k)
    synth.system.flow.prior = lambda speech, *a: decoded_ids.append(speech[0]) or prior(speech, *a)
    # Marked teacher-forced tokens: all 1 behind the prompt, all 2 without it.
    ceilings.teacher_forced_argmax = lambda s, p, text, ids: torch.full_like(ids, 2 if p is None else 1)
    for llm_prompt in (True, False):
        decoded_ids.clear()
        _, hits = ceilings.decode_conditions(synth, wav, "hello there", prompt, "hi",
                                             ["llm_prior_griffin_lim", "llm_teacher_forced_prior_griffin_lim"],
                                             seed=0, flow_settings={"nfe": 2},
                                             llm_sampling=SynthesisConfig(temperature=0.5, llm_prompt=llm_prompt))
        assert set(hits) == {"with_prompt", "without_prompt"}  # both layouts are scored either way
        forced_tail = decoded_ids[-1][-len(synth.speech_encoder.encode(wav)[0]):]
        assert (forced_tail == (1 if llm_prompt else 2)).all()
    assert prompts_seen[0] is not None and prompts_seen[1] is None


def test_ceilings_decode_every_condition_at_the_utterance_length_with_the_given_sampler_settings(tmp_path):
    """On a micro export with random weights: each condition of the true audio gives audio of the utterance's
    length, the prior conditions are the prior head's mel (no ODE) of the true or the LLM's tokens, the sampler
    settings reach the flow, and the LLM's tokens are drawn with the given temperature and top-k."""
    import numpy as np
    import torch

    from e2e_tts.models.vocoder import griffin_lim
    from e2e_tts.synthesis_config import SynthesisConfig

    ceilings = load_tool("ceilings")
    synth, wav, prompt = micro_synth_and_noise(tmp_path)
    seen = {}
    sample = synth.system.flow.sample

    def spy_sample(*args, **kwargs):
        seen.update(kwargs)
        return sample(*args, **kwargs)

    synth.system.flow.sample = spy_sample
    settings = {"cfg_strength": 0.0, "temperature": 0.5, "nfe": 2}
    text, prompt_text = "hello there", "hi"
    llm_sampling = SynthesisConfig(temperature=0.5, top_k=3)
    centroids = ceilings.fit_kmeans(ceilings.frame_groups(synth.speech_encoder.log_mel(prompt)[0], 2), k=4)
    audio, forced_hits = ceilings.decode_conditions(synth, wav, text, prompt, prompt_text, list(ceilings.CONDITIONS),
                                                    seed=0, flow_settings=settings, llm_sampling=llm_sampling,
                                                    centroids=centroids)
    assert set(audio) == set(ceilings.CONDITIONS)
    true_ids = synth.speech_encoder.encode(wav)[0]
    for correct, total in forced_hits.values():
        assert total == len(true_ids) and 0 <= correct <= total
    assert {k: seen[k] for k in settings} == settings
    for condition, samples in audio.items():
        if condition not in ("llm_flow_griffin_lim", "llm_prior_griffin_lim"):  # the LLM chooses their length
            assert abs(len(samples) - len(wav)) <= 2 * 320, condition  # at most one speech token apart

    def prior_audio(ids):
        prompt_ids, prompt_mel = synth.speech_encoder.encode(prompt)
        speech = torch.cat([prompt_ids, ids])[None]
        with torch.no_grad():
            prior = synth.system.flow.prior(speech, torch.ones_like(speech, dtype=torch.bool),
                                            synth.system.codebook())
        torch.manual_seed(0)
        return griffin_lim(prior[:, prompt_mel.shape[0]:], synth.audio_config)[0].numpy()

    only_prior, no_hits = ceilings.decode_conditions(synth, wav, text, prompt, prompt_text, ["flow_prior_griffin_lim"],
                                                     seed=0, flow_settings=settings, llm_sampling=llm_sampling)
    assert no_hits is None
    np.testing.assert_allclose(only_prior["flow_prior_griffin_lim"], prior_audio(synth.speech_encoder.encode(wav)[0]),
                               atol=1e-6)
    encoded = synth.encode_prompt(prompt, prompt_text)
    llm_ids = synth.system.llm.generate([synth.prepare_text(text)[1]], synth.system.codebook(),
                                        prompt_text_ids=[encoded.text_ids], prompt_speech_ids=[encoded.speech_ids],
                                        temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(0))[0]
    np.testing.assert_allclose(audio["llm_prior_griffin_lim"], prior_audio(llm_ids), atol=1e-6)

    # Teacher forcing: step t's prediction is greedy decoding's next token after the prompt and true_ids[:t].
    forced = ceilings.teacher_forced_argmax(synth, encoded, text, true_ids)
    assert forced.shape == true_ids.shape
    for step in (0, 1, len(true_ids) - 1):
        greedy = synth.system.llm.generate([synth.prepare_text(text)[1]], synth.system.codebook(),
                                           prompt_text_ids=[encoded.text_ids],
                                           prompt_speech_ids=[torch.cat([encoded.speech_ids, true_ids[:step]])],
                                           temperature=0.0, min_len_ratio=1.0, max_len_ratio=1.0)[0]
        assert int(forced[step]) == int(greedy[0]), step
    unprompted = ceilings.teacher_forced_argmax(synth, None, text, true_ids)
    greedy = synth.system.llm.generate([synth.prepare_text(text)[1]], synth.system.codebook(),
                                       prompt_speech_ids=[true_ids[:2]], temperature=0.0, min_len_ratio=1.0,
                                       max_len_ratio=1.0)[0]
    assert int(unprompted[2]) == int(greedy[0])


def test_llm_alignment_monotonicity_tells_a_diagonal_from_stripes():
    import numpy as np

    alignment = load_tool("llm_alignment")
    steps, text = 30, 12
    diagonal = np.zeros((steps, text))
    diagonal[np.arange(steps), np.arange(steps) * text // steps] = 1.0
    stripes = np.tile(np.random.default_rng(0).random(text), (steps, 1))  # the same text positions at every step
    assert alignment.monotonicity(diagonal) == pytest.approx(1.0, abs=0.01)
    assert alignment.monotonicity(diagonal[:, ::-1]) == pytest.approx(-1.0, abs=0.01)
    assert alignment.monotonicity(stripes) == 0.0


def test_rollout_readback_scores_each_sample_against_its_text_ids(tmp_path, monkeypatch):
    """On a micro export: one reading per sample, each against the ids of its own item's text."""
    import jiwer
    import numpy as np
    import soundfile as sf

    from e2e_tts.data.manifest import SeedTTSItem
    from e2e_tts.synthesis_config import SynthesisConfig

    tool = load_tool("rollout_readback")
    synth, _, _ = micro_synth_and_noise(tmp_path)
    prompt = tmp_path / "prompt.wav"
    sf.write(prompt, 0.1 * np.random.default_rng(0).standard_normal(3200).astype(np.float32), 16000)
    items = [SeedTTSItem(utt="u1", prompt_text="hi", prompt_audio=str(prompt), text="abc"),
             SeedTTSItem(utt="u2", prompt_text=None, prompt_audio=None, text="hello")]
    texts = [synth.prepare_text(item.text)[1].tolist() for item in items]
    calls = []

    def perfect_for_the_first_item(speech, mask, codebook):
        calls.append(speech.shape[0])
        return [texts[0] for _ in range(speech.shape[0])]

    monkeypatch.setattr(synth.system.reward, "transcribe_ctc", perfect_for_the_first_item)
    report = tool.read_back(synth, items, samples=3, config=SynthesisConfig(), seed=0)
    assert calls == [3, 3] and report["num_samples"] == 6
    # the first item's samples read back exactly; the second's read "abc" against "hello"
    second = 100.0 * jiwer.process_words(" ".join(map(str, texts[1])), " ".join(map(str, texts[0]))).wer
    assert report["mean_reward_ctc_error"] == pytest.approx(second / 2)
    assert report["mean_tokens"] > 0


def test_paired_wer_pairs_by_utterance_and_reports_the_unpaired():
    paired_wer = load_tool("paired_wer")
    # a is in both; b is scored in both but listed in a different order; c failed in the new run; d is new.
    base = {"utterances": [{"utt": "a", "wer": 1.0, "sim": 0.70}, {"utt": "b", "wer": 0.5, "sim": 0.80},
                           {"utt": "c", "wer": 0.9, "sim": 0.60}]}
    new = {"utterances": [{"utt": "b", "wer": 0.25, "sim": 0.80}, {"utt": "a", "wer": 1.0, "sim": 0.75},
                          {"utt": "c", "wer": None, "sim": None}, {"utt": "d", "wer": 0.0, "sim": 0.9}]}
    report = paired_wer.compare(base, new)
    # WER changes in points: a 0, b -25 -> mean -12.5, sample sd 17.68, stderr 12.5.
    assert report["wer"]["n"] == 2 and report["wer"]["mean"] == pytest.approx(-12.5)
    assert report["wer"]["stderr"] == pytest.approx(12.5)
    assert (report["wer"]["down"], report["wer"]["up"], report["wer"]["same"]) == (1, 0, 1)
    assert report["sim"]["mean"] == pytest.approx(0.025)
    assert report["only_in_base"] == ["c"] and report["only_in_new"] == ["d"]
    with pytest.raises(ValueError, match="no pairs"):
        paired_wer.paired_change([], [])
