"""The study commands: execute a notebook, run the chain, archive its results, choose the recipe, open the
inspector."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml

from mmstudy import io
from mmstudy.commands.common import manifest_of, number_list
from mmstudy.data.preferences import load_preferences
from mmstudy.plots import recipe_figure
from mmstudy.study.archive import archive_runs
from mmstudy.study.notebooks import execute, load_params
from mmstudy.study.pipeline import run_pipeline
from mmstudy.study.recipe import RecipeGrid, choose_recipe, grid_report, keeps, point_name, run_grid

logger = logging.getLogger("mmstudy")


def _execute(args) -> None:
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    metrics = execute(args.notebook, load_params(*args.params, **overrides), args.run_dir, force=args.force,
                      progress=not args.quiet)
    logger.info("%s: %d metrics in %s", args.notebook.name, len(metrics), Path(args.run_dir) / "metrics.json")


def _run(args) -> None:
    seeds = number_list(args.seeds, "--seeds")
    ablation_seeds = number_list(args.ablation_seeds, "--ablation-seeds") if args.ablation_seeds else None
    results = run_pipeline(args.profile, seeds, args.runs, args.run_id, args.only, ablation_seeds,
                           progress=not args.quiet, shared_data=args.data_draws == "shared", points=args.points)
    logger.info("ran %d stage executions into %s", len(results), args.runs / (args.run_id or args.profile))


def _archive(args) -> None:
    archive_runs(args.runs / args.run_id, args.to / args.run_id)


def _recipe_grid(args) -> None:
    grid = RecipeGrid(lr=tuple(number_list(args.lr, "--lr", float)),
                      epochs=tuple(number_list(args.epochs, "--epochs")),
                      beta=tuple(number_list(args.beta, "--beta", float)),
                      max_pairs=tuple(number_list(args.pairs, "--pairs")),
                      selection_images=args.selection_images, tolerance=args.tolerance)
    pairs = load_preferences(args.prefs, image_root=args.base_run / "world" / "images")
    rows, base = run_grid(args.base_run, pairs, grid, args.out, seed=args.seed, device=args.device,
                          progress=not args.quiet)
    chosen = choose_recipe(rows, base, grid.tolerance)
    report = grid_report(rows, base, grid, chosen)
    report["manifest"] = manifest_of(args)
    io.write_json(args.out / "grid.json", report)
    table = pd.DataFrame([{"name": point_name(r), **r} for r in rows] + [{"name": "base", **base}])
    io.write_text(args.out / "grid.csv", table.iloc[[-1, *range(len(rows))]].to_csv(index=False))
    with io.atomic_path(args.out / "grid.png") as tmp:
        kept = [keeps(r, base, grid.tolerance) for r in rows]
        recipe_figure(rows, base, chosen, grid.tolerance, kept).savefig(tmp, dpi=120, format="png")
    if chosen is None:
        logger.warning("no grid point keeps recall and POPE F1 within %.3f of the base: nothing chosen "
                       "(see %s)", grid.tolerance, args.out / "grid.csv")
    else:
        logger.info("chosen: %s (CHAIR_i %.4f vs base %.4f, recall %.4f vs %.4f)",
                    {k: chosen[k] for k in ("lr", "epochs", "beta", "max_pairs")}, chosen["chair_i"],
                    base["chair_i"], chosen["recall"], base["recall"])


def _app(args) -> None:
    from mmstudy.app.ui import build_demo, launch

    logger.info("inspecting %s (world: %s)", args.runs, args.world or "looked for under the runs directory")
    launch(build_demo(args.runs, args.world, args.coco, args.device), args.host, args.port)


def _parser_execute(sub) -> None:
    p = sub.add_parser("execute", help="execute one parameterized notebook into a run directory (papermill)")
    p.add_argument("notebook", type=Path, help="e.g. notebooks/04_data_review.ipynb")
    p.add_argument("--params", nargs="*", type=Path, default=[], help="flat YAML params files, merged in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter (the value is read as YAML: 3, 0.5, [a, b], text)")
    p.add_argument("--run-dir", required=True, type=Path, help="where the executed notebook and outputs go")
    p.add_argument("--force", action="store_true", help="rerun a complete run directory with other params")
    p.set_defaults(func=_execute)


def _parser_run(sub) -> None:
    p = sub.add_parser("run", help="run the study's notebook chain into runs/<run id>/<stage>/ (papermill)")
    p.add_argument("--profile", required=True, choices=["smoke", "default", "paper"],
                   help="params/<profile>/ over params/: smoke (CI), default (2 CPU cores), paper (GPUs)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the per-seed stages (e.g. 0,1,2)")
    p.add_argument("--only", nargs="*", default=[], metavar="STAGE",
                   help="run only these stages (07_ablations runs only when named here)")
    p.add_argument("--ablation-seeds", default="", help="seeds of the ablation sweep (default: the first seed)")
    p.add_argument("--points", nargs="*", default=[], metavar="AXIS[/POINT]",
                   help="with --only 07_ablations: run these axes or points of the sweep (default: all)")
    p.add_argument("--data-draws", choices=["shared", "per-seed"], default="shared",
                   help="shared (default): the preference data (the sweep points' too) is built once, with the "
                        "first seed, and every seed trains on it (seeds differ in training alone, as the paper has "
                        "one dataset per method); per-seed: each seed draws its own data (claims hold over draws of "
                        "the data, with less power). A run id keeps the setting it was made with")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    p.add_argument("--run-id", default=None, help="run id (default: the profile's name)")
    p.set_defaults(func=_run)


def _parser_archive(sub) -> None:
    p = sub.add_parser("archive", help="copy a run id's results without weights (params, manifests, metrics, "
                       "per-sample outputs of every complete run) into <to>/<run id>/, to keep or share")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    p.add_argument("--run-id", required=True, help="the run id to archive (e.g. default)")
    p.add_argument("--to", type=Path, required=True, help="archive directory (e.g. results)")
    p.set_defaults(func=_archive)


def _parser_recipe_grid(sub) -> None:
    p = sub.add_parser("recipe-grid", help="choose the alignment recipe: DPO on the positive control's pairs over a "
                       "grid, scored on a selection split of new scenes (docs/alignment.md)")
    p.add_argument("--base-run", required=True, type=Path, help="a run directory with world/ and model/ "
                   "(runs/<id>/01_world_base)")
    p.add_argument("--prefs", required=True, type=Path, help="the oracle pairs (02_preference_data's oracle.jsonl)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--lr", default="5e-5,1e-4,2e-4")
    p.add_argument("--epochs", default="2,4")
    p.add_argument("--beta", default="0.1")
    p.add_argument("--pairs", default="768,1024", help="the file's first N pairs; 0: all")
    p.add_argument("--selection-images", type=int, default=500)
    p.add_argument("--tolerance", type=float, default=0.01, help="recall and POPE F1 may fall this much")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_recipe_grid)


def _parser_app(sub) -> None:
    p = sub.add_parser("app", help="the Gradio inspector: preference pairs, live generation with masking, run "
                       "comparison and benchmark samples, over a runs directory")
    p.add_argument("--runs", required=True, type=Path, help="directory searched for preference files, evaluations "
                   "(results.json + samples.jsonl) and model directories")
    p.add_argument("--world", type=Path, default=None, help="world directory for images and ground truth "
                   "(default: one found under --runs)")
    p.add_argument("--coco", type=Path, default=None, help="COCO annotations (instances_*.json, captions_*.json): "
                   "ground truth for COCO images")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cpu", help="device for the Live tab's models")
    p.set_defaults(func=_app)


def add_commands(sub) -> None:
    _parser_execute(sub)
    _parser_run(sub)
    _parser_archive(sub)
    _parser_recipe_grid(sub)
    _parser_app(sub)
