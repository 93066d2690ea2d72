"""mmstudy's preference schema: one JSON line per pair.

    id        unique string
    image     path relative to an image root
    prompt    the user's question (no image placeholder)
    chosen    the preferred response y+
    rejected  the dispreferred response y-
    source    where the pair comes from ("bdhs_attn", "world_povid", "povid", ...)
    rejected_2   optional: a second rejected response sharing y+ (Avg-DPO: an external and a self-generated one)
    provenance   optional: how the pair was made (generator, seed, ...)

    >>> pairs = load_preferences("prefs.jsonl", image_root="world/images")
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmstudy import io

logger = logging.getLogger(__name__)

REQUIRED = ("id", "image", "prompt", "chosen", "rejected", "source")
OPTIONAL_TEXT = ("rejected_2",)


def check_preference(record: dict, where: str) -> None:
    """DataError naming `where` and the field for a missing, non-string or empty field."""
    io.check_fields(record, REQUIRED, where)
    for field in REQUIRED + tuple(f for f in OPTIONAL_TEXT if f in record):
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise io.DataError(f"{where}: field {field!r} must be a non-empty string, got {value!r}")


def load_preferences(path: str | Path, image_root: str | Path | None = None) -> list[dict]:
    """Read and validate a preference file; with `image_root`, every image must exist. Ids must be unique."""
    path = Path(path)
    records = io.read_jsonl(path)
    seen: set = set()
    for line, r in enumerate(records, start=1):
        where = f"{path}, record {line}"
        check_preference(r, where)
        if r["id"] in seen:
            raise io.DataError(f"{where}: duplicate id {r['id']!r}")
        seen.add(r["id"])
        if image_root is not None and not (Path(image_root) / r["image"]).is_file():
            raise io.DataError(f"{where}: field 'image': file not found: {Path(image_root) / r['image']}")
    logger.info("loaded %d preference pairs from %s", len(records), path)
    return records
