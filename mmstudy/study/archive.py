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
import os
from pathlib import Path

from mmstudy import io

logger = logging.getLogger(__name__)

KEPT_SUFFIXES = (".json", ".jsonl", ".yaml", ".csv", ".md", ".txt")
SKIPPED_DIRS = frozenset({"world", "model", "checkpoints", "rm"})   # images, weights, resumable training state
SHARED_FILES = ("07_ablations/data/*/*.stats.json",)   # outside run directories: BDHS statistics of sweep data
MARKER = "complete.json"


def archived_files(runs_root: str | Path) -> list[Path]:
    """The files an archive of `runs_root` keeps, relative to it: under each directory holding `complete.json`
    (a finished run), those with a text suffix (`KEPT_SUFFIXES`) outside the `SKIPPED_DIRS` (never walked into:
    the world alone holds tens of thousands of images), each kept once, by the innermost run holding it; and the
    `SHARED_FILES`."""
    root = Path(runs_root)
    kept = [p for pattern in SHARED_FILES for p in sorted(root.glob(pattern))]
    in_run: dict[Path, bool] = {}     # directory -> whether a finished run holds it (walked top-down)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        here = Path(dirpath)
        in_run[here] = MARKER in filenames or in_run.get(here.parent, False)
        if in_run[here]:
            kept += [here / f for f in sorted(filenames) if Path(f).suffix in KEPT_SUFFIXES and not f.startswith(".")]
    if not any(p.name == MARKER for p in kept):
        raise io.DataError(f"{root}: no complete run directories (none holds {MARKER})")
    return [p.relative_to(root) for p in kept]


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
