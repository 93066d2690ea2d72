"""Any dataset already in TRL's preference format (with one image per pair) -> mmstudy preference pairs.

TRL's DPO datasets (https://huggingface.co/docs/trl/dataset_formats, e.g. HuggingFaceH4/rlaif-v_formatted) hold
`prompt`, `chosen`, `rejected` either as plain strings ("standard") or as message lists ("conversational": a
prompt of one user message, a chosen and a rejected of one assistant message each; a message's content is a string
or a list of {"type": "text", "text"} / {"type": "image"} parts), and the image in `images` (a one-element list) or
`image`. Input: .parquet, .jsonl, or .json (a list). An image is a path relative to the image root, or a
`datasets` Image struct {"bytes", "path"} whose bytes are written once under `<image-root>/<source>/` with a
content-hashed name. The id is the record's `id` when it has one, else its index in the file, prefixed with the
source name (`--source`, default "trl"). A prompt with a system message or several turns is an error: the schema
holds one question.

    >>> result = convert_trl("rlaif-v_formatted.parquet", ConvertConfig(image_root="images", source="rlaif_v_trl"))
"""

from __future__ import annotations

from pathlib import Path

from mmstudy import io
from mmstudy.converters.common import (
    Context,
    ConvertConfig,
    ConvertResult,
    clean_text,
    collect,
    fail,
    get,
    iter_table,
    obj,
    record_id,
)
from mmstudy.data.preferences import PREFERENCE

SOURCE = "trl"


def _content(content, where: str, field: str, images_allowed: bool) -> tuple[str, int]:
    """The text of a message content (parts joined by newlines) and its number of image placeholders."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list) or not content:
        raise fail(where, field, f"must be a string or a non-empty list of parts, got {io.show(content)}")
    texts, n_images = [], 0
    for k, part in enumerate(content):
        part = obj(part, where, f"{field}[{k}]")
        kind = part.get("type")
        if kind == "text":
            value = part.get("text")
            if not isinstance(value, str):
                raise fail(where, f"{field}[{k}].text", f"must be a string, got {io.show(value)}")
            texts.append(value)
        elif kind == "image" and images_allowed:
            n_images += 1
        else:
            raise fail(where, f"{field}[{k}].type", f"must be {'text or image' if images_allowed else 'text'}, got "
                                                   f"{io.show(kind)}")
    return "\n".join(texts), n_images


def _message(value, where: str, field: str, role: str) -> tuple[str, int]:
    """The text of a standard field (a string) or of a conversational one (a list of exactly one `role` message)."""
    if isinstance(value, str):
        return value, 0
    if not isinstance(value, list) or len(value) != 1:
        raise fail(where, field, f"must be a string or a list of one {role} message (the schema holds one turn), "
                                 f"got {io.show(value)}")
    message = obj(value[0], where, f"{field}[0]")
    if message.get("role") != role:
        raise fail(where, f"{field}[0].role", f"must be {role!r}, got {io.show(message.get('role'))}")
    return _content(get(message, "content", where, f"{field}[0].content"), where, f"{field}[0].content",
                    images_allowed=role == "user")


def _image(r: dict, where: str, ctx: Context) -> str:
    if r.get("images") is not None:
        images = r["images"]
        if not isinstance(images, list) or len(images) != 1:
            raise fail(where, "images", f"must be a list of exactly one image, got {io.show(images)}")
        value, field = images[0], "images[0]"
    else:
        value, field = get(r, "image", where, "images"), "image"
    if isinstance(value, str):
        return ctx.images.existing(value, where, field)
    return ctx.images.embedded(value, where, field)


def trl_pair(row, where: str, index: int, ctx: Context) -> dict:
    r = obj(row, where)
    rid = record_id(r, "id", where) if r.get("id") is not None else str(index)
    prompt, n_images = _message(get(r, "prompt", where), where, "prompt", "user")
    if n_images > 1:
        raise fail(where, "prompt[0].content", f"has {n_images} image placeholders; the schema holds one image")
    texts = {"prompt": clean_text(prompt, where, "prompt", prompt=True),
             "chosen": clean_text(_message(get(r, "chosen", where), where, "chosen", "assistant")[0], where,
                                  "chosen"),
             "rejected": clean_text(_message(get(r, "rejected", where), where, "rejected", "assistant")[0], where,
                                    "rejected")}
    image = _image(r, where, ctx)
    source = ctx.cfg.source or SOURCE
    return {"id": f"{source}-{rid}", "image": image, **texts, "source": source,
            "provenance": {"format": "trl", "original_id": rid}}


def convert_trl(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    return collect(path, iter_table(path), trl_pair, cfg, PREFERENCE, cfg.source or SOURCE)
