"""The study as a chain of notebooks: which stages run, in which order, with which params, into which run
directories (`mmstudy run`).

Params of a stage come from `params/<stage>.yaml` (the default profile), then `params/<profile>/<stage>.yaml` when
the profile has one, then the seed, then the upstream run directories the driver wires in (`base_run`, ...).
Each stage executes with `mmstudy.study.notebooks.execute` into

    <runs>/<run id>/<stage>/                      stages that run once
    <runs>/<run id>/<stage>/[<variant>/]s<seed>/  stages that run per seed (and per variant: the offline dataset,
                                                  the online mode)
    <runs>/<run id>/07_ablations/<axis>/<point>/s<seed>/
                                                  the ablation sweep: one execution of the same notebook per point
                                                  of `params/[<profile>/]07_ablations.sweep.yaml`

so a rerun skips complete stages and continues an interrupted one (the stage functions resume). The ablation sweep
is optional (it runs when named in `only`, with the `ablation_seeds`); the report runs last on every call that
selects it and reads whatever run directories exist.

    >>> run_pipeline("smoke", seeds=[0], runs_dir="runs")
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmstudy import io
from mmstudy.progress import Watcher
from mmstudy.study.notebooks import execute, load_params, read_sweep

logger = logging.getLogger(__name__)

PROFILES = ("smoke", "default", "paper")
ROOT = Path(__file__).resolve().parents[2]
PROGRESS_FILE = ".progress.json"   # a running job's bar state (mmstudy.progress), removed when it ends


@dataclass(frozen=True)
class Stage:
    name: str                         # the notebook's stem and the params files' stem
    per_seed: bool                    # once per seed, or once (with the first seed)
    variants: tuple[str, ...] = ()    # one execution per variant, set as the param `variant_param`
    variant_param: str = ""
    sweep: bool = False               # one execution per point of params/[<profile>/]<name>.sweep.yaml
    optional: bool = False            # runs only when named in `only`
    always: bool = False              # executed again on every call (it reads every other stage's outputs)
    html: bool = False                # the executed notebook is also exported to HTML


STAGES = (
    Stage("01_world_base", per_seed=False),
    Stage("02_preference_data", per_seed=True),
    Stage("03_bdhs", per_seed=True),
    Stage("04_data_review", per_seed=False),
    Stage("05_offline", per_seed=True, variants=("oracle", "bdhs", "povid"), variant_param="dataset"),
    Stage("06_online", per_seed=True, variants=("online_dpo", "mixed"), variant_param="mode"),
    Stage("07_ablations", per_seed=True, sweep=True, optional=True),
    Stage("08_evaluation", per_seed=True),
    Stage("09_report", per_seed=False, always=True, html=True),
)
_BY_NAME = {s.name: s for s in STAGES}
_DATA_STAGES = ("02_preference_data", "03_bdhs")
CORE_MODELS = {"base": ("01_world_base", None), "dpo_oracle": ("05_offline", "oracle"),
               "dpo_bdhs": ("05_offline", "bdhs"),
               "dpo_povid": ("05_offline", "povid"), "online_dpo": ("06_online", "online_dpo"),
               "mixed": ("06_online", "mixed")}


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


def sweep_points(stage: str, profile: str, params_dir: Path = ROOT / "params",
                 select: Sequence[str] = ()) -> list[tuple[str, dict]]:
    """("<axis>/<point>", overrides) per point of the stage's sweep: the profile's sweep file if it has one, else
    the default's. `select` keeps the points named "<axis>/<point>" and every point of an axis named "<axis>", in
    the file's order; a name that matches nothing is an error."""
    path = params_dir / profile / f"{stage}.sweep.yaml"
    path = path if path.is_file() else params_dir / f"{stage}.sweep.yaml"
    points = [(f"{axis}/{point}", overrides) for axis, points in read_sweep(path).items()
              for point, overrides in points.items()]
    if not select:
        return points
    unknown = [s for s in select if not any(name == s or name.split("/")[0] == s for name, _ in points)]
    if unknown:
        raise ValueError(f"{path}: no sweep point or axis {unknown}; the points are {[n for n, _ in points]}")
    return [(name, o) for name, o in points if name in select or name.split("/")[0] in select]


