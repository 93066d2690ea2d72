"""LLaVA-Instruct-150K -> prompt/answer ("sft") records: the prompts, images and y+ that BDHS turns into pairs.

Released file: `llava_instruct_150k.json` (or any LLaVA-format JSON list, e.g. `detail_23k.json`) from
https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K; images: COCO train2017 (https://cocodataset.org),
so `--image-root` is the folder holding `000000033471.jpg`, ...

Each record with an image gives one sft record {id, image, prompt, chosen, source}: the first turn's question
(without <image>) and answer, as `mmstudy.data.bdhs.load_examples` takes them (a first turn needs no history; later
turns are dropped and counted as `first_turn_only`). Records without an image are skipped (`skipped_text_only`).
Ids keep LLaVA's (repeats, one per COCO image and task, become "<id>~2", ...), so BDHS pairs made from the file
carry them.

    >>> result = convert_llava_instruct("llava_instruct_150k.json", ConvertConfig(image_root="coco/train2017"))
"""

from __future__ import annotations

from pathlib import Path

from mmstudy.converters.common import Context, ConvertConfig, ConvertResult, SkipRecord, clean_text, collect, record_id
from mmstudy.data.llava import conversation_turns, load_llava_instruct
from mmstudy.data.preferences import SFT

SOURCE = "llava_instruct"


def llava_sft_record(record: dict, where: str, index: int, ctx: Context) -> dict:
    """One validated LLaVA record (see `load_llava_instruct`) as an sft record."""
    rid = record_id(record, "id", where)
    if "image" not in record:
        raise SkipRecord("text_only")
    image = ctx.images.existing(record["image"], where)
    turns = conversation_turns(record)
    if len(turns) > 1:
        ctx.stats["first_turn_only"] += 1
    prompt = clean_text(turns[0][0], where, "conversations[0].value", prompt=True)
    chosen = clean_text(turns[0][1], where, "conversations[1].value")
    return {"id": rid, "image": image, "prompt": prompt, "chosen": chosen, "source": ctx.cfg.source or SOURCE}


def convert_llava_instruct(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    """LLaVA-Instruct JSON -> sft records (conversations validated up front by `load_llava_instruct`)."""
    path = Path(path)
    return collect(path, load_llava_instruct(path), llava_sft_record, cfg, SFT, cfg.source or SOURCE)
