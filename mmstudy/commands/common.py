"""What the command groups share."""

from __future__ import annotations

import sys
from pathlib import Path

from mmstudy.runs import build_manifest


def params_of(args) -> dict:
    """A command's arguments as JSON-ready params (paths as strings)."""
    return {k: [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items() if k != "func"}


def number_list(text: str, flag: str, kind=int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None


def manifest_of(args, params: dict | None = None) -> dict:
    """The run manifest of a command: its seed, its command line and its params (default: every argument)."""
    params = params_of(args) if params is None else params
    return build_manifest(getattr(args, "seed", None), " ".join(sys.argv), params)


def add_judge_limits(p) -> None:
    """--judge-timeout and --judge-retries, for the commands that call an HTTP judge (`judge_limits`)."""
    p.add_argument("--judge-timeout", type=float, default=120.0, help="http judge: seconds per attempt, in all")
    p.add_argument("--judge-retries", type=int, default=4, help="http judge: retries of a failed call")


def judge_limits(args) -> dict:
    """The HTTP judge's options from `add_judge_limits`' arguments (`make_judge`'s http_options)."""
    return {"timeout_s": args.judge_timeout, "max_retries": args.judge_retries}
