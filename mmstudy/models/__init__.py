"""LLaVA-architecture models: the tiny model built here and local Hugging Face checkpoints, generation with hidden
image tokens, sampling backends."""
