"""Atomic writes and strict readers for the JSON, JSON-lines and image files mmstudy reads and writes.

Every writer goes through a temp file in the destination folder and an `os.replace`, so a crash never leaves a
half-written file behind. Every reader raises `DataError` naming the file, the record (line number or index) and
the field when its input is malformed.

    >>> write_json(path, {"a": 1}); read_jsonl(path_jsonl, required=("question_id", "text"))
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from PIL import Image

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Malformed input. The message names the file, the record and the field."""


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()      # read once: os.umask is process-wide, and writers run in threads


def default_mode(directory: bool = False) -> int:
    """The permissions a plain `open` / `mkdir` would give under this process's umask (temp files and dirs get
    0600 / 0700, which outputs should not keep)."""
    return (0o777 if directory else 0o666) & ~_UMASK


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success give it the umask's permissions, flush it to disk and rename it
    onto `path` (then flush the directory entry); on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        _fsync(Path(tmp))
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `path` (with the umask's permissions); on success it replaces `path`
    (`replace_dir`: the old one stands until the swap), on failure it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(default_mode(directory=True))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def utf8(text: str, path: str | os.PathLike) -> bytes:
    """`text` as UTF-8; a lone surrogate (which UTF-8 cannot hold) is a DataError naming the file and showing where
    it sits in the text, before anything is written."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        around = text[max(0, e.start - 40):e.start].encode("utf-8", "backslashreplace").decode()
        raise DataError(f"{path}: cannot write a lone surrogate ({text[e.start]!r}) as UTF-8, after "
                        f"{around!r}; the input it came from holds an invalid string") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, utf8(text, path))


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (an undefined metric: no items, a zero denominator) replaced by None,
    so that it serialises as strict JSON (`null`), which every JSON reader parses."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """Deterministic, strict JSON (sorted keys; NaN and infinities as null, `finite`) so that the same content
    gives byte-identical files."""
    return json.dumps(finite(obj), sort_keys=True, ensure_ascii=False, indent=1, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def dumps_jsonl(records: Iterable[Any]) -> str:
    """One strict JSON object per line (as `dumps_json`, without the indent)."""
    return "".join(json.dumps(finite(r), sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
                   for r in records)


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    write_text(path, dumps_jsonl(records))


def append_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Append whole lines in one write, flushed to disk (a per-step log, a resumable output): an interruption
    leaves complete lines or a torn last line that the next run cuts off, never a corrupt record in the middle."""
    data = utf8(dumps_jsonl(records), path)
    with Path(path).open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def parse_json(text: str, where: str) -> Any:
    """Strict JSON parsing for input files: every failure is a DataError naming `where` (the file, and the line
    for JSON lines): malformed text, nesting too deep for the parser, integers beyond Python's digit limit, and
    strings holding a lone surrogate (an unpaired \\ud800-\\udfff escape, which no UTF-8 output can hold)."""
    try:
        obj = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NotStrict as e:
        raise DataError(f"{where}: malformed JSON: {e}") from None
    except json.JSONDecodeError as e:
        at = f"line {e.lineno}, column {e.colno}" if "\n" in text.strip() else f"column {e.colno}"
        raise DataError(f"{where}: malformed JSON at {at}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: malformed JSON: nested too deeply") from None
    except ValueError as e:  # json's limit on integer digits
        raise DataError(f"{where}: malformed JSON: {e}") from None
    if "\\u" in text and (field := _surrogate_field(obj)) is not None:
        raise DataError(f"{where}: field {field!r} holds a lone surrogate (an unpaired \\udXXX escape)")
    return obj


class _NotStrict(ValueError):
    pass


def _refuse_constant(name: str):
    raise _NotStrict(f"{name} is not JSON (write null for an undefined number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotStrict(f"the number {text[:40]} is beyond a float's range")
    return value


def _surrogate_field(obj: Any, at: str = "") -> str | None:
    """The path ("a.b[2]") of the first string or key in `obj` that holds a lone surrogate, else None."""
    stack = [(obj, at)]
    while stack:
        value, here = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return here or "(top level)"
        elif isinstance(value, dict):
            for k, v in value.items():
                key = f"{here}.{k}" if here else str(k)
                if _surrogate_field(k) is not None:
                    return key
                stack.append((v, key))
        elif isinstance(value, list):
            stack.extend((v, f"{here}[{i}]") for i, v in enumerate(value))
    return None


def stored(path: str | os.PathLike) -> Path | None:
    """`path` when it is a file, else its gzipped form `<path>.gz` when that is (how `mmstudy archive` keeps
    JSON-lines files), else None."""
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    return path if path.is_file() else packed if packed.is_file() else None


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix != ".gz":
            return path.read_text(encoding="utf-8")
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as e:    # truncated or not gzip at all
            raise DataError(f"{path}: not a readable gzip file: {e}") from None
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    return parse_json(_read_text(path), str(path))


def show(value, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for error messages (an int too long to print shows as its type)."""
    try:
        text = repr(value)
    except ValueError:  # int beyond Python's digit limit
        return f"<{type(value).__name__} too long to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fields(record: Any, required: Sequence[str], where: str) -> dict:
    """Raise DataError unless `record` is a dict holding every field in `required`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in required if f not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}")
    return record


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    """Read a JSON-lines file (or its gzipped form `<path>.gz`, `stored`); blank lines are skipped, anything else
    malformed raises DataError."""
    path = stored(path) or Path(path)
    records = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):   # not splitlines: U+2028 is text
        if line.strip():
            where = f"{path}, line {lineno}"
            records.append(check_fields(parse_json(line, where), required, where))
    return records


def fingerprint(path: str | os.PathLike, small: int = 1 << 20) -> str:
    """A cheap revision id of a file or folder (a model, a reward model): sha256 over every file's relative path and
    size, and the contents of the files up to `small` bytes (configs, tokenizers, heads); hashing gigabytes of
    weights would take minutes, and a retrained model differs in its small files or its sizes far more often than
    in neither."""
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root).as_posix() if f != root else f.name}:{size}\n".encode())
        if size <= small:
            digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def files_digest(root: str | os.PathLike, names: Iterable[str]) -> str:
    """The sha256 of the named files under `root` (each distinct name and its contents, in name order): the images
    a run trains on, in its identity, so that a resume over replaced images is refused. A missing file counts as
    missing rather than failing here (the loaders name it)."""
    root, digest = Path(root), hashlib.sha256()
    for name in sorted(set(names)):
        path = root / name
        digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    return digest.hexdigest()[:12]


