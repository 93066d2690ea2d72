"""What every dataset converter shares: the config, the per-record loop, field readers and the image store.

A converter is a function `make(record, where, index, ctx) -> dict` that turns one released record into one record
of mmstudy's schema, raises `DataError` ("<file>, record <n> (id=...): field '<field>': <what is wrong>") for a
malformed one, and `SkipRecord(reason)` for one it leaves out on purpose (a missing image when the user asked to
skip those, a VLFeedback prompt whose completions all tie, ...). `collect` runs it over a file's records, counts
the skips, checks every output record against the schema and makes ids unique.

    >>> result = collect(path, records, make, ConvertConfig(image_root="data/coco"), PREFERENCE, "povid")
"""

from __future__ import annotations

import hashlib
import io as _bytes_io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from mmstudy import io
from mmstudy.data.preferences import PREFERENCE, Schema, check_record

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ON_MISSING = ("error", "skip")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}")
_PIL_EXTENSION = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tiff"}


@dataclass(frozen=True)
class ConvertConfig:
    """How to convert: where images live (and where embedded ones are written), what to do with a missing image
    ("error" or "skip", counted), how many output records at most, the seed of every seeded pick, and the source
    name written into the records (default: the converter's own, e.g. "povid")."""

    image_root: Path
    on_missing: str = "error"
    limit: int | None = None
    seed: int = 0
    source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_root", Path(self.image_root))
        if self.on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {ON_MISSING}, got {self.on_missing!r}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        if self.source is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.source):
            raise ValueError(f"source must be a plain name (letters, digits, _ . -), got {self.source!r}")


@dataclass
class ConvertResult:
    """The converted records, their kind ("preference" or "sft") and the counts of what happened."""

    kind: str
    records: list[dict]
    stats: dict[str, int]


class SkipRecord(Exception):
    """A record left out on purpose; `collect` counts it as `skipped_<reason>`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fail(where: str, field: str, what: str) -> io.DataError:
    return io.DataError(f"{where}: field {field!r}: {what}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------- field readers


def obj(value: Any, where: str, field: str | None = None) -> dict:
    """`value` if it is a JSON object; DataError otherwise."""
    if isinstance(value, dict):
        return value
    if field is None:
        raise io.DataError(f"{where}: expected a JSON object, got {_kind(value)}")
    raise fail(where, field, f"must be an object, got {_kind(value)}")


def get(record: dict, key: str, where: str, field: str | None = None) -> Any:
    """record[key]; DataError naming the field when it is missing or null."""
    if key not in record or record[key] is None:
        raise fail(where, field or key, "missing")
    return record[key]


def clean_text(value: Any, where: str, field: str, prompt: bool = False) -> str:
    """A stripped non-empty string (a prompt loses its <image> placeholder); DataError otherwise."""
    if not isinstance(value, str):
        raise fail(where, field, f"must be a string, got {_kind(value)}")
    text = (value.replace(IMAGE_PLACEHOLDER, "") if prompt else value).strip()
    if not text:
        raise fail(where, field, "is empty" + (" once the <image> placeholder is removed" if prompt else ""))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise fail(where, field, f"not valid Unicode text ({e.reason})") from e
    return text


def text(record: dict, key: str, where: str, prompt: bool = False, field: str | None = None) -> str:
    return clean_text(get(record, key, where, field), where, field or key, prompt)


def optional_str(record: dict, key: str, where: str) -> str | None:
    """record[key] when it is a string, None when absent or null; DataError for any other type."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(where, key, f"must be a string or null, got {_kind(value)}")
    return value


def record_id(record: dict, key: str, where: str) -> str:
    """The record's id as a string: a non-empty string or an integer."""
    value = get(record, key, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and
                                                                          abs(value) >= 10**18):
        raise fail(where, key, f"must be a string or an integer below 10**18, got {_kind(value)}")
    return clean_text(value, where, key) if isinstance(value, str) else str(value)


