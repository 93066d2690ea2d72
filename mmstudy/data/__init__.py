"""Preference and instruction data: the LLaVA format, the preference schema, BDHS generation and the data review."""
