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
from e2e_tts.rewards.spec import RewardSpec, WordRewardConfig, check_specs
from e2e_tts.system import MODULES

OBJECTIVES = ("multitask", "e2e", "grpo", "dpo", "vocoder", "distill", "w3ar")  # what objectives.build_objective builds
GRPO_LOSSES = ("grpo", "dr_grpo", "token")
DPO_LOSSES = ("dpo", "ipo")
DPO_SAMPLERS = ("reference", "policy")


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


PROMPT_SPEAKERS = ("same", "any")


@dataclass
class RolloutConfig:
    """What the objectives that train the LLM on its own samples (``grpo``, ``dpo``, ``distill``) sample, and how they
    judge it.

    The rollouts are laid out as the run's synthesis lays out its rows (``synthesis.llm_prompt``: the LLM continues
    the prompt, or reads its text alone while only the flow hears the prompt) and bounded by its length ratios; the
    rewards on audio decode them as it does.

    Attributes:
        num_samples: samples per text (the group ``K``).
        temperature, top_k, top_p: the LLM's sampling.
        prompt: give each text a zero-shot prompt: another utterance of the batch, its text and true tokens before
            the LLM's row (when the LLM continues prompts), its mel before the flow's and its audio to the ``sim``
            reward; texts without such an utterance are sampled unprompted.
        prompt_speaker: whose utterance: ``same``: the next one of the text's speaker (a rollout speaks in its own
            speaker's voice); ``any``: the next one of the batch, whoever speaks it: texts and voices unpaired, as
            Align2Speak pairs a text corpus with a pool of speaker prompts. The rollout should sound like the
            prompt's speaker (the ``speaker`` and ``sim`` rewards).
        rewards: reward name -> :class:`~e2e_tts.rewards.spec.RewardSpec` (weight, judge, shaping): the kinds of
            :data:`e2e_tts.rewards.spec.KINDS`. Empty by default (omegaconf merges mappings key by key).
        reward_weights: reward name -> weight: the short spelling of rewards with their kind's defaults; a reward
            named in both is refused.
    """

    num_samples: int = 12
    temperature: float = 0.7
    top_k: int = 25
    top_p: float = 0.8
    prompt: bool = True
    prompt_speaker: str = "same"
    rewards: Dict[str, RewardSpec] = field(default_factory=dict)
    reward_weights: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive(self, "temperature")
        at_least(self, "top_k", 0)
        if not 0 < self.top_p <= 1:
            raise FieldError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        one_of(self, "prompt_speaker", PROMPT_SPEAKERS)
        if self.num_samples < 2:
            raise FieldError("num_samples", f"must be >= 2 (a text's samples are judged against each other), got "
                                            f"{self.num_samples}")
        both = sorted(set(self.rewards) & set(self.reward_weights))
        if both:
            raise FieldError("reward_weights", f"names {both}, which rewards names too: give each reward once")
        check_specs(self.reward_specs())

    def reward_specs(self) -> dict[str, RewardSpec]:
        """Every reward named, ``reward_weights`` as specs of their kind's defaults."""
        return {**{name: RewardSpec(weight=weight) for name, weight in self.reward_weights.items()}, **self.rewards}


@dataclass
class GRPOConfig(RolloutConfig):
    """Rollouts, rewards and loss of the ``grpo`` objective (Align2Speak: K 12, temperature 0.7, no KL).

    Attributes:
        scale_rewards: divide each group's centred rewards by its standard deviation (NeMo's default; the paper only
            centres them).
        loss_type: how the per-token policy-gradient terms are averaged: ``grpo`` (over each rollout's tokens, then
            over rollouts: GRPO's, Align2Speak's and NeMo's default), ``dr_grpo`` (their sum over the batch divided
            by the rows times the longest rollout the batch allowed: no length bias, Dr. GRPO) or ``token`` (over
            all the batch's tokens: DAPO's, which the tiny recipe's runs used).
    """

    scale_rewards: bool = True
    loss_type: str = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "loss_type", GRPO_LOSSES)


@dataclass
class DPOConfig(RolloutConfig):
    """Preference pairs and loss of the ``dpo`` objective: per text ``num_samples`` samples (DiffRO's DPO baseline: 5),
    the best (chosen) and the worst (rejected) by the rewards; a text whose samples all score the same gives no pair.

    Attributes:
        pairs_from: the LLM that samples the candidates: ``reference`` (the frozen starting LLM: offline DPO's pairs,
            drawn afresh each time a text comes round) or ``policy`` (the LLM being trained: online DPO).
        loss_type: ``dpo`` (``-log sigmoid(beta * h)``) or ``ipo`` (``(h - 1 / (2 beta))^2``), ``h`` the chosen
            sequence's log-ratio to the reference minus the rejected one's.
        beta: the strength of the reference (CosyVoice's and NeMo's 0.01).
        sft_weight: weight of the chosen sequences' negative log-likelihood per token added to the loss (CosyVoice
            adds it with weight 1; 0 = none).
    """

    num_samples: int = 5
    temperature: float = 1.0
    pairs_from: str = "reference"
    loss_type: str = "dpo"
    beta: float = 0.01
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "pairs_from", DPO_SAMPLERS)
        one_of(self, "loss_type", DPO_LOSSES)
        positive(self, "beta")
        at_least(self, "sft_weight", 0)


