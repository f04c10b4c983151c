"""Shared by the tests: module sizes small enough that a whole system builds and steps in well under a second."""

# The tiny preset shrunk to width 32 and one block per stack; 2 ODE steps.
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
