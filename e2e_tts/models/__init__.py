"""The trainable modules: speech tokenizer, speech-token LLM, flow decoder, vocoder and reward model."""
