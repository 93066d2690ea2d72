"""Parameterized notebooks: strict params files and one papermill execution per run directory.

A notebook in `notebooks/` declares its parameters in a cell tagged `parameters` (literals only). Its params come
from flat YAML files, merged in order; a key the notebook does not declare, a duplicate key in a file or a value
that is not a scalar or a list of scalars is an error before anything runs (papermill alone only warns).

`execute(notebook, params, run_dir)` writes, before any work starts, the resolved `params.yaml` / `params.json` and
`manifest.json` (git commit, package versions, seed, hardware) into the run directory, executes the notebook with
papermill into `run_dir/<notebook name>`, checks that it wrote `metrics.json`, and marks the stage complete
(`complete.json`, with the params' hash). Every notebook declares a `run_dir` parameter, which `execute` sets to
the run directory (absolute) and under which the notebook writes everything; its working directory stays the
caller's, so relative input paths in params mean what they mean where the user typed them. Executing again with
the same params skips a complete stage; other params are an error unless `force`.

    >>> params = load_params("params/04_data_review.yaml", prefs=["prefs/povid.jsonl"])
    >>> execute("notebooks/04_data_review.ipynb", params, "runs/smoke/04_data_review")
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from mmstudy import io
from mmstudy.runs import build_manifest

logger = logging.getLogger(__name__)

KERNEL = "python3"      # the kernel of the Python running mmstudy (ipykernel's native kernelspec)
COMPLETE = "complete.json"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    seen = set()
    for key, (knode, _) in zip(keys, node.value):
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", knode.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _flat_value(value: Any, where: str) -> Any:
    scalar = (str, int, float, bool, type(None))
    if isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        return value
    raise io.DataError(f"{where}: params are flat: a scalar or a list of scalars, got {type(value).__name__}")


def read_params(path: str | Path) -> dict:
    """One flat YAML params file (an empty file is {})."""
    path = Path(path)
    if not path.is_file():
        raise io.DataError(f"{path}: params file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise io.DataError(f"{path}: not valid params YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise io.DataError(f"{path}: params must be a mapping of names to values, got {type(data).__name__}")
    return {str(k): _flat_value(v, f"{path}: key {k!r}") for k, v in data.items()}


def read_sweep(path: str | Path) -> dict[str, dict[str, dict]]:
    """A sweep file: axis -> point -> flat params overrides (each checked as a params file is), e.g.

        loss:
          ipo: {loss: ipo}
          slic: {loss: slic}
    """
    path = Path(path)
    if not path.is_file():
        raise io.DataError(f"{path}: sweep file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        raise io.DataError(f"{path}: not valid sweep YAML: {e}") from e
    if not isinstance(data, dict):
        raise io.DataError(f"{path}: a sweep maps axes to points, got {type(data).__name__}")
    sweep: dict[str, dict[str, dict]] = {}
    for axis, points in data.items():
        if not isinstance(points, dict) or not points:
            raise io.DataError(f"{path}: axis {axis!r} must map point names to params")
        sweep[str(axis)] = {}
        for point, overrides in points.items():
            where = f"{path}: {axis}/{point}"
            if "/" in f"{axis}{point}" or not isinstance(overrides, dict):
                raise io.DataError(f"{where}: a point is a name without '/' mapped to params ({{key: value}})")
            sweep[str(axis)][str(point)] = {str(k): _flat_value(v, f"{where}, key {k!r}")
                                            for k, v in overrides.items()}
    return sweep


def load_params(*paths: str | Path, **overrides) -> dict:
    """Merge params files in order (later files win), then `overrides`."""
    merged: dict = {}
    for path in paths:
        merged.update(read_params(path))
    merged.update({k: _flat_value(v, f"override {k!r}") for k, v in overrides.items()})
    return merged


def notebook_parameters(notebook: str | Path) -> dict[str, dict]:
    """The parameters a notebook declares in its `parameters` cell: name -> papermill's {"name", "inferred_type_name",
    "default", "help"}."""
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise io.DataError(f"{notebook}: notebook not found")
    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise io.DataError(f"{notebook}: no cell tagged 'parameters'")
    return declared


def check_params(notebook: str | Path, params: dict) -> None:
    """DataError naming the notebook and the keys it does not declare."""
    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise io.DataError(f"{notebook}: does not declare the parameter(s) {unknown} (declared: {sorted(declared)})")


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def is_complete(run_dir: str | Path, params: dict) -> bool:
    """Whether run_dir holds a finished execution with these params (and its metrics.json)."""
    marker = Path(run_dir) / COMPLETE
    if not marker.is_file() or not (Path(run_dir) / "metrics.json").is_file():
        return False
    return io.read_json(marker).get("params_hash") == params_hash(params)


def execute(notebook: str | Path, params: dict, run_dir: str | Path, force: bool = False, again: bool = False,
            html: bool = False, progress: bool = True) -> dict:
    """Execute `notebook` with `params` in `run_dir` (see the module docstring); returns its metrics.json. `again`:
    execute even when complete with these params (a stage whose inputs are other run directories, as the
    report); `html`: also export the executed notebook to run_dir/<name>.html."""
    import papermill

    notebook, run_dir = Path(notebook).resolve(), Path(run_dir).resolve()
    if "run_dir" in params:
        raise io.DataError(f"{notebook.name}: run_dir is set by execute, not by params")
    check_params(notebook, params)
    if is_complete(run_dir, params) and not again:
        logger.info("%s: complete with these params, skipped", run_dir)
        return io.read_json(run_dir / "metrics.json")
    if (run_dir / COMPLETE).is_file() and not force:
        raise io.DataError(f"{run_dir}: holds a complete run with other params; pick another run directory or "
                           "force a rerun")
    (run_dir / COMPLETE).unlink(missing_ok=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    io.write_text(run_dir / "params.yaml", yaml.safe_dump(params, sort_keys=True))
    io.write_json(run_dir / "params.json", params)
    io.write_json(run_dir / "manifest.json",
                  build_manifest(params.get("seed"), f"execute {notebook.name}", {"notebook": notebook.name,
                                                                                  **params}))
    logger.info("executing %s into %s", notebook.name, run_dir)
    papermill.execute_notebook(str(notebook), str(run_dir / notebook.name),
                               parameters={**params, "run_dir": str(run_dir)}, cwd=str(Path.cwd()),
                               kernel_name=KERNEL, progress_bar=progress)
    if not (run_dir / "metrics.json").is_file():
        raise io.DataError(f"{run_dir / notebook.name}: finished without writing metrics.json")
    metrics = io.read_json(run_dir / "metrics.json")
    if html:
        export_html(run_dir / notebook.name)
    io.write_json(run_dir / COMPLETE, {"params_hash": params_hash(params), "notebook": notebook.name})
    return metrics


def export_html(notebook: str | Path) -> Path:
    """An executed notebook as a standalone HTML page next to it (figures embedded); returns its path."""
    import nbconvert
    import nbformat

    notebook = Path(notebook)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    out = notebook.with_suffix(".html")
    io.write_text(out, body)
    return out