def conversation(record: dict, key: str, where: str) -> list[tuple[str, str]]:
    """(question, answer) turns of a LLaVA-style conversation [{"from": "human"|"gpt", "value"}, ...]; the first
    question loses its <image> placeholder."""
    conv = get(record, key, where)
    if not isinstance(conv, list) or not conv or len(conv) % 2:
        raise fail(where, key, "must be a non-empty list of human/gpt turn pairs")
    values = []
    for t, turn in enumerate(conv):
        turn = obj(turn, where, f"{key}[{t}]")
        expected = "human" if t % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise fail(where, f"{key}[{t}].from", f"is {io.show(turn.get('from'))}, expected {expected!r}")
        values.append(text(turn, "value", where, prompt=t == 0, field=f"{key}[{t}].value"))
    return [(values[k], values[k + 1]) for k in range(0, len(values), 2)]


# ---------------------------------------------------------------- images


class ImageStore:
    """Images of the records, relative to `cfg.image_root`.

    `existing` resolves a path the release gives (a missing file raises DataError naming it, or SkipRecord when
    `cfg.on_missing == "skip"`). `embedded` writes image bytes (RLHF-V, RLAIF-V parquet) once under
    `<image_root>/<subdir>/` as `<first 16 hex digits of their sha256><original extension>`, atomically."""

    def __init__(self, cfg: ConvertConfig, subdir: str):
        self.root, self.on_missing, self.subdir = cfg.image_root, cfg.on_missing, subdir
        self.stats: Counter = Counter()
        self._problems: dict[str, str | None] = {}

    def relative(self, value: Any, where: str, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise fail(where, field, f"must be a non-empty image path, got {io.show(value)}")
        if problem := io.relative_path_problem(value):
            raise fail(where, field, problem)
        return str(PurePosixPath(value))

    def problem(self, rel: str) -> str | None:
        """`io.image_problem` of an image under the root, checked once per path."""
        if rel not in self._problems:
            self._problems[rel] = io.image_problem(self.root / rel, self.root)
        return self._problems[rel]

    def existing(self, value: Any, where: str, field: str = "image", alternatives: tuple = ()) -> str:
        """The first of `value` and `alternatives` that is a readable image file under the image root (not a link
        leading out of it). None found: SkipRecord with `cfg.on_missing == "skip"` (counted as a missing or an
        unreadable image), else a DataError naming each candidate and what is wrong with it."""
        candidates = [self.relative(v, where, field) for v in (value, *alternatives)]
        problems = [self.problem(rel) for rel in candidates]
        for rel, problem in zip(candidates, problems):
            if problem is None:
                return rel
        missing = all(p == "file not found" for p in problems)
        if self.on_missing == "skip":
            raise SkipRecord("missing_image" if missing else "unreadable_image")
        if missing:
            raise fail(where, field, "image file not found: " + " or ".join(str(self.root / c) for c in candidates))
        raise fail(where, field, "; ".join(f"{self.root / c}: {p}" for c, p in zip(candidates, problems)))

    def embedded(self, value: Any, where: str, field: str = "image") -> str:
        """Write an image given as bytes, or as a datasets Image struct {"bytes", "path"} (bytes null: the path is
        resolved under the image root); return its path relative to the image root."""
        name = None
        if isinstance(value, dict):
            data, name = value.get("bytes"), value.get("path")
            if data is None:
                if name is None:
                    raise fail(where, field, "holds neither image bytes nor a path")
                return self.existing(name, where, f"{field}.path")
            field = f"{field}.bytes"
        else:
            data = value
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise fail(where, field, f"must be image bytes, got {_kind(data)}")
        data = bytes(data)
        if problem := io.decode_problem(_bytes_io.BytesIO(data)):
            raise fail(where, field, problem)
        with Image.open(_bytes_io.BytesIO(data)) as im:
            fmt = im.format
        suffix = PurePosixPath(name).suffix.lower() if isinstance(name, str) and "\x00" not in name else ""
        ext = suffix if _EXTENSION.fullmatch(suffix) else _PIL_EXTENSION.get(fmt, f".{str(fmt).lower()}")
        rel = f"{self.subdir}/{hashlib.sha256(data).hexdigest()[:16]}{ext}"
        target = self.root / rel
        if target.is_file():  # same name, same content: written by an earlier record or run
            self.stats["images_reused"] += 1
        else:
            io.write_bytes(target, data)
            self.stats["images_written"] += 1
        return rel


# ---------------------------------------------------------------- readers


def read_json_list(path: Path) -> list:
    records = io.read_json(path)
    if not isinstance(records, list):
        raise io.DataError(f"{path}: expected a JSON list of records, got {_kind(records)}")
    return records


def iter_jsonl(path: Path) -> Iterator[Any]:
    """JSON values of a JSON-lines file, blank lines skipped (record numbers count the non-blank lines from 0)."""
    if not path.is_file():
        raise io.DataError(f"{path}: file not found")
    with path.open("rb") as f:
        n = 0
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}, record {n} (line {lineno})"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise io.DataError(f"{where}: not UTF-8 text: {e.reason}") from None
            yield io.parse_json(text, where)
            n += 1


