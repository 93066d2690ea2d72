"""RLHF-V and RLAIF-V (openbmb) -> preference pairs; their images are embedded in the parquet files as bytes.

Released files (Hugging Face, parquet):
  - RLHF-V: https://huggingface.co/datasets/openbmb/RLHF-V-Dataset (one parquet file, 5.7k rows). Columns
    `ds_name`, `image` {bytes, path}, `text` (a JSON string {"question", "chosen", "rejected"}), `origin_dataset`,
    `origin_split`, `idx` (int), `image_path`.
  - RLAIF-V: https://huggingface.co/datasets/openbmb/RLAIF-V-Dataset (parquet files, 83k rows; convert each).
    Columns `ds_name`, `image` {bytes, path}, `question`, `chosen`, `rejected`, `origin_dataset`, `origin_split`,
    `idx` (string), `image_path`.

Each row's image is written once under `<image-root>/<source>/` as `<sha256 prefix><original extension>` (an image
shared by several rows is written once); an image struct with only a path resolves it under the image root.

    >>> result = convert_rlhf_v("RLHF-V-Dataset.parquet", ConvertConfig(image_root="images"))
"""

from __future__ import annotations

from pathlib import Path

from mmstudy import io
from mmstudy.converters.common import (
    Context,
    ConvertConfig,
    ConvertResult,
    collect,
    fail,
    get,
    iter_table,
    obj,
    optional_str,
    record_id,
    text,
)
from mmstudy.data.preferences import PREFERENCE

RLHF_V, RLAIF_V = "rlhf_v", "rlaif_v"
DATASETS = {RLHF_V: "openbmb/RLHF-V-Dataset", RLAIF_V: "openbmb/RLAIF-V-Dataset"}
_META = ("ds_name", "origin_dataset", "origin_split", "image_path")


def _pair(r: dict, texts: dict, where: str, ctx: Context, default_source: str) -> dict:
    rid = record_id(r, "idx", where)
    meta = {k: optional_str(r, k, where) for k in _META}
    image = ctx.images.embedded(get(r, "image", where), where)
    source = ctx.cfg.source or default_source
    provenance = {"dataset": DATASETS[default_source], "original_id": rid}
    provenance.update({k: v for k, v in meta.items() if v is not None})
    return {"id": f"{source}-{rid}", "image": image, **texts, "source": source, "provenance": provenance}


def rlhf_v_pair(row, where: str, index: int, ctx: Context) -> dict:
    r = obj(row, where)
    raw = get(r, "text", where)
    if not isinstance(raw, str):
        raise fail(where, "text", f"must be a JSON string, got {type(raw).__name__}")
    try:
        data = io.parse_json(raw, "text")
    except io.DataError as e:
        raise fail(where, "text", str(e).removeprefix("text: ")) from None
    data = obj(data, where, "text")
    texts = {"prompt": text(data, "question", where, prompt=True, field="text.question"),
             "chosen": text(data, "chosen", where, field="text.chosen"),
             "rejected": text(data, "rejected", where, field="text.rejected")}
    return _pair(r, texts, where, ctx, RLHF_V)


def rlaif_v_pair(row, where: str, index: int, ctx: Context) -> dict:
    r = obj(row, where)
    texts = {"prompt": text(r, "question", where, prompt=True), "chosen": text(r, "chosen", where),
             "rejected": text(r, "rejected", where)}
    return _pair(r, texts, where, ctx, RLAIF_V)


def _id_of(row):
    return row.get("idx") if isinstance(row, dict) else None


def convert_rlhf_v(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    return collect(path, iter_table(path), rlhf_v_pair, cfg, PREFERENCE, cfg.source or RLHF_V, _id_of)


def convert_rlaif_v(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    return collect(path, iter_table(path), rlaif_v_pair, cfg, PREFERENCE, cfg.source or RLAIF_V, _id_of)
