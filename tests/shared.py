"""Shared by the tests: micro model sizes and a clean environment for child processes."""

import os

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without the launcher variables that an in-process ``setup_distributed`` left
    behind (a child would otherwise try to join or bind this process's rendezvous port), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **extra)
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
