"""A study's results without its weights: the small files of every complete run directory, in the same layout, to
keep beside the code or share (`mmstudy archive`).

The report reads only params, manifests, metrics and per-sample outputs, so an archive rebuilds it
(`mmstudy run --runs <archive> --run-id <id> --only 09_report`), and every number it prints still traces to the
resolved params, the manifest and the per-sample outputs of the run that made it. What the seed rebuilds, and
what is large, stays out: the world's images, model weights and checkpoints, executed notebooks and figures.

    >>> copied = archive_runs("runs/default", "results/default")
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mmstudy import io

logger = logging.getLogger(__name__)

KEPT_SUFFIXES = (".json", ".jsonl", ".yaml", ".csv", ".md", ".txt")
SKIPPED_DIRS = frozenset({"world", "model", "checkpoints", "rm"})   # images, weights, resumable training state
MARKER = "complete.json"


def archived_files(runs_root: str | Path) -> list[Path]:
    """The files an archive of `runs_root` keeps, relative to it: under each directory holding `complete.json`
    (a finished run), those with a text suffix (`KEPT_SUFFIXES`) outside the `SKIPPED_DIRS`, and not inside
    another run directory below it (that one is archived on its own)."""
    root = Path(runs_root)
    runs = sorted(m.parent for m in root.glob(f"**/{MARKER}"))
    if not runs:
        raise io.DataError(f"{root}: no complete run directories (none holds {MARKER})")
    kept = []
    for run in runs:
        for path in sorted(run.rglob("*")):
            inner = path.relative_to(run).parts
            if not path.is_file() or path.suffix not in KEPT_SUFFIXES or path.name.startswith("."):
                continue
            if SKIPPED_DIRS.intersection(inner[:-1]) or _in_inner_run(run, inner):
                continue
            kept.append(path.relative_to(root))
    return kept


def _in_inner_run(run: Path, inner: tuple[str, ...]) -> bool:
    return any((run.joinpath(*inner[:k]) / MARKER).is_file() for k in range(1, len(inner)))


def archive_runs(runs_root: str | Path, dest: str | Path) -> list[Path]:
    """Copy `archived_files(runs_root)` into `dest` (same layout), each file written atomically; a file already
    there with the same bytes is left alone. Returns the paths written, relative to `dest`."""
    root, out = Path(runs_root), Path(dest)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"archive destination {out} lies inside the runs directory {root}")
    files, written = archived_files(root), []
    for rel in files:
        target = out / rel
        if target.is_file() and target.read_bytes() == (root / rel).read_bytes():
            continue
        with io.atomic_path(target) as tmp:
            shutil.copyfile(root / rel, tmp)
        written.append(rel)
    logger.info("archived %d files of %s into %s (%d written)", len(files), root, out, len(written))
    return written
