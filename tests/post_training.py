"""Shared by the post-training tests: a micro system in the configuration it was built from, a batch of texts with
their mels, speakers and audio as the loader gives it, and the start and check of a stage's exact-resume test."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e2e_tts.config import load_config, to_object
from e2e_tts.engine import load_checkpoint_file
from e2e_tts.rewards.components import RewardScores
from e2e_tts.system import TTSSystem
from e2e_tts.text import ByteTokenizer, normalize_text
from e2e_tts.train import build_system
from shared import MICRO_MODEL_OVERRIDES, speech_like_shards

REPO = Path(__file__).resolve().parents[1]

TEXTS = ("Set an alarm.", "Call me.", "It is windy.")
SPEAKERS = ("a", "b", "a")  # rows 0 and 2 prompt each other; row 1 has no other utterance of its speaker


def micro_config(*overrides: str, files=()):
    """The experiment config of ``files`` (YAML) at the micro sizes (bytes text, 125 speech codes, 2 ODE steps), with
    ``overrides``."""
    return load_config(files, MICRO_MODEL_OVERRIDES + list(overrides))


def micro_system(config=None, seed: int = 0, speakers=("a", "b")) -> TTSSystem:
    """Untrained modules of ``config`` (default :func:`micro_config`) for ``speakers``."""
    config = config or micro_config()
    torch.manual_seed(seed)
    return TTSSystem(to_object(config.model), ByteTokenizer(), list(speakers), to_object(config.audio))


FAR_CAP = micro_config("synthesis.max_len_ratio=40")  # an untrained LLM's samples end before the cap


@pytest.fixture
def system():
    """An untrained micro system (:data:`FAR_CAP`) whose LLM alone trains, as a post-training stage trains it."""
    system = micro_system(FAR_CAP)
    system.set_trainable(["llm"])
    return system


def text_batch(texts=TEXTS, speakers=SPEAKERS, seed: int = 0, hop: int = 320) -> dict:
    """A loader's batch of ``texts`` (bytes ids of the normalised texts) with random log-mels of 24-40 frames and
    noise waveforms of as many hops (``data.return_wav``)."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.tensor([40 - 6 * (i % 3) for i in range(len(texts))])
    ids = [list(normalize_text(text, "en-us").encode()) for text in texts]
    text_lengths = torch.tensor([len(row) for row in ids])
    text_ids = torch.zeros(len(texts), int(text_lengths.max()), dtype=torch.long)
    for row, values in enumerate(ids):
        text_ids[row, :len(values)] = torch.tensor(values)
    wav_lengths = frames * hop
    wav = torch.randn(len(texts), int(wav_lengths.max()), generator=gen) * 0.1
    wav = wav * (torch.arange(wav.shape[1])[None] < wav_lengths[:, None])
    return {"mel": torch.randn(len(texts), int(frames.max()), 80, generator=gen) * 2 - 5,
            "mel_mask": torch.arange(int(frames.max()))[None] < frames[:, None],
            "text_ids": text_ids, "text_mask": torch.arange(text_ids.shape[1])[None] < text_lengths[:, None],
            "texts": list(texts), "speaker": list(speakers), "keys": [f"utt{seed}_{i}" for i in range(len(texts))],
            "wav": wav, "wav_lengths": wav_lengths}


def noise(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """White noise at -20 dBFS RMS: audible, never silent."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def lower_half_reward(system: TTSSystem):
    """A reward the policy can reach by itself: each rollout's share of speech tokens in the codebook's lower half."""
    half = system.codebook().shape[0] // 2

    def reward(rollouts) -> RewardScores:
        share = torch.tensor([(row < half).float().mean().item() for row in rollouts.speech])
        return RewardScores(total=share, shaped={"cer": share}, raw={"cer": share})
    return reward


def train_on_reward(objective, updates: int, metric: str) -> list[float]:
    """``updates`` Adam updates (lr 3e-3) of ``objective``'s trainable parameters on :func:`text_batch`, from seed 0;
    returns ``metric`` of each update."""
    optimizer = torch.optim.Adam([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    history = []
    for _ in range(updates):
        loss, metrics = objective(text_batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics[metric])
    return history


def stage_start(tmp_path):
    """What a post-training stage's resume test starts from: the data overrides that read 12 speech-like utterances
    written under ``tmp_path``, and an untrained micro export (a joint stage's system) to set as ``stage.init_from``.

    Returns:
        ``(data_overrides, export_dir)``.
    """
    (tmp_path / "corpus").mkdir()
    shards = speech_like_shards(tmp_path / "corpus", 12)
    data = [f"data.shards=[{shards}]", "data.max_frames=300", "data.max_duration=2.0", "data.max_samples=3",
            "data.num_workers=0", "data.shuffle_buffer=8", "data.sort_buffer=6", "model.reward.max_text_length=64"]
    joint = micro_config(*data, f"output_dir={tmp_path / 'joint'}", files=[REPO / "stages" / "joint.yaml"])
    torch.manual_seed(0)
    return data, build_system(joint).export(tmp_path / "init", joint)


def check_exact_resume(tmp_path, export, run, same=("reward",)):
    """``run(out, steps)`` (one ``e2e-tts train`` of the stage from ``export``, returning its export) for 2 updates
    straight, and for 1 then 2 in a new process state (resumed from the checkpoint): the logged losses and the metrics
    ``same`` agree, the LLM's exported weights agree and moved from ``export``'s, and the checkpoints hold the
    system's weights only (no frozen reference).

    Returns:
        the straight run's export, and the logged metrics of each run, ``{"straight": [...], "resumed": [...]}``.
    """
    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    torch.manual_seed(456)  # the loop must not depend on the caller's RNG state
    resumed = run(tmp_path / "resumed", 2)
    logged = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("straight", "resumed")}
    assert [m["step"] for m in logged["resumed"]] == [1, 2]
    for a, b in zip(logged["straight"], logged["resumed"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert all(b[name] == pytest.approx(a[name]) for name in same)
    for a, b in zip(load_file(str(straight / "llm.safetensors")).values(),
                    load_file(str(resumed / "llm.safetensors")).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    initial, trained = load_file(str(export / "llm.safetensors")), load_file(str(straight / "llm.safetensors"))
    assert any(not torch.equal(initial[key], trained[key]) for key in initial)  # it trained
    model_files = list((tmp_path / "straight" / "checkpoints").glob("step_*/*model_states.pt"))
    assert model_files
    for model_file in model_files:
        keys = load_checkpoint_file(model_file)["module"].keys()
        assert keys and all(key.startswith("system.") for key in keys), model_file
    return straight, logged
