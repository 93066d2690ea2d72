"""A study's results without its weights: the small files of every complete run directory, in the same layout, to
keep beside the code or share (`mmstudy archive`).

The report reads only params, manifests, metrics and per-sample outputs, so an archive rebuilds it
(`mmstudy run --runs <archive> --run-id <id> --only 09_report`), and every number it prints still traces to the
resolved params, the manifest and the per-sample outputs of the run that made it. What the seed rebuilds, and
what is large, stays out: the world's images, model weights and checkpoints, executed notebooks and figures.
JSON-lines files are kept gzipped (`<name>.jsonl.gz`, about 1/17 of the size); `io.read_jsonl` and the report
read either form.

    >>> written = archive_runs("runs/default", "results/default")
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

from mmstudy import io

logger = logging.getLogger(__name__)

KEPT_SUFFIXES = (".json", ".jsonl", ".yaml", ".csv", ".md", ".txt")
SKIPPED_DIRS = frozenset({"world", "model", "checkpoints", "rm"})   # images, weights, resumable training state
SHARED_FILES = ("07_ablations/data/*/*.stats.json",)   # outside run directories: BDHS statistics of sweep data
MARKER = "complete.json"


def archived_files(runs_root: str | Path) -> list[Path]:
    """The files an archive of `runs_root` keeps, relative to it: under each directory holding `complete.json`
    (a finished run), those with a text suffix (`KEPT_SUFFIXES`) outside the `SKIPPED_DIRS`, and not inside
    another run directory below it (that one is archived on its own); and the `SHARED_FILES`."""
    root = Path(runs_root)
    runs = sorted(m.parent for m in root.glob(f"**/{MARKER}"))
    if not runs:
        raise io.DataError(f"{root}: no complete run directories (none holds {MARKER})")
    kept = [p for pattern in SHARED_FILES for p in sorted(root.glob(pattern))]
    for run in runs:
        for path in sorted(run.rglob("*")):
            inner = path.relative_to(run).parts
            if not path.is_file() or path.suffix not in KEPT_SUFFIXES or path.name.startswith("."):
                continue
            if SKIPPED_DIRS.intersection(inner[:-1]) or _in_inner_run(run, inner):
                continue
            kept.append(path)
    return [p.relative_to(root) for p in kept]


def _in_inner_run(run: Path, inner: tuple[str, ...]) -> bool:
    return any((run.joinpath(*inner[:k]) / MARKER).is_file() for k in range(1, len(inner)))


def archived_name(rel: Path) -> Path:
    """Where a kept file goes in the archive: JSON-lines files gzipped, the rest as they are."""
    return rel.with_name(rel.name + ".gz") if rel.suffix == ".jsonl" else rel


def archive_runs(runs_root: str | Path, dest: str | Path) -> list[Path]:
    """Copy `archived_files(runs_root)` into `dest` (same layout, `archived_name`), each file written atomically;
    a file already there with the same bytes is left alone (gzip without a timestamp, so the same text gives the
    same bytes). Returns the paths written, relative to `dest`."""
    root, out = Path(runs_root), Path(dest)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"archive destination {out} lies inside the runs directory {root}")
    files, written = archived_files(root), []
    for rel in files:
        data = (root / rel).read_bytes()
        target = out / archived_name(rel)
        if target.suffix == ".gz":
            data = gzip.compress(data, mtime=0)
        if target.is_file() and target.read_bytes() == data:
            continue
        io.write_bytes(target, data)
        written.append(target.relative_to(out))
    logger.info("archived %d files of %s into %s (%d written)", len(files), root, out, len(written))
    return written
