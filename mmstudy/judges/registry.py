"""A judge from its command-line name (`mmstudy.judges.base` defines the interface)."""

from __future__ import annotations

from pathlib import Path

from mmstudy.judges.base import Judge, LocalLlavaJudge, OracleJudge
from mmstudy.judges.http import HttpJudge


def make_judge(spec: str, *, seed: int = 0, cache_dir: str | Path | None = None, device: str = "cpu",
               http_options: dict | None = None) -> Judge:
    """A judge from its command-line name: `oracle`, `oracle:0.2` (error rate), `local:MODEL_DIR` (loaded on
    `device`), `http:URL#MODEL` (e.g. `http:http://127.0.0.1:8000/v1#llava-v1.6-34b`, cached in `cache_dir`,
    with `http_options` such as timeout_s and max_retries passed to `HttpJudge`)."""
    kind, _, arg = spec.partition(":")
    if kind == "oracle":
        try:
            return OracleJudge(float(arg) if arg else 0.0, seed=seed)
        except ValueError as e:
            raise ValueError(f"judge {spec!r}: {e}") from e
    if kind == "local" and arg:
        return LocalLlavaJudge(arg, device=device)
    if kind == "http" and arg:
        return HttpJudge.from_spec(arg, cache_dir=cache_dir, **(http_options or {}))
    raise ValueError(f"unknown judge {spec!r}; use oracle[:ERROR_RATE], local:MODEL_DIR or http:URL#MODEL")
