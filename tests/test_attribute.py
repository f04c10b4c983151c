"""Attribute control (DiffRO's quality head): the degradation tool and its labelled manifest, the MOS bins, the quality
head training on the labels in the separate stage, the independent SNR estimate, and the steering stage
(stages/attribute.yaml) loading, updating and resuming exactly."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from e2e_tts.config import load_config, to_object
from e2e_tts.data.manifest import ManifestEntry, read_jsonl, write_jsonl
from e2e_tts.data.shards import _key_problem
from e2e_tts.models.reward import PooledClassifier, mos_bins
from e2e_tts.objectives.multitask import MultiTaskObjective
from e2e_tts.stage import StageConfig
from e2e_tts.train import train
from post_training import check_exact_resume, micro_config, micro_system, stage_start, text_batch
from shared import speech_like
from test_tools import load_tool

REPO = Path(__file__).resolve().parents[1]
RATE = 16000


@pytest.fixture(scope="module")
def degrade():
    return load_tool("degrade_corpus")


def utterance(seconds: float, seed: int) -> np.ndarray:
    """Speech-like sound between two pauses of digital silence, as flite writes them."""
    pause = np.zeros(int(0.3 * RATE), dtype=np.float32)
    return np.concatenate([pause, speech_like(seconds, np.random.default_rng(seed)), pause])


def corpus(root: Path, count: int) -> Path:
    entries = []
    for i in range(count):
        sf.write(root / f"u{i}.wav", utterance(0.8, i), RATE)
        entries.append(ManifestEntry(id=f"u{i}", audio=str(root / f"u{i}.wav"), text=f"number {i}", speaker="s"))
    write_jsonl(entries, root / "in.jsonl")
    return root / "in.jsonl"


def test_degradation_reaches_its_snr_and_cutoff_and_is_deterministic_by_seed(degrade):
    clean = utterance(1.0, 0)
    noisy = degrade.Degradation(snr_db=10.0)
    out = noisy.apply(clean, RATE, seed=1)
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((out - clean).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.2)
    np.testing.assert_array_equal(out, noisy.apply(clean, RATE, seed=1))
    assert not np.array_equal(out, noisy.apply(clean, RATE, seed=2))
    assert degrade.utterance_seed(0, "a") == degrade.utterance_seed(0, "a") != degrade.utterance_seed(0, "b")

    low = degrade.Degradation(lowpass_hz=2000.0).apply(clean, RATE, seed=0)
    spectrum = lambda wav: np.abs(np.fft.rfft(wav)) ** 2  # noqa: E731
    freqs = np.fft.rfftfreq(len(clean), 1 / RATE)
    above = freqs > 3000
    assert spectrum(low)[above].sum() < 1e-3 * spectrum(clean)[above].sum()
    assert spectrum(low)[freqs < 1000].sum() == pytest.approx(spectrum(clean)[freqs < 1000].sum(), rel=0.05)
    assert len(low) == len(clean)

    loud = np.full(RATE, 0.98, dtype=np.float32)  # noise on a near-full-scale clip is scaled down, not clipped
    assert np.abs(degrade.Degradation(snr_db=0.0).apply(loud, RATE, 0)).max() <= degrade.PEAK_LIMIT + 1e-6


@pytest.mark.parametrize("kwargs, match", [({}, "nothing to degrade"), ({"snr_db": float("nan")}, "snr-db"),
                                           ({"lowpass_hz": 0.0}, "lowpass-hz")])
def test_degradation_refuses_settings_out_of_range(degrade, kwargs, match):
    with pytest.raises(ValueError, match=match):
        degrade.Degradation(**kwargs)
    with pytest.raises(ValueError, match="Nyquist"):
        degrade.Degradation(lowpass_hz=8000.0).apply(utterance(0.5, 0), RATE, 0)


def test_the_tool_writes_labelled_clean_and_degraded_entries_and_skips_bad_audio(degrade, tmp_path):
    manifest = corpus(tmp_path, 3)
    entries = read_jsonl(manifest)
    (tmp_path / "u1.wav").write_bytes(b"not audio")  # unreadable: skipped and counted, as the shard writer does
    entries.append(ManifestEntry(id="gone", audio=str(tmp_path / "gone.wav"), text="gone", speaker="s"))
    write_jsonl(entries, manifest)
    out = tmp_path / "out"
    assert degrade.main(["--manifest", str(manifest), "--out", str(out), "--snr-db", "5", "--lowpass-hz", "3400.5",
                         "--seed", "3", "--degraded-quality", "2"]) == 0
    labelled = {entry.id: entry for entry in read_jsonl(out / "labelled.jsonl")}
    assert sorted(labelled) == ["u0", "u0_snr5_lp3400p5", "u2", "u2_snr5_lp3400p5"]
    assert all(_key_problem(utt, set()) is None for utt in labelled)  # usable as tar keys by the shard writer
    assert labelled["u0"].quality == 5.0 and labelled["u0"].audio == str(tmp_path / "u0.wav")
    copy = labelled["u2_snr5_lp3400p5"]
    assert copy.quality == 2.0 and copy.text == "number 2" and copy.speaker == "s"
    wav, rate = sf.read(copy.audio, dtype="float32")
    expected = degrade.Degradation(5.0, 3400.5).apply(utterance(0.8, 2), RATE, degrade.utterance_seed(3, "u2"))
    assert rate == RATE and np.abs(wav - expected).max() < 1e-4  # 16-bit
    summary = json.loads((out / "degradation.json").read_text())
    assert summary["written"] == 2 and summary["skipped"] == {"missing_audio": 1, "unreadable": 1}
    assert sorted(row["id"] for row in summary["rejected"]) == ["gone", "u1"]


def test_the_tool_fails_cleanly_when_nothing_can_be_degraded(degrade, tmp_path, capsys):
    write_jsonl([ManifestEntry(id="gone", audio=str(tmp_path / "gone.wav"), text="x", speaker="s")],
                tmp_path / "in.jsonl")
    assert degrade.main(["--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out"),
                         "--snr-db", "10"]) == 2
    assert "no entry could be degraded" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert degrade.main(["--manifest", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out"),
                         "--snr-db", "10"]) == 2
    assert degrade.main(["--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "nothing to degrade" in capsys.readouterr().err


def test_mos_bins_are_equal_bins_over_the_mos_scale():
    values = [1.0, 1.79, 1.8, 3.0, 4.2, 5.0, None, 0.0, 7.0]
    assert mos_bins(values, 5).tolist() == [0, 0, 1, 2, 4, 4, -1, 0, 4]
    assert mos_bins([1.0, 2.9, 3.1, 5.0], 2).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="num_classes"):
        mos_bins([3.0], 0)


def test_the_snr_estimate_tells_a_degraded_copy_from_its_original(degrade, tmp_path):
    probe = load_tool("quality_probe")
    clean = utterance(1.0, 0)
    assert probe.estimate_snr(clean, RATE) == probe.SNR_CAP_DB  # digital silence in the pauses
    estimates = [probe.estimate_snr(degrade.Degradation(snr).apply(clean, RATE, 0), RATE) for snr in (30, 20, 10)]
    assert estimates[0] > estimates[1] > estimates[2] > 0
    assert probe.estimate_snr(np.zeros(RATE, dtype=np.float32), RATE) == 0.0
    for name, wav in (("a", clean), ("b", degrade.Degradation(10.0).apply(clean, RATE, 0))):
        (tmp_path / "base").mkdir(exist_ok=True)
        (tmp_path / "new").mkdir(exist_ok=True)
        sf.write(tmp_path / "base" / f"{name}.wav", clean, RATE)
        sf.write(tmp_path / "new" / f"{name}.wav", wav, RATE)
    report = probe.snr_report(tmp_path / "new", tmp_path / "base")
    assert report["n"] == 2 and report["paired"]["n"] == 2 and report["paired"]["down"] == 1
    assert report["paired"]["mean_change_db"] < 0


def labelled_batch(seed: int) -> dict:
    """:func:`text_batch` of 4 rows, the last two "degraded": their mels' floor raised (what noise does to a log-mel),
    labelled MOS 1; the others MOS 5."""
    batch = text_batch(texts=("Set an alarm.", "Call me.", "It is windy.", "Call me."), speakers=("a", "b", "a", "b"),
                       seed=seed)
    batch["mel"][2:] = batch["mel"][2:].clamp(min=-2.0) + 3.0
    batch["quality"] = [5.0, 5.0, 1.0, 1.0]
    return batch


def test_the_separate_stage_trains_the_quality_head_on_the_labels():
    """The multitask objective passes the batch's MOS labels to the reward model, binned: its quality loss falls and
    its head learns to tell the degraded rows from the clean ones; a batch without labels gives the head no
    gradient."""
    system = micro_system()
    system.set_trainable(["reward"])
    stage = StageConfig(name="separate", trainable=["reward"], loss_weights={"reward": 1.0})
    objective = MultiTaskObjective(system, stage).train()
    head = system.reward.task_heads["quality"]

    unlabelled = labelled_batch(0)
    unlabelled["quality"] = [None] * 4
    loss, metrics = objective(unlabelled)
    loss.backward()
    assert metrics["reward_quality"] == 0.0 and all(p.grad is None or not p.grad.any() for p in head.parameters())
    system.zero_grad()

    def accuracy() -> float:
        objective.eval()
        with torch.no_grad():
            batch = labelled_batch(99)
            ids, mask = objective.frozen_tokens(batch["mel"], batch["mel_mask"], batch["keys"])
            logits = head(system.reward.encode(ids, mask, system.codebook()), mask)
        objective.train()
        return (logits.argmax(-1) == mos_bins(batch["quality"], 5)).float().mean().item()

    before = accuracy()
    optimizer = torch.optim.Adam([p for p in system.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for step in range(30):
        loss, metrics = objective(labelled_batch(step % 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["reward_quality"])
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert before < 1.0 and accuracy() == 1.0


def test_the_attribute_stage_steers_by_the_quality_head_and_resumes_exactly(tmp_path):
    """``e2e-tts train -c stages/attribute.yaml`` from an export: the quality and cer rewards score the rollouts, the
    LLM alone trains, and 2 updates straight equal 1 + a new process state (resume from the checkpoint) + 1."""
    spec = to_object(load_config([REPO / "stages" / "attribute.yaml"]).stage)
    assert spec.objective == "grpo" and spec.trainable == ["llm"] and spec.kl_beta > 0
    assert {name: reward.weight for name, reward in spec.grpo.rewards.items()} == {"quality": 0.5, "cer": 0.5}

    data, export = stage_start(tmp_path)

    def run(out, steps):
        return train(micro_config(
            *data, f"output_dir={out}", f"stage.init_from={export}", f"stage.max_steps={steps}",
            "stage.optim.lr=1e-3", "stage.grpo.num_samples=2", "stage.grpo.top_k=0", "stage.grpo.top_p=1.0",
            "synthesis.max_len_ratio=40", "engine.log_every=1", "engine.progress_bar=false",
            "engine.tensorboard=false", files=[REPO / "stages" / "attribute.yaml"]))

    straight, logged = check_exact_resume(tmp_path, export, run)
    assert all(0 < m["reward_quality"] < 1 and 0 <= m["reward_cer"] <= 1 and "kl" in m for m in logged["straight"])
    for name in ("reward", "flow"):  # only the LLM trains
        initial = load_file(str(export / f"{name}.safetensors"))
        trained = load_file(str(straight / f"{name}.safetensors"))
        assert all(torch.equal(initial[key], trained[key]) for key in initial), name


@pytest.mark.parametrize("forced_bin", [0, 4])
def test_the_probe_reads_the_quality_head_on_real_speech_and_on_the_llms_samples(tmp_path, monkeypatch, forced_bin):
    """A head that always says one bin: right on the labels of that bin only, its expected score that bin scaled to
    [0, 1], on the manifest's speech and on the LLM's samples alike (``--samples`` per item, the prompt's setting as
    asked)."""
    from test_tools import micro_synth_and_noise

    probe = load_tool("quality_probe")
    synth, wav, prompt = micro_synth_and_noise(tmp_path)
    export = str(synth.export_dir)
    classifier = torch.nn.Linear(1, 5)
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.full((5,), -50.0).index_fill(0, torch.tensor([forced_bin]), 50.0))
    sf.write(tmp_path / "clean.wav", wav, RATE)
    sf.write(tmp_path / "prompt.wav", prompt, RATE)
    write_jsonl([ManifestEntry(id="c", audio=str(tmp_path / "clean.wav"), text="ab", speaker="a", quality=5.0),
                 ManifestEntry(id="d", audio=str(tmp_path / "clean.wav"), text="ab", speaker="a", quality=1.2),
                 ManifestEntry(id="u", audio=str(tmp_path / "clean.wav"), text="ab", speaker="a")],
                tmp_path / "labelled.jsonl")
    (tmp_path / "meta.lst").write_text(f"x|ab|{tmp_path / 'prompt.wav'}|hello\ny|ab|{tmp_path / 'prompt.wav'}|hi\n")
    # every export the probe loads: the head's classes set by the forced classifier, its input ignored
    monkeypatch.setattr(PooledClassifier, "forward",
                        lambda self, encoded, mask: classifier(torch.zeros(encoded.shape[0], 1)))
    report = probe.head_report(export, str(tmp_path / "labelled.jsonl"))
    rollouts = {flag: probe.rollout_report(export, str(tmp_path / "meta.lst"), 3, flag, 0) for flag in (True, False)}
    assert report["per_label"] == {
        "1.2": {"n": 1, "accuracy": float(forced_bin == 0), "mean_expected_quality": pytest.approx(forced_bin / 4)},
        "5": {"n": 1, "accuracy": float(forced_bin == 4), "mean_expected_quality": pytest.approx(forced_bin / 4)}}
    for flag, rollout in rollouts.items():
        assert rollout["llm_prompt"] is flag and rollout["samples"] == 6
        assert rollout["mean_expected_quality"] == pytest.approx(forced_bin / 4)
        assert rollout["low_share"] == float(forced_bin == 0)
