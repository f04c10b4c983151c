"""Training objectives: one ``nn.Module`` per kind of stage, ``forward(batch) -> (loss, metrics)``.

An objective owns the system it trains (as a submodule, so DeepSpeed sees every parameter) and nothing
of the loop: the loop sets ``objective.step`` (optimizer updates so far) before each forward.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from e2e_tts.stage import StageConfig
from e2e_tts.system import TTSSystem


def build_objective(stage: StageConfig, system: TTSSystem) -> nn.Module:
    """The objective a stage spec names."""
    from e2e_tts.objectives.e2e import EndToEndObjective
    from e2e_tts.objectives.grpo import GRPOObjective
    from e2e_tts.objectives.multitask import MultiTaskObjective
    from e2e_tts.objectives.vocoder import VocoderObjective

    kinds: dict[str, Any] = {"multitask": MultiTaskObjective, "e2e": EndToEndObjective, "grpo": GRPOObjective,
                             "vocoder": VocoderObjective}
    if stage.objective not in kinds:
        raise ValueError(f"stage {stage.name!r}: unknown objective {stage.objective!r}; known: {sorted(kinds)}")
    return kinds[stage.objective](system, stage)
