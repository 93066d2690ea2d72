"""POVID -> preference pairs.

Released file: `POVID_preference_data_for_VLLMs.json` (the current revision names it `..._version_1.json`) from
https://huggingface.co/datasets/YiyangAiLab/POVID_preference_data_for_VLLMs; images: COCO train2014, the
`--image_folder ./data/coco` of POVID's `scripts/run_dpo.sh`.

The file is a JSON list of LLaVA-style records, as POVID's `llava/train/train_dpo.py` reads them:
`{"id", "image", "conversations": [human, gpt, ...], "rejected_conversations": [human, gpt, ...]}` where the gpt
turns of `rejected_conversations` carry the GPT-4V-corrupted answers. A record with a plain `"rejected"` text
instead of `rejected_conversations` is read too. The pair is the first turn (question, y+, y-), as BDHS uses
LLaVA-Instruct first turns; both conversations must ask the same first question.

    >>> result = convert_povid("POVID_preference_data_for_VLLMs.json", ConvertConfig(image_root="coco/train2014"))
"""

from __future__ import annotations

from pathlib import Path

from mmstudy.converters.common import (
    Context,
    ConvertConfig,
    ConvertResult,
    collect,
    conversation,
    fail,
    get,
    obj,
    read_json_list,
    record_id,
    text,
)
from mmstudy.data.preferences import PREFERENCE

SOURCE = "povid"
DATASET = "YiyangAiLab/POVID_preference_data_for_VLLMs"


def povid_pair(record, where: str, index: int, ctx: Context) -> dict:
    r = obj(record, where)
    rid = record_id(r, "id", where)
    turns = conversation(r, "conversations", where)
    question, chosen = turns[0]
    if "rejected_conversations" in r:
        rejected_turns = conversation(r, "rejected_conversations", where)
        if rejected_turns[0][0] != question:
            raise fail(where, "rejected_conversations[0].value", "asks another question than conversations[0]")
        rejected = rejected_turns[0][1]
    elif "rejected" in r:
        rejected = text(r, "rejected", where)
    else:
        raise fail(where, "rejected_conversations", "missing (and no 'rejected' text either)")
    if len(turns) > 1:
        ctx.stats["first_turn_only"] += 1
    image = ctx.images.existing(get(r, "image", where), where)
    source = ctx.cfg.source or SOURCE
    return {"id": f"{source}-{rid}", "image": image, "prompt": question, "chosen": chosen, "rejected": rejected,
            "source": source, "provenance": {"dataset": DATASET, "original_id": rid}}


def convert_povid(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    return collect(path, read_json_list(path), povid_pair, cfg, PREFERENCE, cfg.source or SOURCE)
