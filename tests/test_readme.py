"""The README's Python example runs as written, against a tiny export in the place it names."""

import re
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from e2e_tts.audio import write_audio
from e2e_tts.config import load_config, to_object
from e2e_tts.system import TTSSystem
from e2e_tts.text import ByteTokenizer
from shared import MICRO_MODEL_OVERRIDES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_python_example_synthesises_two_sentences_with_a_prompt(tmp_path, monkeypatch):
    example = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)[0]
    config = load_config(overrides=MICRO_MODEL_OVERRIDES)
    torch.manual_seed(0)
    system = TTSSystem(to_object(config.model), ByteTokenizer(), speakers=["a"])
    export_dir = re.search(r'from_pretrained\("([^"]+)"\)', example).group(1)
    system.export(tmp_path / export_dir, config)
    rate = config.audio.sample_rate
    write_audio(tmp_path / "prompt.wav", 0.1 * np.random.default_rng(0).standard_normal(rate).astype(np.float32),
                rate)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(README), "exec"), {})
    for name in ("out_0.wav", "out_1.wav"):
        wav, written_rate = sf.read(tmp_path / name, dtype="float32")
        assert written_rate == rate and wav.ndim == 1 and len(wav) > 0 and np.isfinite(wav).all()
