"""mmstudy's preference schema: one record per pair, in JSON lines, Parquet or a Hugging Face `datasets` Arrow folder.

    id        unique string
    image     path relative to an image root
    prompt    the user's question (no image placeholder)
    chosen    the preferred response y+
    rejected  the dispreferred response y-
    source    where the pair comes from ("bdhs_attn", "world_povid", "povid", ...)
    rejected_2      optional: a second rejected response sharing y+ (Avg-DPO: an external and a self-generated one)
    chosen_score    optional ranking: the rating of y+ (VLFeedback: mean GPT-4V rating); above rejected_score
    rejected_score  optional ranking: the rating of y-
    provenance      optional object: how the pair was made (generator, seed, original id, ...)

A second kind, "sft", holds prompt/answer records without a rejected response (id, image, prompt, chosen, source):
the LLaVA-Instruct prompts and y+ that BDHS turns into pairs. `mmstudy.converters` writes both kinds from the
released datasets; this module validates, loads, saves, subsamples, mixes and splits them, and exports pairs to TRL's
conversational preference format.

    >>> pairs = load_preferences("prefs.jsonl", image_root="world/images")
    >>> save_preferences(subsample(pairs, 5000, seed=0), "prefs_5k.parquet")   # or .jsonl, or an Arrow folder
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmstudy import io
from mmstudy.runs import derive_seed

logger = logging.getLogger(__name__)

REQUIRED = ("id", "image", "prompt", "chosen", "rejected", "source")
OPTIONAL_TEXT = ("rejected_2",)
OPTIONAL_SCORE = ("chosen_score", "rejected_score")
SFT_REQUIRED = ("id", "image", "prompt", "chosen", "source")


@dataclass(frozen=True)
class Schema:
    """The fields of one record kind. `provenance` (an object) is optional in both kinds."""

    kind: str
    required: tuple[str, ...]
    optional_text: tuple[str, ...] = ()
    optional_score: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional_text + self.optional_score + ("provenance",)


PREFERENCE = Schema("preference", REQUIRED, OPTIONAL_TEXT, OPTIONAL_SCORE)
SFT = Schema("sft", SFT_REQUIRED)


# ---------------------------------------------------------------- validation


def _check_text(value, field: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise io.DataError(f"{where}: field {field!r} must be a non-empty string, got {io.show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise io.DataError(f"{where}: field {field!r}: not valid Unicode text ({e.reason})") from e


def _finite_number(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:       # an int beyond a float's range
        return False


def check_record(record, where: str, schema: Schema = PREFERENCE) -> None:
    """DataError naming `where` and the field for a missing, mistyped or empty field of a `schema` record."""
    io.check_fields(record, schema.required, where)
    for field in schema.required + tuple(f for f in schema.optional_text if f in record):
        _check_text(record[field], field, where)
    for field in (f for f in schema.optional_score if f in record):
        value = record[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite_number(value):
            raise io.DataError(f"{where}: field {field!r} must be a finite number, got {io.show(value)}")
    ranked = "chosen_score" in record and "rejected_score" in record
    if ranked and not record["chosen_score"] > record["rejected_score"]:
        raise io.DataError(f"{where}: field 'rejected_score': {io.show(record['rejected_score'])} is not below "
                           f"chosen_score {io.show(record['chosen_score'])}")
    if "image" in schema.required and (problem := io.relative_path_problem(record["image"])):
        raise io.DataError(f"{where}: field 'image' {problem}")
    if "provenance" in record and not isinstance(record["provenance"], dict):
        raise io.DataError(f"{where}: field 'provenance' must be an object, got {io.show(record['provenance'])}")


def check_preference(record: dict, where: str) -> None:
    """DataError naming `where` and the field for a missing, non-string or empty field (and mistyped optional ones)."""
    check_record(record, where, PREFERENCE)


def check_sft(record: dict, where: str) -> None:
    """DataError naming `where` and the field for a malformed prompt/answer ("sft") record."""
    check_record(record, where, SFT)


def check_records(records: Sequence[dict], name: str, schema: Schema = PREFERENCE,
                  image_root: str | Path | None = None) -> None:
    """Validate every record (1-based record numbers, as in the files), unique ids, and with `image_root` that
    every image is a readable image file inside it (`io.image_problem`; each image checked once)."""
    seen: set = set()
    problems: dict[str, str | None] = {}
    for n, r in enumerate(records, start=1):
        where = f"{name}, record {n}"
        check_record(r, where, schema)
        if r["id"] in seen:
            raise io.DataError(f"{where}: duplicate id {r['id']!r}")
        seen.add(r["id"])
        if image_root is not None:
            if r["image"] not in problems:
                problems[r["image"]] = io.image_problem(Path(image_root) / r["image"], Path(image_root))
            if problems[r["image"]]:
                raise io.DataError(f"{where}: field 'image': {problems[r['image']]}: {Path(image_root) / r['image']}")


# ---------------------------------------------------------------- loading and saving


def _read_columnar(path: Path) -> list[dict]:
    """Records of a Parquet file or an Arrow folder written by `save_preferences`: null optionals dropped,
    provenance parsed back from its JSON text."""
    if path.is_dir():
        import datasets

        try:
            rows = datasets.load_from_disk(str(path)).to_list()
        except (FileNotFoundError, ValueError, OSError) as e:
            raise io.DataError(f"{path}: not a Hugging Face datasets folder: {e}") from e
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not path.is_file():
            raise io.DataError(f"{path}: file not found")
        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise io.DataError(f"{path}: not a Parquet file: {e}") from e
        except UnicodeDecodeError as e:
            raise io.DataError(f"{path}: a string column holds bytes that are not UTF-8 ({e.reason})") from None
    records = []
    for n, row in enumerate(rows, start=1):
        record = {k: v for k, v in row.items() if v is not None}
        if "provenance" in record:
            if not isinstance(record["provenance"], str):
                raise io.DataError(f"{path}, record {n}: field 'provenance': not a JSON object text")
            try:
                record["provenance"] = io.parse_json(record["provenance"], "provenance")
            except io.DataError as e:
                raise io.DataError(f"{path}, record {n}: field 'provenance': not a JSON object text: "
                                   f"{str(e).removeprefix('provenance: ')}") from None
        records.append(record)
    return records


def read_records(path: str | Path, schema: Schema = PREFERENCE, image_root: str | Path | None = None) -> list[dict]:
    """Read and validate `schema` records from JSON lines, a .parquet file or an Arrow folder."""
    path = Path(path)
    if path.suffix == ".parquet" or path.is_dir():
        records = _read_columnar(path)
    else:
        records = io.read_jsonl(path)
    if not records:
        raise io.DataError(f"{path}: holds no {schema.kind} records (an empty file)")
    check_records(records, str(path), schema, image_root)
    logger.info("loaded %d %s records from %s", len(records), schema.kind, path)
    return records


def load_preferences(path: str | Path, image_root: str | Path | None = None) -> list[dict]:
    """Read and validate a preference file (JSON lines, .parquet, or an Arrow folder); with `image_root`, every
    image must exist. Ids must be unique."""
    return read_records(path, PREFERENCE, image_root)


def load_sft(path: str | Path, image_root: str | Path | None = None) -> list[dict]:
    """Read and validate a prompt/answer ("sft") file, as `load_preferences` does for pairs."""
    return read_records(path, SFT, image_root)


def _arrow_table(records: Sequence[dict], schema: Schema, name: str):
    import pyarrow as pa

    for n, r in enumerate(records, start=1):
        extra = sorted(set(r) - set(schema.fields))
        if extra:
            raise io.DataError(f"{name}, record {n} (id={io.show(r.get('id'))}): field {extra[0]!r}: not in the "
                               f"{schema.kind} schema, so a columnar file cannot hold it")
    columns = {f: pa.array([r[f] for r in records], pa.string()) for f in schema.required}
    for f in schema.optional_text:
        columns[f] = pa.array([r.get(f) for r in records], pa.string())
    for f in schema.optional_score:
        columns[f] = pa.array([None if r.get(f) is None else float(r[f]) for r in records], pa.float64())
    # provenance is free-form (its keys differ between generators), so it travels as sorted JSON text.
    columns["provenance"] = pa.array([json.dumps(r["provenance"], sort_keys=True, ensure_ascii=False)
                                      if "provenance" in r else None for r in records], pa.string())
    return pa.table(columns)


def write_records(path: str | Path, records: Sequence[dict], schema: Schema = PREFERENCE) -> None:
    """Validate and write `schema` records, atomically, as chosen by `path`: `.jsonl` JSON lines, `.parquet` a
    Parquet file, a path without suffix (or an existing folder) a Hugging Face `datasets` Arrow folder
    (`datasets.load_from_disk` reads it). The same records give byte-identical files."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet", "") and not path.is_dir():
        raise ValueError(f"{path}: write preference records to a .jsonl or .parquet file, or to a folder (Arrow)")
    check_records(records, str(path), schema)
    if path.suffix == ".jsonl":
        io.write_jsonl(path, records)
        return
    table = _arrow_table(records, schema, str(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with io.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return
    import datasets

    # a content fingerprint instead of datasets' random one keeps the folder's state.json reproducible
    fingerprint = hashlib.sha256("".join(json.dumps(r, sort_keys=True) for r in records).encode()).hexdigest()[:16]
    with io.atomic_dir(path) as tmp:
        datasets.Dataset(table, fingerprint=fingerprint).save_to_disk(str(tmp))


def save_preferences(records: Sequence[dict], path: str | Path) -> None:
    """Write preference pairs to JSON lines, Parquet or an Arrow folder (see `write_records`)."""
    write_records(path, records, PREFERENCE)


# ---------------------------------------------------------------- seeded subsampling, mixing, splitting


def subsample(records: Sequence[dict], n: int | None, seed: int, stream: int = 0, name: str = "records") -> list[dict]:
    """A seeded random subset of `n` records, in their original order (the paper's 5k); all of them when `n` is
    None. `stream` tells apart the draws of several sources mixed with one seed. Asking for more records than there
    are is an error, not a silent shortfall."""
    if n is None:
        return list(records)
    keep = _pick(len(records), n, (seed, "subsample", stream), name)
    return [r for i, r in enumerate(records) if i in keep]


def _pick(total: int, n: int, key: tuple, name: str) -> set[int]:
    if not 0 <= n <= total:
        raise io.DataError(f"{name}: asked for {n} records, but there are {total}")
    return set(random.Random(derive_seed(*key)).sample(range(total), n))


def mix(sources: Sequence[tuple[str, Sequence[dict], int | None]], seed: int) -> list[dict]:
    """Concatenate a seeded subsample of each (name, records, n) source, in source order (the k-th source draws
    stream k, so a file's subset does not depend on how its name is spelled). Ids must stay unique across sources
    (converted datasets prefix theirs with the dataset name)."""
    mixed, owner = [], {}
    for k, (name, records, n) in enumerate(sources):
        for r in subsample(records, n, seed, stream=k, name=name):
            if r["id"] in owner:
                raise io.DataError(f"{name}: field 'id': {r['id']!r} is also an id in {owner[r['id']]}")
            owner[r["id"]] = name
            mixed.append(r)
    logger.info("mixed %d records from %s", len(mixed), ", ".join(name for name, _, _ in sources))
    return mixed


def split(records: Sequence[dict], n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): a seeded random `n_val` records held out, both parts in the original order."""
    held = _pick(len(records), n_val, (seed, "split"), "records to split")
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


# ---------------------------------------------------------------- TRL export


def to_trl(record: dict, image_root: str | Path | None = None) -> dict:
    """One pair in TRL's conversational preference format with images (what `trl.DPOTrainer` takes for a
    vision-language model): `images` (one path, joined to `image_root` when given), a one-message user `prompt`
    whose content is an image placeholder then the text, and one-message assistant `chosen` / `rejected`."""
    image = str(Path(image_root) / record["image"]) if image_root is not None else record["image"]

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    return {"images": [image],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record["prompt"]}]}],
            "chosen": reply(record["chosen"]), "rejected": reply(record["rejected"])}


def save_trl(records: Sequence[dict], path: str | Path, image_root: str | Path | None = None) -> None:
    """Validate pairs and write them in TRL's conversational format as JSON lines (`to_trl` per record)."""
    check_records(records, str(path), PREFERENCE)
    io.write_jsonl(path, [to_trl(r, image_root) for r in records])


def trl_dataset(records: Sequence[dict], image_root: str | Path):
    """A `datasets.Dataset` in TRL's conversational format whose `images` column decodes to PIL images."""
    import datasets

    check_records(records, "preference records", PREFERENCE, image_root)
    ds = datasets.Dataset.from_list([to_trl(r, image_root) for r in records])
    return ds.cast_column("images", datasets.List(datasets.Image()))
