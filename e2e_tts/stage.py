"""The stage spec: what trains, what is frozen, which losses with which weights, and the schedule.

Stage specs are declarative YAML files in ``stages/`` (merged into the experiment config under ``stage:``).
The training loop reads them; components never branch on the stage name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from e2e_tts.checks import FieldError, at_least, each_one_of, one_of, positive, within
from e2e_tts.engine import OptimConfig
from e2e_tts.models.llm import GuideConfig
from e2e_tts.system import MODULES

OBJECTIVES = ("multitask", "e2e", "grpo", "vocoder")  # what e2e_tts.objectives.build_objective builds


@dataclass
class MultiTaskConfig:
    """What the ``multitask`` objective (joint, separate and cascade stages) does in training besides the
    consumers' own losses; validation runs without any of it.

    Attributes:
        prompt_pairs: the chance that one of the LLM's rows is prefixed by another utterance of its speaker from
            the batch (its text before the text, its speech before the speech), as a zero-shot prompt precedes it
            in synthesis (0 = off; e2e_tts/objectives/prompting.py).
        llm_input_noise: the fraction of the LLM's teacher-forced speech inputs replaced by a random code (targets
            unchanged): the model learns to continue after a wrong token, as it must when it samples its own.
        reward_input_noise: the probability of replacing each of the reward model's input ids by a random id: a
            recogniser robust to wrong tokens (soft inputs are never perturbed).
        guide: guided attention on some of the LLM's heads (:class:`~e2e_tts.models.llm.GuideConfig`).
    """

    prompt_pairs: float = 0.0
    llm_input_noise: float = 0.0
    reward_input_noise: float = 0.0
    guide: GuideConfig = field(default_factory=GuideConfig)

    def __post_init__(self) -> None:
        within(self, "prompt_pairs", 0, 1)
        if not 0 <= self.llm_input_noise < 1:  # 1 would leave no true input to learn from
            raise FieldError("llm_input_noise", f"must be in [0, 1), got {self.llm_input_noise!r}")
        within(self, "reward_input_noise", 0, 1)


@dataclass
class GumbelConfig:
    """Relaxation of the LLM's next-token distributions in the ``e2e`` objective.

    The temperature anneals linearly from ``tau_start`` to ``tau_end`` over ``anneal_steps`` optimizer
    updates (HPRO anneals 2 -> 1 -> 0.8). ``hard`` uses straight-through one-hot samples, so the frozen
    consumers see exact codebook points in the forward pass while gradients follow the soft sample.
    """

    tau_start: float = 1.0
    tau_end: float = 0.5
    anneal_steps: int = 1000
    hard: bool = True

    def __post_init__(self) -> None:
        positive(self, "tau_start")
        positive(self, "tau_end")
        at_least(self, "anneal_steps", 0)

    def temperature(self, step: int) -> float:
        progress = min(1.0, step / max(1, self.anneal_steps))
        return self.tau_start + (self.tau_end - self.tau_start) * progress


@dataclass
class GRPOConfig:
    """Rollouts and rewards of the ``grpo`` objective (Align2Speak: K 12, temperature 0.7, no KL).

    Attributes:
        num_samples: rollouts per text (the group ``K``).
        temperature, top_k, top_p: the LLM's sampling during rollouts.
        scale_rewards: divide each group's centred rewards by its standard deviation (NeMo's default; the
            paper only centres them).
        reward_weights: weights of the rewards, from the frozen reward model: ``cer`` (1 - error rate of its
            greedy CTC transcript against the text ids, clamped at 0), ``asr`` (its mean log P(text | tokens)
            per text id) and ``speaker`` (its probability of the row's speaker). Empty by default (omegaconf
            merges mappings key by key); the stage spec names at least one.
        prompt: prompt each rollout with another utterance of the same speaker in the batch (text and true
            tokens), as synthesis does; rows without such a partner roll out unprompted.
    """

    num_samples: int = 8
    temperature: float = 0.7
    top_k: int = 25
    top_p: float = 0.8
    scale_rewards: bool = True
    reward_weights: Dict[str, float] = field(default_factory=dict)
    prompt: bool = True

    def __post_init__(self) -> None:
        positive(self, "temperature")
        at_least(self, "top_k", 0)
        if not 0 < self.top_p <= 1:
            raise FieldError("top_p", f"must be in (0, 1], got {self.top_p!r}")


@dataclass
class StageConfig:
    """One training stage.

    Attributes:
        name: label for logs and directories.
        objective: ``multitask`` (joint, separate and cascade stages: the weighted sum of the consumers'
            own losses), ``e2e`` (Gumbel-softmax through frozen flow and reward), ``grpo`` (policy gradient
            on the LLM's own samples, scored by the frozen reward model) or ``vocoder``.
        trainable: modules that receive gradients and optimizer state; all others are frozen in eval mode.
        init_from: export directory of the previous stage (None: random initialisation).
        init_modules: the modules loaded from ``init_from`` (None: all of them); the others start from a fresh
            random initialisation, e.g. a consumer trained from scratch on frozen tokens, or at another size.
        loss_weights: per-loss weights; keys ``llm``, ``flow``, ``reward`` (multitask) and ``flow``, ``asr``,
            ``speaker`` (e2e). A weight of 0 skips that loss entirely; at least one must be non-zero.
        kl_beta: weight of the KL to the frozen reference LLM (e2e: analytic per position, DiffRO uses 0.1;
            grpo: the k3 estimate on the sampled tokens, Align2Speak uses none).
        multitask: what the ``multitask`` objective does in training besides the losses.
        gumbel: the relaxation of the ``e2e`` objective.
        grpo: rollouts and rewards of the ``grpo`` objective.
        max_steps: optimizer updates in this stage.
    """

    name: str = "joint"
    objective: str = "multitask"
    trainable: List[str] = field(default_factory=lambda: ["tokenizer", "llm", "flow", "reward"])
    init_from: Optional[str] = None
    init_modules: Optional[List[str]] = None
    # Empty by default: omegaconf merges mappings key by key, so defaults here would leak into every stage.
    loss_weights: Dict[str, float] = field(default_factory=dict)
    kl_beta: float = 0.1
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    gumbel: GumbelConfig = field(default_factory=GumbelConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 1000

    def __post_init__(self) -> None:
        one_of(self, "objective", OBJECTIVES)
        each_one_of(self, "trainable", MODULES)
        if self.init_modules is not None:
            each_one_of(self, "init_modules", MODULES)
        negative = {name: weight for name, weight in self.loss_weights.items() if not weight >= 0}
        if negative:
            raise FieldError("loss_weights", f"must be >= 0, got {negative}")
        at_least(self, "kl_beta", 0)
        at_least(self, "max_steps", 1)  # 0 would export untrained weights as if trained
