"""Training objectives: one ``nn.Module`` per kind of stage, ``forward(batch) -> (loss, metrics)``.

An objective owns the system it trains (as a submodule, so DeepSpeed sees every parameter) and nothing
of the loop: the loop sets ``objective.step`` (optimizer updates so far) before each forward.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


def build_objective(stage: StageConfig, system: TTSSystem, config: Any = None) -> nn.Module:
    """The objective a stage spec names.

    Args:
        stage: the stage spec.
        system: the system it trains.
        config: the run's experiment config: the objectives that sample and judge speech (grpo, dpo, distill) follow
            its synthesis settings (None: defaults).
    """
    from e2e_tts.objectives.distill import DistillObjective
    from e2e_tts.objectives.dpo import DPOObjective
    from e2e_tts.objectives.e2e import EndToEndObjective
    from e2e_tts.objectives.grpo import GRPOObjective
    from e2e_tts.objectives.multitask import MultiTaskObjective
    from e2e_tts.objectives.vocoder import VocoderObjective
    from e2e_tts.objectives.w3ar import W3ARObjective

    kinds: dict[str, Any] = {"multitask": MultiTaskObjective, "e2e": EndToEndObjective, "vocoder": VocoderObjective}
    sampling: dict[str, Any] = {"grpo": GRPOObjective, "dpo": DPOObjective, "distill": DistillObjective,
                                "w3ar": W3ARObjective}
    if stage.objective in sampling:
        return sampling[stage.objective](system, stage, config)
    if stage.objective not in kinds:
        raise ValueError(f"stage {stage.name!r}: unknown objective {stage.objective!r}; known: "
                         f"{sorted(kinds) + sorted(sampling)}")
    return kinds[stage.objective](system, stage)
