"""Shared by the tests: micro model sizes, a clean environment for child processes, speech-like shards, real
flite speech."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the launcher variables that an in-process ``setup_distributed`` left
    behind (a child would otherwise try to join or bind this process's rendezvous port), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra})
    return env


# Module sizes small enough that a whole system builds and steps in well under a second: the tiny preset
# shrunk to width 32 and one block per stack; 2 ODE steps.
MICRO_MODEL_OVERRIDES = [
    "text.tokenizer=bytes",
    "model.tokenizer.dim=32", "model.tokenizer.depth=1", "model.tokenizer.heads=2", "model.tokenizer.levels=[5,5,5]",
    "model.llm.hidden_size=32", "model.llm.num_layers=1", "model.llm.num_heads=2", "model.llm.num_kv_heads=1",
    "model.llm.intermediate_size=64", "model.llm.max_position_embeddings=512",
    "model.flow.dim=32", "model.flow.depth=1", "model.flow.heads=2", "model.flow.upsample_conv_layers=1",
    "model.flow.nfe=2",
    "model.reward.encoder_dim=32", "model.reward.encoder_depth=1", "model.reward.encoder_heads=2",
    "model.reward.decoder_dim=32", "model.reward.decoder_depth=1", "model.reward.decoder_heads=2",
    "model.reward.max_text_length=24",
    "model.vocoder.dim=16", "model.vocoder.intermediate_dim=32", "model.vocoder.num_blocks=1",
]


def speech_like(seconds: float, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """Harmonic tones with a moving pitch and noise bursts: enough structure for the mel and the checks."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    return (wav + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def speech_like_shards(root: Path, count: int) -> str:
    """``count`` speech-like utterances of 0.5-1.2 s (``"sentence number <i> is here"``, speakers spk0-spk2) written
    as shards of 6 under ``root``; returns the shard list."""
    from e2e_tts.audio import AudioConfig
    from e2e_tts.data.manifest import ManifestEntry
    from e2e_tts.data.shards import write_shards

    rng = np.random.default_rng(0)
    entries = []
    for i in range(count):
        path = root / f"utt{i:02d}.wav"
        sf.write(path, speech_like(rng.uniform(0.5, 1.2), rng), 16000)
        entries.append(ManifestEntry(id=f"utt{i:02d}", audio=str(path), text=f"sentence number {i} is here",
                                     speaker=f"spk{i % 3}"))
    write_shards(entries, root / "shards", AudioConfig(), shard_size=6, workers=1, prefix="train")
    return str(root / "shards" / "train.list")


def flite(tmp_path: Path, voice: str, text: str) -> tuple[np.ndarray, int]:
    """``text`` spoken by Debian flite's ``voice``: waveform ``(N,)`` float32 and its rate; skips the test without
    flite."""
    if shutil.which("flite") is None:
        pytest.skip("Debian flite is not installed (apt-get install flite)")
    path = tmp_path / f"{voice}_{abs(hash(text))}.wav"
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
    wav, rate = sf.read(str(path), dtype="float32")
    return wav, rate