def relative_path_problem(value: str) -> str | None:
    """Why `value` is not a relative path inside a folder (absolute, `..`, a NUL byte), or None."""
    if "\x00" in value or Path(value).is_absolute() or ".." in Path(value).parts:
        return f"must be a path inside the image root, got {value[:80]!r}"
    return None


MAX_IMAGE_PIXELS = 40_000_000   # larger images are refused before decoding (COCO's are 0.3 M, LLaVA-1.6 tiles 0.7 M)


def image_problem(path: Path, root: Path | None = None) -> str | None:
    """Why `path` is not a usable image (missing, a link leading outside `root`, empty, truncated, not an image,
    more than `MAX_IMAGE_PIXELS`), or None. Decodes the pixels once: PIL's `verify` skips the data of most formats
    (a truncated JPEG passes it)."""
    try:
        if not path.is_file():
            return "file not found"
        if root is not None and not path.resolve().is_relative_to(Path(root).resolve()):
            return f"leads outside the image root (to {path.resolve()})"
    except (OSError, ValueError) as e:         # a name the OS cannot look up (too long, a NUL byte)
        return f"not a readable image ({type(e).__name__}: {str(e)[:120]})"
    return decode_problem(path)


def decode_problem(source: Path | io.BytesIO) -> str | None:
    """Why the image in `source` (a file or bytes) does not decode, or has more than `MAX_IMAGE_PIXELS`; None when
    it is a whole, readable image."""
    try:
        with Image.open(source) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                return f"too large ({im.width} x {im.height} pixels; at most {MAX_IMAGE_PIXELS:,} in all)"
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types (IndexError, NotImplementedError, ...)
        return f"not a readable image ({type(e).__name__}: {str(e)[:120]})"
    return None


def load_image(path: str | os.PathLike, where: str = "") -> Image.Image:
    """Open an image fully (so corrupt files fail here, not later) and convert it to RGB."""
    path = Path(path)
    prefix = f"{where}: " if where else ""
    if not path.is_file():
        raise DataError(f"{prefix}image file not found: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{prefix}image {path} has {im.width} x {im.height} pixels; at most "
                                f"{MAX_IMAGE_PIXELS:,} in all")
            im.load()
            return im.convert("RGB")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise many types (IndexError, NotImplementedError, ...)
        raise DataError(f"{prefix}corrupt or unreadable image {path}: {type(e).__name__}: {e}") from e


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def recover_dir(dst: Path) -> bool:
    """Put back a folder that a kill between `replace_dir`'s two renames left aside (`.<name>.*.old/<name>`, `dst`
    missing); returns whether one was put back. Leftovers of finished swaps are removed."""
    leftovers = sorted(dst.parent.glob(f".{dst.name}.*.old"), key=lambda p: p.stat().st_mtime)
    restored = False
    if not dst.exists() and leftovers and (leftovers[-1] / dst.name).exists():
        os.replace(leftovers[-1] / dst.name, dst)
        logger.warning("%s: put back the previous version, left aside by an interrupted replacement", dst)
        restored = True
    for old in leftovers:
        shutil.rmtree(old, ignore_errors=True)
    return restored


def replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` onto `dst`; an existing `dst` is moved aside first and deleted only after the swap (a kill
    between the two renames is undone by the next `recover_dir`)."""
    recover_dir(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
