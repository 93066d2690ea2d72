"""The study as a chain of notebooks: which stages run, in which order, with which params, into which run
directories (`mmstudy run`).

Params of a stage come from `params/<stage>.yaml` (the default profile), then `params/<profile>/<stage>.yaml` when
the profile has one, then the seed, then the upstream run directories the driver wires in (`base_run`, ...).
Each stage executes with `mmstudy.notebooks.execute` into

    <runs>/<run id>/<stage>/                      stages that run once
    <runs>/<run id>/<stage>/[<variant>/]s<seed>/  stages that run per seed (and per variant: the offline dataset,
                                                  the online mode)

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
    name: str                         # the notebook's stem and the params files' stem
    per_seed: bool                    # once per seed, or once (with the first seed)
    variants: tuple[str, ...] = ()    # one execution per variant, set as the param `variant_param`
    variant_param: str = ""


STAGES = (
    Stage("01_world_base", per_seed=False),
    Stage("02_preference_data", per_seed=True),
    Stage("03_bdhs", per_seed=True),
    Stage("04_data_review", per_seed=False),
    Stage("05_offline", per_seed=True, variants=("bdhs", "povid"), variant_param="dataset"),
    Stage("06_online", per_seed=True, variants=("online_dpo", "mixed"), variant_param="mode"),
)
_BY_NAME = {s.name: s for s in STAGES}


def _run_dir(root: Path, stage: Stage, seed: int, variant: str | None = None) -> Path:
    out = root / stage.name / variant if variant else root / stage.name
    return out / f"s{seed}" if stage.per_seed else out


def stage_params(stage: str, profile: str, params_dir: Path = ROOT / "params") -> dict:
    """A stage's params under a profile: the stage's file, then the profile's override file if any."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {list(PROFILES)}")
    files = [params_dir / f"{stage}.yaml"]
    if (params_dir / profile / f"{stage}.yaml").is_file():
        files.append(params_dir / profile / f"{stage}.yaml")
    return load_params(*files)


def _wire(stage: Stage, variant: str | None, root: Path, seed: int, seeds: Sequence[int], profile: str) -> dict:
    """The params the driver sets: the upstream run directories and files a stage reads, and its variant."""
    base = _run_dir(root, _BY_NAME["01_world_base"], seeds[0])
    data = _run_dir(root, _BY_NAME["02_preference_data"], seed)
    wired: dict = {stage.variant_param: variant} if variant else {}
    if stage.name in ("02_preference_data", "03_bdhs", "05_offline", "06_online"):
        wired["base_run"] = str(base)
    if stage.name == "02_preference_data" and seed != seeds[0]:
        wired["editions"] = []   # the data review and the ablations read the first seed's editions only
    if stage.name == "04_data_review":
        first = _run_dir(root, _BY_NAME["02_preference_data"], seeds[0])
        kinds = ["povid", *stage_params("02_preference_data", profile)["editions"]]
        bdhs = _run_dir(root, _BY_NAME["03_bdhs"], seeds[0]) / "bdhs.jsonl"
        wired |= {"prefs": [str(first / f"{k}.jsonl") for k in kinds] + [str(bdhs)], "names": [*kinds, "bdhs"],
                  "tokenizer": str(base / "model")}
    if stage.name == "05_offline":
        wired["prefs"] = str(_run_dir(root, _BY_NAME["03_bdhs"], seed) / "bdhs.jsonl") if variant == "bdhs" \
            else str(data / f"{variant}.jsonl")
    if stage.name == "06_online":
        wired["prefs"] = str(data / "povid.jsonl")
    return wired


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
            for variant in stage.variants or (None,):
                params = {**stage_params(stage.name, profile), "seed": seed,
                          **_wire(stage, variant, root, seed, seeds, profile)}
                jobs.append((str(ROOT / "notebooks" / f"{stage.name}.ipynb"), _run_dir(root, stage, seed, variant),
                             params))
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
