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
    if not conv[0]["value"].replace(IMAGE_PLACEHOLDER, "").strip():
        raise io.DataError(f"{where}, conversations[0]: field 'value' holds no question besides "
                           f"{IMAGE_PLACEHOLDER}")
    if not needs_image and has_image:
        raise io.DataError(f"{where}, conversations[0]: {IMAGE_PLACEHOLDER} in a record without an 'image'")


def load_llava_instruct(path: str | Path, image_dir: str | Path | None = None) -> list[dict]:
    """Read and validate a LLaVA-format JSON list: ids are non-empty strings or integers, image paths relative
    strings; with `image_dir`, every image is a readable image file inside it (`io.image_problem`, checked up
    front, once per image)."""
    path = Path(path)
    records = io.read_json(path)
    if not isinstance(records, list) or not records:
        raise io.DataError(f"{path}: expected a non-empty JSON list of records, got {io.show(records)}")
    problems: dict[str, str | None] = {}
    for i, r in enumerate(records):
        where = f"{path}, record {i} (id={io.show(r.get('id')) if isinstance(r, dict) else None})"
        io.check_fields(r, ("id", "conversations"), where)
        if isinstance(r["id"], bool) or not isinstance(r["id"], (str, int)) or not str(r["id"]).strip():
            raise io.DataError(f"{where}: field 'id' must be a non-empty string or an integer, got {io.show(r['id'])}")
        _check_conversation(r["conversations"], where, needs_image="image" in r)
        if "image" not in r:
            continue
        if not isinstance(r["image"], str) or not r["image"].strip():
            raise io.DataError(f"{where}: field 'image' must be a non-empty path, got {io.show(r['image'])}")
        if problem := io.relative_path_problem(r["image"]):
            raise io.DataError(f"{where}: field 'image' {problem}")
        if image_dir is not None:
            if r["image"] not in problems:
                problems[r["image"]] = io.image_problem(Path(image_dir) / r["image"], Path(image_dir))
            if problems[r["image"]]:
                raise io.DataError(f"{where}: field 'image': {problems[r['image']]}: {Path(image_dir) / r['image']}")
    logger.info("loaded %d records from %s", len(records), path)
    return records


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a record, with the image placeholder removed from the first question."""
    conv = record["conversations"]
    turns = [(conv[k]["value"], conv[k + 1]["value"]) for k in range(0, len(conv), 2)]
    q0 = turns[0][0].replace(IMAGE_PLACEHOLDER, "").strip()
    return [(q0, turns[0][1])] + turns[1:]