def _wire(stage: Stage, variant: str | None, root: Path, seed: int, seeds: Sequence[int], profile: str,
          shared_data: bool) -> dict:
    """The params the driver sets: the upstream run directories and files a stage reads, and its variant. With
    `shared_data`, every seed trains on the first seed's preference data (02, 03), and a sweep point on the data
    the first seed's point builds (`data_seed`, `07_ablations/data/s<first seed>/`)."""
    base = _run_dir(root, _BY_NAME["01_world_base"], seeds[0])
    data_seed = seeds[0] if shared_data else seed
    data = _run_dir(root, _BY_NAME["02_preference_data"], data_seed)
    wired: dict = {stage.variant_param: variant} if variant and stage.variant_param else {}
    if stage.name in ("02_preference_data", "03_bdhs", "05_offline", "06_online", "07_ablations"):
        wired["base_run"] = str(base)
    if stage.name == "02_preference_data" and seed != seeds[0]:
        wired["editions"] = []   # the data review and the ablations read the first seed's editions only
    if stage.name == "04_data_review":
        first = _run_dir(root, _BY_NAME["02_preference_data"], seeds[0])
        data_params = stage_params("02_preference_data", profile)
        kinds = [spec.partition("=")[0] for spec in data_params.get("sources", [])] \
            or ["povid", *data_params["editions"]]
        bdhs = _run_dir(root, _BY_NAME["03_bdhs"], seeds[0]) / "bdhs.jsonl"
        wired |= {"prefs": [str(first / f"{k}.jsonl") for k in kinds] + [str(bdhs)], "names": [*kinds, "bdhs"],
                  "tokenizer": str(base / "model")}
    if stage.name == "05_offline":
        wired["prefs"] = str(_run_dir(root, _BY_NAME["03_bdhs"], data_seed) / "bdhs.jsonl") if variant == "bdhs" \
            else str(data / f"{variant}.jsonl")
    if stage.name == "06_online":
        wired["prefs"] = str(data / "povid.jsonl")
    if stage.name == "07_ablations":
        axis, point = variant.split("/")
        wired = {"axis": axis, "point": point, "base_run": str(base), "data_run": str(data),
                 "bdhs_run": str(_run_dir(root, _BY_NAME["03_bdhs"], data_seed)),
                 "shared_dir": str(root / stage.name / "data" / f"s{data_seed}")}
        if data_seed != seed:   # the first seed's draw of what the point builds; seeds differ in training alone
            wired["data_seed"] = data_seed
    if stage.name == "08_evaluation":
        models = {m: (s, v) for m, (s, v) in CORE_MODELS.items() if _has_variant(_BY_NAME[s], v, profile)}
        wired |= {"names": list(models), "world": str(base / "world"),
                  "runs": [str(_run_dir(root, _BY_NAME[s], seed, v)) if v else str(base)
                           for s, v in models.values()]}
    if stage.name == "09_report":
        wired["runs_root"] = str(root)
    return wired


def _has_variant(stage: Stage, variant: str | None, profile: str) -> bool:
    """The positive control (05_offline's "oracle") trains only where 02_preference_data builds its pairs (the
    world's oracle ranks them: not on converted releases)."""
    if stage.name == "05_offline" and variant == "oracle":
        data = stage_params("02_preference_data", profile)
        return bool(data.get("control_prompts")) and not data.get("sources")
    return True


def _stage_seeds(stage: Stage, seeds: Sequence[int], ablation_seeds: Sequence[int] | None,
                 shared_data: bool) -> Sequence[int]:
    """The seeds a stage runs with: the sweep's `ablation_seeds` (default: the first seed); every seed for a
    per-seed stage, except the data stages with `shared_data`; the first seed otherwise."""
    if stage.sweep:
        return ablation_seeds or seeds[:1]
    if stage.per_seed and not (shared_data and stage.name in _DATA_STAGES):
        return seeds
    return seeds[:1]


