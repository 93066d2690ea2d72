"""What the command groups share."""

from __future__ import annotations

from pathlib import Path


def params_of(args) -> dict:
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items() if k != "func"}


def number_list(text: str, flag: str, kind=int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None
