"""Command-line overrides of dataclass configs: `--set KEY=VALUE`, KEY a field path ("p_drift",
"instruct.steps"), VALUE read as YAML ("0.6", "[0.5, 0.85]", "true").

    >>> with_overrides(WorldSpec(), ["p_drift=0.6", "faint_alpha=[0.5, 0.85]"])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import yaml


def parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    """["a.b=1", ...] -> {"a.b": 1, ...}; a malformed item or a repeated key is a ValueError naming it."""
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. p_drift=0.6 or instruct.steps=3000")
        key = key.strip()
        if key in out:
            raise ValueError(f"--set {key} is given twice")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not YAML: {e}") from e
    return out


def with_overrides(cfg, sets: Sequence[str]):
    """A copy of the dataclass `cfg` with each `--set` applied (nested dataclasses by dotted path; a list becomes a
    tuple where the field holds a tuple). An unknown field is a ValueError listing the known ones; the config's
    own validation runs on the result."""
    for key, value in parse_sets(sets).items():
        cfg = _replace(cfg, key.split("."), value, key)
    return cfg


def _replace(cfg, path: list[str], value, key: str):
    fields = {f.name for f in dataclasses.fields(cfg)}
    if path[0] not in fields:
        raise ValueError(f"--set {key}: {type(cfg).__name__} has no field {path[0]!r}; known: {sorted(fields)}")
    current = getattr(cfg, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"--set {key}: {path[0]!r} is not a group of settings")
        value = _replace(current, path[1:], value, key)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif dataclasses.is_dataclass(current):
        raise ValueError(f"--set {key}: {path[0]!r} is a group of settings; set one of its fields ({key}.FIELD)")
    return dataclasses.replace(cfg, **{path[0]: value})
