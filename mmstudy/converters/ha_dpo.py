"""HA-DPO (hallucination-aware DPO) -> preference pairs.

Released files: https://huggingface.co/datasets/juliozhao/hadpo-data, `hadpo/llava-v1.5/desc_data.json` and
`pope_data.json` (also for minigpt4 and instructblip); images: Visual Genome v2 (`VG_100K/`, `VG_100K_2/`), so
`--image-root` is the folder holding those two (HA-DPO's `ha_dpo/data/VG`). Convert each file on its own; the
file's top-level type says which it is.

  - desc_data.json: `{"<VG image id>": {"chosen": [descriptions], "rejected": [descriptions]}}`. As HA-DPO's
    "offline" sampling does, one pair per image: a seeded pick of one chosen, one rejected and one of HA-DPO's
    four description prompts (`derive_seed(seed, "ha_dpo", image id)`). Id `ha_dpo-desc-<image id>`.
  - pope_data.json: a list of `{"image_id", "question", "chosen", "reject", "answer", "correct"}`; records the model
    answered correctly are left out, as HA-DPO's trainer does (`skipped_answered_correctly`). Id
    `ha_dpo-pope-<record index>` (an image has several questions).
The image is `VG_100K/<id>.jpg`, or `VG_100K_2/<id>.jpg` when only that exists (Visual Genome's own layout).

    >>> result = convert_ha_dpo("hadpo/llava-v1.5/desc_data.json", ConvertConfig(image_root="VG"))
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from mmstudy import io
from mmstudy.converters.common import (
    Context,
    ConvertConfig,
    ConvertResult,
    SkipRecord,
    clean_text,
    collect,
    fail,
    get,
    obj,
    text,
)
from mmstudy.data.preferences import PREFERENCE
from mmstudy.runs import derive_seed

SOURCE = "ha_dpo"
DATASET = "juliozhao/hadpo-data"
DESC_PROMPTS = (  # HA-DPO's llava-v1_5/train_dpo.py desc_process
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)


def _vg_id(image_id, where: str, field: str) -> int:
    if isinstance(image_id, int) and not isinstance(image_id, bool) and 0 <= image_id < 10**18:
        return image_id
    if not isinstance(image_id, str) or not re.fullmatch(r"[0-9]{1,18}", image_id):
        raise fail(where, field, f"must be a Visual Genome image id (digits), got {io.show(image_id)}")
    return int(image_id)


def _vg_image(image_id: int, where: str, field: str, ctx: Context) -> str:
    return ctx.images.existing(f"VG_100K/{image_id}.jpg", where, field, alternatives=(f"VG_100K_2/{image_id}.jpg",))


def _texts(entry: dict, key: str, where: str) -> list[str]:
    values = get(entry, key, where)
    if not isinstance(values, list) or not values:
        raise fail(where, key, "must be a non-empty list of descriptions")
    return [clean_text(v, where, f"{key}[{k}]") for k, v in enumerate(values)]


def ha_dpo_desc_pair(item, where: str, index: int, ctx: Context) -> dict:
    """`item` is one (image id, {"chosen": [...], "rejected": [...]}) entry of desc_data.json."""
    image_id, entry = item
    entry = obj(entry, where)
    chosen, rejected = _texts(entry, "chosen", where), _texts(entry, "rejected", where)
    image = _vg_image(_vg_id(image_id, where, "image_id"), where, "image_id", ctx)
    rng = random.Random(derive_seed(ctx.cfg.seed, "ha_dpo", image_id))
    source = ctx.cfg.source or SOURCE
    return {"id": f"{source}-desc-{image_id}", "image": image, "prompt": rng.choice(DESC_PROMPTS),
            "chosen": rng.choice(chosen), "rejected": rng.choice(rejected), "source": source,
            "provenance": {"dataset": DATASET, "file": "desc_data", "image_id": str(image_id)}}


def ha_dpo_pope_pair(record, where: str, index: int, ctx: Context) -> dict:
    r = obj(record, where)
    texts = {"prompt": text(r, "question", where, prompt=True), "chosen": text(r, "chosen", where),
             "rejected": text(r, "reject", where)}
    correct = get(r, "correct", where)
    if not isinstance(correct, bool):
        raise fail(where, "correct", f"must be true or false, got {io.show(correct)}")
    image_id = _vg_id(get(r, "image_id", where), where, "image_id")
    if correct:
        raise SkipRecord("answered_correctly")
    image = _vg_image(image_id, where, "image_id", ctx)
    source = ctx.cfg.source or SOURCE
    return {"id": f"{source}-pope-{index}", "image": image, **texts, "source": source,
            "provenance": {"dataset": DATASET, "file": "pope_data", "image_id": str(r["image_id"]),
                           "original_index": index}}


def convert_ha_dpo(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    data = io.read_json(path)
    source = cfg.source or SOURCE
    if isinstance(data, dict):
        return collect(path, list(data.items()), ha_dpo_desc_pair, cfg, PREFERENCE, source, id_of=lambda it: it[0])
    if isinstance(data, list):
        return collect(path, data, ha_dpo_pope_pair, cfg, PREFERENCE, source,
                       id_of=lambda r: r.get("image_id") if isinstance(r, dict) else None)
    raise io.DataError(f"{path}: expected desc_data.json (an object keyed by image id) or pope_data.json (a list), "
                       f"got {type(data).__name__}")
