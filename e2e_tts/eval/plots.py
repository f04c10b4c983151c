"""Figures of the evaluation report, drawn with matplotlib's Agg canvas into PNG files.

Figures are built as ``matplotlib.figure.Figure`` objects on an explicit ``FigureCanvasAgg``: no pyplot, so no
global backend or figure registry is touched (safe in tests, threads and headless machines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from e2e_tts.scoring.wer import FAILURE_WER

DPI = 100


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def save_mel_panels(panels: Sequence[tuple[str, np.ndarray]], path: str | Path,
                    frames_per_second: float) -> Path:
    """Log-mel spectrograms stacked vertically on one colour scale (e.g. synthesised above ground truth).

    Args:
        panels: ``(title, log-mel (T, n_mels))`` pairs; T may differ between panels.
        path: PNG to write.
        frames_per_second: mel frame rate, for a time axis in seconds.
    Raises:
        ValueError: for no panel, or a mel that is not 2-D.
    """
    if not panels:
        raise ValueError("save_mel_panels needs at least one panel")
    for title, mel in panels:
        if np.ndim(mel) != 2:
            raise ValueError(f"mel panel {title!r} must be (T, n_mels), got shape {np.shape(mel)}")
    low = min(float(np.min(mel)) for _, mel in panels if np.size(mel))
    high = max(float(np.max(mel)) for _, mel in panels if np.size(mel))
    longest = max(len(mel) for _, mel in panels) / frames_per_second
    figure = Figure(figsize=(9, 2.2 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (title, mel) in zip(axes, panels):
        image = ax.imshow(np.asarray(mel).T, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high,
                          extent=(0.0, len(mel) / frames_per_second, 0, np.shape(mel)[1]), interpolation="nearest")
        ax.set_xlim(0.0, max(longest, 1.0 / frames_per_second))
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("time (s)")
    figure.colorbar(image, ax=list(axes), label="log magnitude")
    return _save(figure, path)


def save_wer_histogram(series: Mapping[str, Sequence[float]], path: str | Path,
                       threshold: float = FAILURE_WER) -> Path:
    """Histogram of per-utterance WERs (fractions) of one or more conditions, with the WER > 0.5 threshold.

    WERs above 1 (insertions) fall into the last bin, labelled ``>= 1``.

    Raises:
        ValueError: when no series has a value.
    """
    if not any(len(values) for values in series.values()):
        raise ValueError("save_wer_histogram needs at least one WER")
    edges = np.linspace(0.0, 1.05, 22)  # 0.05-wide bins; the last one collects everything >= 1
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    ax = figure.subplots()
    for label, values in series.items():
        if len(values):
            clipped = np.minimum(np.asarray(values, dtype=np.float64), 1.0)
            ax.hist(clipped, bins=edges, alpha=0.6, label=f"{label} (n={len(values)})")
    ax.axvline(threshold, color="crimson", linestyle="--", label=f"WER = {threshold}")
    ax.set_xlabel("per-utterance WER (last bin: >= 1)")
    ax.set_ylabel("utterances")
    ax.legend(fontsize=8)
    return _save(figure, path)


def save_alignment(matrix: np.ndarray, path: str | Path, title: str, x_label: str = "input position",
                   y_label: str = "output step") -> Path:
    """An attention or alignment map ``(output steps, input positions)`` as an image.

    Raises:
        ValueError: for a matrix that is not 2-D or is empty.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"alignment {title!r} must be a non-empty 2-D matrix, got shape {matrix.shape}")
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    figure.colorbar(image, ax=ax)
    return _save(figure, path)


def save_failure_curve(counts: Sequence[int], failure_rates: Sequence[float], wers: Sequence[float],
                       path: str | Path) -> Path:
    """Best-of-N's catastrophic-failure rate (fractions) and WER (percent) against N, side by side, N on a log-2
    axis.

    Raises:
        ValueError: for no point, or sequences of different lengths.
    """
    if not counts or not len(counts) == len(failure_rates) == len(wers):
        raise ValueError(f"save_failure_curve needs as many rates and WERs as counts (at least one), got "
                         f"{len(counts)}, {len(failure_rates)} and {len(wers)}")
    figure = Figure(figsize=(8, 3.2), layout="constrained")
    for ax, values, label in zip(figure.subplots(1, 2), (100 * np.asarray(failure_rates, dtype=np.float64), wers),
                                 ("catastrophic-failure rate (%)", "WER (%)")):
        ax.plot(counts, values, marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(counts), [str(n) for n in counts])
        ax.set_xlabel("N (best-of-N candidates)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    return _save(figure, path)