@dataclass
class DistillConfig(RolloutConfig):
    """Candidates, verifier and targets of the ``distill`` objective (best-of-N self-verification, distilled): per text
    ``num_samples`` candidates (N), judged by the rewards (the verifier; a gate such as ``length`` marks dropouts),
    the best non-dropout kept as a target when it passes.

    Attributes:
        candidates_from: the LLM that samples the candidates: ``reference`` (the frozen starting LLM: offline
            distillation of the base model's best-of-N, drawn afresh each time a text comes round) or ``policy`` (the
            LLM being trained: the online iterative variant).
        pass_reward: a candidate passes the verifier when its reward is at least this (0.5: with the ``cer`` reward
            alone, an id error rate of at most 0.5, Seed-TTS-Eval's failure line).
        only_failed: train only on texts whose single-shot sample (the first candidate) fails the verifier (a dropout,
            or a reward below ``pass_reward``).
    """

    num_samples: int = 8
    candidates_from: str = "reference"
    pass_reward: float = 0.5
    only_failed: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "candidates_from", DPO_SAMPLERS)
        at_least(self, "pass_reward", 0)


@dataclass
class W3ARConfig(RolloutConfig):
    """Rollouts, word reward and loss of the ``w3ar`` objective (W3AR: N = 8 samples per text, W = 6, beta = 0.1,
    0.5 purity + 0.5 monotonicity; e2e_tts.objectives.w3ar). Its reward is the word reward alone: ``rewards`` and
    ``reward_weights`` stay empty (the ``w3ar`` reward kind joins other rewards in a grpo or dpo stage).

    Attributes:
        word: the word reward's window, slope and weights.
        ce_weight: weight of the teacher-forced cross-entropy of the batch's own utterances (the paper's L_train).
    """

    num_samples: int = 8
    word: WordRewardConfig = field(default_factory=WordRewardConfig)
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rewards", "reward_weights"):
            if getattr(self, name):
                raise FieldError(name, f"the w3ar objective's reward is its word reward (w3ar.word), got "
                                       f"{sorted(getattr(self, name))}; to add other rewards, name the w3ar reward "
                                       f"in a grpo stage")
        at_least(self, "ce_weight", 0)


@dataclass
class StageConfig:
    """One training stage.

    Attributes:
        name: label for logs and directories.
        objective: ``multitask`` (joint, separate and cascade stages: the weighted sum of the consumers'
            own losses), ``e2e`` (Gumbel-softmax through frozen flow and reward), ``grpo`` (policy gradient
            on the LLM's own samples, scored by the rewards), ``dpo`` (preference pairs of its samples, ranked by
            the rewards), ``vocoder``, ``distill`` (cross-entropy on the best of its samples by the rewards) or
            ``w3ar`` (policy gradient with per-word advantages from the reward model's attention).
        trainable: modules that receive gradients and optimizer state; all others are frozen in eval mode.
        init_from: export directory of the previous stage (None: random initialisation).
        init_modules: the modules loaded from ``init_from`` (None: all of them); the others start from a fresh
            random initialisation, e.g. a consumer trained from scratch on frozen tokens, or at another size.
        loss_weights: per-loss weights; keys ``llm``, ``flow``, ``reward`` (multitask) and ``flow``, ``asr``,
            ``speaker`` (e2e). A weight of 0 skips that loss entirely; at least one must be non-zero.
        kl_beta: weight of the KL to the frozen starting LLM; 0 (none) unless a stage spec sets it (e2e: analytic per
            position, DiffRO's 0.1 in stages/e2e.yaml; grpo: the k3 estimate on the sampled tokens, which Align2Speak
            drops; w3ar: the same estimate, W3AR's gamma 0.1; dpo: none, its reference enters through ``dpo.beta``).
        multitask: what the ``multitask`` objective does in training besides the losses.
        gumbel: the relaxation of the ``e2e`` objective.
        grpo: rollouts, rewards and loss of the ``grpo`` objective.
        dpo: preference pairs and loss of the ``dpo`` objective.
        w3ar: rollouts, word reward and loss of the ``w3ar`` objective.
        distill: candidates, verifier and targets of the ``distill`` objective.
        max_steps: optimizer updates in this stage.
    """

    name: str = "joint"
    objective: str = "multitask"
    trainable: List[str] = field(default_factory=lambda: ["tokenizer", "llm", "flow", "reward"])
    init_from: Optional[str] = None
    init_modules: Optional[List[str]] = None
    # Empty by default: omegaconf merges mappings key by key, so defaults here would leak into every stage.
    loss_weights: Dict[str, float] = field(default_factory=dict)
    kl_beta: float = 0.0
    multitask: MultiTaskConfig = field(default_factory=MultiTaskConfig)
    gumbel: GumbelConfig = field(default_factory=GumbelConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    w3ar: W3ARConfig = field(default_factory=W3ARConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
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