def plan(profile: str, seeds: Sequence[int], runs_dir: str | Path, run_id: str | None = None,
         only: Sequence[str] = (), ablation_seeds: Sequence[int] | None = None,
         shared_data: bool = True, points: Sequence[str] = ()) -> list[tuple[str, Path, dict, bool]]:
    """(notebook, run directory, params, always) per execution, in order. The ablation sweep runs only when named
    in `only`, with `ablation_seeds` (default: the first seed), at its `points` (axes or "<axis>/<point>"; default:
    all, `sweep_points`). `shared_data` (the default): build the preference data (02, 03, and what sweep points
    build) with the first seed only and train every seed on it, as the paper has one dataset per method, so that
    seeds differ in training alone; False draws new data per seed (claims then hold over draws of the data, at a
    cost in power: docs/sensitivity.md)."""
    unknown = set(only) - {s.name for s in STAGES}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; the stages are {[s.name for s in STAGES]}")
    if not seeds:
        raise ValueError("give at least one seed")
    missing = sorted(set(ablation_seeds or ()) - set(seeds))
    if missing:
        raise ValueError(f"ablation seeds {missing} are not among the seeds {list(seeds)}: the sweep reads their "
                         "02_preference_data and 03_bdhs runs")
    if points and "07_ablations" not in only:
        raise ValueError("sweep points select points of 07_ablations: name it in --only")
    root = Path(runs_dir) / (run_id or profile)
    jobs = []
    for stage in STAGES:
        if stage.name not in only and (only or stage.optional):
            continue
        stage_seeds = _stage_seeds(stage, seeds, ablation_seeds, shared_data)
        variants = sweep_points(stage.name, profile, select=points) if stage.sweep else \
            [(v, {}) for v in stage.variants or (None,) if _has_variant(stage, v, profile)]
        for seed in stage_seeds:
            for variant, overrides in variants:
                params = {**stage_params(stage.name, profile), **overrides, "seed": seed,
                          **_wire(stage, variant, root, seed, seeds, profile, shared_data)}
                jobs.append((str(ROOT / "notebooks" / f"{stage.name}.ipynb"), _run_dir(root, stage, seed, variant),
                             params, stage.always))
    return jobs


def run_pipeline(profile: str, seeds: Sequence[int] = (0,), runs_dir: str | Path = "runs",
                 run_id: str | None = None, only: Sequence[str] = (), ablation_seeds: Sequence[int] | None = None,
                 progress: bool = True, shared_data: bool = True, points: Sequence[str] = ()) -> dict:
    """Execute the chain (or the stages in `only`); returns {run directory: metrics}, also merged into
    <runs>/<run id>/pipeline.json."""
    summary = Path(runs_dir) / (run_id or profile) / "pipeline.json"
    before = io.read_json(summary) if summary.is_file() else {}
    if before and before.get("shared_data", False) != shared_data:   # a summary without the key predates it
        made = "shared" if before.get("shared_data") else "per-seed"
        raise ValueError(f"{summary}: this run id was made with --data-draws {made}; call it the same way, or "
                         "use another --run-id")
    jobs = plan(profile, seeds, runs_dir, run_id, only, ablation_seeds, shared_data, points)
    root = Path(runs_dir) / (run_id or profile)
    results = {}
    for i, (notebook, run_dir, params, always) in enumerate(jobs, 1):
        logger.info("stage %s -> %s", Path(notebook).stem, run_dir)
        job = f"{Path(run_dir).relative_to(root).as_posix()} ({i} of {len(jobs)})"
        with Watcher(Path(run_dir) / PROGRESS_FILE, job) if progress else contextlib.nullcontext():
            results[str(run_dir)] = execute(notebook, params, run_dir, force=always, again=always, progress=False,
                                            html=_BY_NAME[Path(notebook).stem].html)
    earlier = before.get("stages", {})
    io.write_json(summary, {"profile": profile, "seeds": list(seeds), "shared_data": shared_data,
                            "stages": {**earlier, **results}})
    return results
