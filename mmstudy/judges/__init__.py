"""Judges: the interface, the world's exact oracle, a local LLaVA judge and an OpenAI-compatible HTTP judge."""