def iter_parquet(path: Path, batch_size: int = 64) -> Iterator[dict]:
    """Rows of a Parquet file as dicts, read in batches (RLHF-V's file is 0.9 GB of embedded images)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise io.DataError(f"{path}: file not found")
    try:
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise io.DataError(f"{path}: not a readable Parquet file: {e}") from e
    except UnicodeDecodeError as e:
        raise io.DataError(f"{path}: a string column holds bytes that are not UTF-8 ({e.reason})") from None


def iter_table(path: Path) -> Iterable[Any]:
    """Records of a .parquet, .jsonl or .json (a list) file."""
    if path.suffix == ".parquet":
        return iter_parquet(path)
    if path.suffix == ".jsonl":
        return iter_jsonl(path)
    return read_json_list(path)


# ---------------------------------------------------------------- the loop


@dataclass
class Context:
    """What a record converter may use besides the record: the config, the image store and the counters."""

    cfg: ConvertConfig
    images: ImageStore
    stats: Counter = field(default_factory=Counter)


Make = Callable[[Any, str, int, Context], dict]


def default_id(record: Any, key: str = "id") -> Any:
    return record.get(key) if isinstance(record, dict) else None


def collect(path: Path, records: Iterable[Any], make: Make, cfg: ConvertConfig, schema: Schema, source: str,
            id_of: Callable[[Any], Any] = default_id) -> ConvertResult:
    """Convert `records` of the file `path` one by one (stopping at `cfg.limit` outputs), count skips, check each
    output against `schema`, skip pairs whose chosen and rejected are the same text, and make ids unique."""
    ctx = Context(cfg, ImageStore(cfg, source))
    out = []
    for index, record in enumerate(records):
        if cfg.limit is not None and len(out) >= cfg.limit:
            break
        ctx.stats["read"] += 1
        where = f"{path}, record {index} (id={io.show(id_of(record))})"
        try:
            converted = make(record, where, index, ctx)
        except SkipRecord as skip:
            ctx.stats[f"skipped_{skip.reason}"] += 1
            continue
        check_record(converted, where, schema)
        if schema is PREFERENCE and converted["chosen"] == converted["rejected"]:
            ctx.stats["skipped_identical_responses"] += 1
            continue
        out.append(converted)
    if not ctx.stats["read"]:
        raise io.DataError(f"{path}: holds no records (an empty file or list)")
    if not out:
        logger.warning("%s: none of its %d records converted (%s)", path, ctx.stats["read"],
                       ", ".join(f"{k} {v}" for k, v in sorted(ctx.stats.items()) if k != "read"))
    ctx.stats["renamed_duplicate_ids"] = make_ids_unique(out)
    ctx.stats["written"] = len(out)
    ctx.stats.update(ctx.images.stats)
    stats = dict(sorted(ctx.stats.items()))
    logger.info("%s: %d %s records from %s (%s)", source, len(out), schema.kind, path,
                ", ".join(f"{k} {v}" for k, v in stats.items()))
    return ConvertResult(schema.kind, out, stats)


def make_ids_unique(records: list[dict]) -> int:
    """Rename the 2nd, 3rd, ... record of a repeated id to "<id>~2", "<id>~3", ... in place (LLaVA-Instruct and
    datasets built on it key records by COCO image, so ids repeat); return how many were renamed."""
    taken = {r["id"] for r in records}
    seen, renamed = set(), 0
    for r in records:
        if r["id"] in seen:
            k = 2
            while f"{r['id']}~{k}" in taken:
                k += 1
            r["id"] = f"{r['id']}~{k}"
            taken.add(r["id"])
            renamed += 1
        seen.add(r["id"])
    return renamed
