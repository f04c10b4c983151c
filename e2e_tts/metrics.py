"""Training metrics: JSON lines (machine-readable), TensorBoard (curves) and a progress bar (people)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLogger:
    """Writes one JSON object per logged step to ``<dir>/metrics.jsonl`` and the same scalars to TensorBoard.

    Only rank 0 writes; on other ranks every method is a no-op.

    Args:
        directory: run directory.
        enabled: False on ranks other than 0.
        tensorboard: also write TensorBoard event files under ``<dir>/tensorboard``.
        total_steps, initial_step: progress bar extent (``initial_step`` > 0 after a resume).
        progress_bar: show a tqdm bar.
    """

    def __init__(self, directory: str | Path, enabled: bool, tensorboard: bool, total_steps: int,
                 initial_step: int = 0, progress_bar: bool = True):
        self.enabled = enabled
        self.writer = None
        self.bar = None
        if not enabled:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(directory / "metrics.jsonl", "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        if progress_bar:
            self.bar = tqdm(total=total_steps, initial=initial_step, desc=directory.name, unit="step",
                            dynamic_ncols=True)
        self.start = time.time()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time() - self.start, 3), **metrics}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if self.bar is not None:
            shown = {k: f"{v:.3f}" for k, v in metrics.items() if k in ("loss", "lr") or k.startswith("llm_acc")}
            self.bar.set_postfix(shown, refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
