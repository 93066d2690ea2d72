"""The study as a chain of notebooks: which stages run, in which order, with which params, into which run
directories (`mmstudy run`).

Params of a stage come from `params/<stage>.yaml` (the default profile), then `params/<profile>/<stage>.yaml` when
the profile has one, then the seed, then the upstream run directories the driver wires in (`base_run`, ...).
Each stage executes with `mmstudy.notebooks.execute` into

    <runs>/<run id>/<stage>/            stages that run once
    <runs>/<run id>/<stage>/s<seed>/    stages that run per seed

so a rerun skips complete stages and continues an interrupted one (the stage functions resume).

    >>> run_pipeline("smoke", seeds=[0], runs_dir="runs")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmstudy import io
from mmstudy.notebooks import execute, load_params

logger = logging.getLogger(__name__)

PROFILES = ("smoke", "default")   # "paper" (a local LLaVA 1.6-7B, the paper's hyperparameters) is not written yet
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stage:
    name: str                     # the notebook's stem and the params files' stem
    per_seed: bool                # once per seed, or once (with the first seed)


STAGES = (Stage("01_world_base", per_seed=False), Stage("02_preference_data", per_seed=True),
          Stage("04_data_review", per_seed=False))


def _run_dir(root: Path, stage: Stage, seed: int) -> Path:
    return root / stage.name / f"s{seed}" if stage.per_seed else root / stage.name


def stage_params(stage: str, profile: str, params_dir: Path = ROOT / "params") -> dict:
    """A stage's params under a profile: the stage's file, then the profile's override file if any."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {list(PROFILES)}")
    files = [params_dir / f"{stage}.yaml"]
    if (params_dir / profile / f"{stage}.yaml").is_file():
        files.append(params_dir / profile / f"{stage}.yaml")
    return load_params(*files)


def _wire(stage: Stage, params: dict, root: Path, seed: int, seeds: Sequence[int]) -> dict:
    """The upstream run directories a stage reads, as params."""
    base = str(_run_dir(root, STAGES[0], seeds[0]))
    if stage.name == "02_preference_data":
        return {**params, "base_run": base}
    if stage.name == "04_data_review":
        data = _run_dir(root, STAGES[1], seeds[0])
        kinds = ["povid", *stage_params("02_preference_data", params["_profile"])["editions"]]
        return {**params, "prefs": [str(data / f"{k}.jsonl") for k in kinds], "names": kinds,
                "tokenizer": str(Path(base) / "model")}
    return params


def plan(profile: str, seeds: Sequence[int], runs_dir: str | Path, run_id: str | None = None,
         only: Sequence[str] = ()) -> list[tuple[str, Path, dict]]:
    """(notebook, run directory, params) per execution, in order."""
    unknown = set(only) - {s.name for s in STAGES}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; the stages are {[s.name for s in STAGES]}")
    if not seeds:
        raise ValueError("give at least one seed")
    root = Path(runs_dir) / (run_id or profile)
    jobs = []
    for stage in STAGES:
        if only and stage.name not in only:
            continue
        for seed in (seeds if stage.per_seed else seeds[:1]):
            params = {**stage_params(stage.name, profile), "seed": seed, "_profile": profile}
            params = _wire(stage, params, root, seed, seeds)
            params.pop("_profile", None)
            jobs.append((str(ROOT / "notebooks" / f"{stage.name}.ipynb"), _run_dir(root, stage, seed), params))
    return jobs


def run_pipeline(profile: str, seeds: Sequence[int] = (0,), runs_dir: str | Path = "runs",
                 run_id: str | None = None, only: Sequence[str] = (), progress: bool = True) -> dict:
    """Execute the chain (or the stages in `only`); returns {run directory: metrics}."""
    results = {}
    for notebook, run_dir, params in plan(profile, seeds, runs_dir, run_id, only):
        logger.info("stage %s -> %s", Path(notebook).stem, run_dir)
        results[str(run_dir)] = execute(notebook, params, run_dir, progress=progress)
    io.write_json(Path(runs_dir) / (run_id or profile) / "pipeline.json",
                  {"profile": profile, "seeds": list(seeds), "stages": results})
    return results
