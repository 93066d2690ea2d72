"""Loading and validating LLaVA-format data: instruction conversations, with or without images.

LLaVA-Instruct-150K records look like `{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}` with
`<image>` in the first human turn; text-only records (ShareGPT style) have no "image". Errors name the file,
the record and the field.

    >>> records = load_llava_instruct("world/llava_instruct_train.json", image_dir="world/images")
"""

from __future__ import annotations

import logging
from pathlib import Path

from mmstudy import io

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"


def _check_conversation(conv, where: str, needs_image: bool) -> None:
    if not isinstance(conv, list) or not conv or len(conv) % 2:
        raise io.DataError(f"{where}: field 'conversations' must be a non-empty list of human/gpt turn pairs")
    for t, turn in enumerate(conv):
        io.check_fields(turn, ("from", "value"), f"{where}, conversations[{t}]")
        expected = "human" if t % 2 == 0 else "gpt"
        if turn["from"] != expected:
            raise io.DataError(f"{where}, conversations[{t}]: field 'from' is {turn['from']!r}, expected {expected!r}")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            raise io.DataError(f"{where}, conversations[{t}]: field 'value' must be a non-empty string")
    has_image = IMAGE_PLACEHOLDER in conv[0]["value"]
    if needs_image and not has_image:
        raise io.DataError(f"{where}, conversations[0]: field 'value' lacks the {IMAGE_PLACEHOLDER} placeholder")
    if not needs_image and has_image:
        raise io.DataError(f"{where}, conversations[0]: {IMAGE_PLACEHOLDER} in a record without an 'image'")


def load_llava_instruct(path: str | Path, image_dir: str | Path | None = None) -> list[dict]:
    """Read and validate a LLaVA-format JSON list. With `image_dir`, image files must exist (checked up front)."""
    path = Path(path)
    records = io.read_json(path)
    if not isinstance(records, list):
        raise io.DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    for i, r in enumerate(records):
        where = f"{path}, record {i} (id={r.get('id') if isinstance(r, dict) else None!r})"
        io.check_fields(r, ("id", "conversations"), where)
        _check_conversation(r["conversations"], where, needs_image="image" in r)
        if "image" in r and image_dir is not None and not (Path(image_dir) / r["image"]).is_file():
            raise io.DataError(f"{where}: field 'image': file not found: {Path(image_dir) / r['image']}")
    logger.info("loaded %d records from %s", len(records), path)
    return records


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a record, with the image placeholder removed from the first question."""
    conv = record["conversations"]
    turns = [(conv[k]["value"], conv[k + 1]["value"]) for k in range(0, len(conv), 2)]
    q0 = turns[0][0].replace(IMAGE_PLACEHOLDER, "").strip()
    return [(q0, turns[0][1])] + turns[1:]
