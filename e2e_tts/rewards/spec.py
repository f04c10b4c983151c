"""What a stage config says about one reward: its weight, its judge and its shaping (:class:`RewardSpec`), the
piecewise-linear shaping itself (:class:`Shaping`), and what each kind of reward takes (:data:`KINDS`,
:func:`check_specs`).

Kept apart from the components that score (:mod:`e2e_tts.rewards.components`, which decode audio through the
synthesizer) so that the stage schema can hold and check them: the config sits below synthesis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from e2e_tts.checks import FieldError, at_least, positive
from e2e_tts.scoring.asr import parse_asr_spec
from e2e_tts.scoring.verifiers import TOKEN_VERIFIER


@dataclass
class Shaping:
    """A raw score mapped to [0, 1] through three anchors: ``worst`` -> 0, ``mean`` -> 0.5, ``best`` -> 1, linear
    between them and clamped outside (Align2Speak; NeMo's defaults are CER (1.0, 0.1, 0.0) and speaker similarity
    (0.0, 0.6, 0.9)).

    A score that is better high (a similarity) has ``worst < mean < best``; one that is better low (an error rate)
    ``worst > mean > best``. Putting ``mean`` at the starting model's average gives a typical sample 0.5, so gains
    and losses around it weigh the same whatever the score's range.
    """

    worst: float
    mean: float
    best: float

    def __post_init__(self) -> None:
        if not (self.worst < self.mean < self.best or self.worst > self.mean > self.best):
            raise ValueError(f"a reward's shaping needs its mean strictly between worst and best, got worst "
                             f"{self.worst}, mean {self.mean}, best {self.best}")

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """``values (...)`` -> shaped ``(...)`` in [0, 1]."""
        toward_best = (values - self.mean) * (self.best - self.mean) > 0
        shaped = torch.where(toward_best, 0.5 + 0.5 * (values - self.mean) / (self.best - self.mean),
                             0.5 * (values - self.worst) / (self.mean - self.worst))
        return shaped.clamp(0.0, 1.0)


@dataclass
class RewardSpec:
    """One entry of a stage's rewards (``stage.grpo.rewards``, ``stage.dpo.rewards``); the entry's key names it.

    Attributes:
        weight: its weight in the sum of rewards (0 = off). A gate (``length``) multiplies the sum instead: weight 1
            (on) or 0 (off).
        kind: its kind (:data:`KINDS`); None = the key. Two rewards of one kind
            need two keys, e.g. ``wer_whisper: {kind: wer, backend: "whisper:<dir>"}``.
        backend: the judge of a kind that has one (None = its default): ``wer``: a verifier spec
            (:func:`e2e_tts.scoring.verifiers.build_verifier`); ``sim``: a similarity spec
            (:func:`e2e_tts.scoring.similarity.build_similarity`).
        shaping: anchors of the raw score (None = the kind's default map).
        min_ratio, max_ratio: the ``length`` gate's bounds in speech tokens per text id (None = its defaults).
    """

    weight: float = 1.0
    kind: Optional[str] = None
    backend: Optional[str] = None
    shaping: Optional[Shaping] = None
    min_ratio: Optional[float] = None
    max_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        at_least(self, "weight", 0)


ERROR_RATE = Shaping(worst=1.0, mean=0.5, best=0.0)  # 1 - rate, clamped to [0, 1]


@dataclass(frozen=True)
class Kind:
    """What a stage config may say of a kind of reward (scored by :data:`e2e_tts.rewards.components.REGISTRY`).

    Attributes:
        gate: it multiplies the sum of the other rewards (by 0 or 1) instead of adding to it: weight 1 (on) or 0
            (off), no shaping.
        backend: its judge when the spec names none; None: it has no judge to choose.
        shaping: the map of its raw score when the spec gives none; None: the raw score itself.
        ratios: its default ``(min_ratio, max_ratio)``; None: it takes no ratios.
    """

    gate: bool = False
    backend: Optional[str] = None
    shaping: Optional[Shaping] = None
    ratios: Optional[tuple[float, float]] = None


KINDS: dict[str, Kind] = {
    "cer": Kind(shaping=ERROR_RATE),
    "asr": Kind(),
    "speaker": Kind(),
    "quality": Kind(),
    "wer": Kind(backend="pocketsphinx", shaping=ERROR_RATE),
    "sim": Kind(backend="resemblyzer"),
    "w3ar": Kind(),
    # Half and twice the 1.7-2 speech tokens per text id of read speech for character-level front ends at 25 Hz
    # (e2e_tts.models.llm); other front ends set their own.
    "length": Kind(gate=True, ratios=(1.0, 4.0)),
}


def kind_of(name: str, spec: RewardSpec) -> str:
    """The kind of the reward ``name``: its spec's, or its name."""
    return spec.kind or name


def ratios_of(spec: RewardSpec, kind: Kind) -> tuple[float, float]:
    """The ``(min_ratio, max_ratio)`` of a spec of a kind that takes them, defaults filled in."""
    low, high = kind.ratios
    return (low if spec.min_ratio is None else spec.min_ratio, high if spec.max_ratio is None else spec.max_ratio)


def check_specs(specs: Mapping[str, RewardSpec]) -> None:
    """Refuses rewards of unknown kinds and specs their kind does not take.

    Raises:
        FieldError: on ``rewards``, naming the reward.
    """
    for name, spec in specs.items():
        problem = _problem(name, spec)
        if problem:
            raise FieldError("rewards", problem)


def _problem(name: str, spec: RewardSpec) -> Optional[str]:
    kind_name = kind_of(name, spec)
    if kind_name not in KINDS:
        return f"names {name!r}, of unknown kind {kind_name!r}; known: {', '.join(KINDS)}"
    kind = KINDS[kind_name]
    if spec.backend is not None and kind.backend is None:
        return f"{name}: the {kind_name} reward has no backend to choose, got {spec.backend!r}"
    if kind_name == "wer" and spec.backend not in (None, TOKEN_VERIFIER):
        try:
            parse_asr_spec(spec.backend)
        except ValueError as err:
            return f"{name}: {err}"
    if kind.ratios is None and (spec.min_ratio, spec.max_ratio) != (None, None):
        return f"{name}: min_ratio and max_ratio are the length gate's, not the {kind_name} reward's"
    if kind.gate:
        if spec.weight not in (0.0, 1.0):
            return f"{name}: the length gate multiplies the reward: weight 1 (on) or 0 (off), got {spec.weight}"
        if spec.shaping is not None:
            return f"{name}: the length gate takes no shaping"
    if kind.ratios is not None:
        low, high = ratios_of(spec, kind)
        if not 0 <= low <= high:
            return f"{name}: the length gate needs 0 <= min_ratio <= max_ratio, got {low} and {high}"
    return None


@dataclass
class WordRewardConfig:
    """The constants of W3AR's word reward (the paper's defaults; e2e_tts.rewards.w3ar), a config of the ``w3ar``
    stage and reward kind.

    Attributes:
        window: ``W``: purity sums the attention within ``W // 2`` frames of the peak.
        beta: the monotonicity's slope per frame of peak shift.
        purity_weight, monotonicity_weight: ``lambda_P`` and ``lambda_M``.
    """

    window: int = 6
    beta: float = 0.1
    purity_weight: float = 0.5
    monotonicity_weight: float = 0.5

    def __post_init__(self) -> None:
        at_least(self, "window", 0)
        positive(self, "beta")
        at_least(self, "purity_weight", 0)
        at_least(self, "monotonicity_weight", 0)
        if self.purity_weight == self.monotonicity_weight == 0:
            raise FieldError("purity_weight", "purity_weight and monotonicity_weight are both 0: the reward is 0")
