"""Choosing the chain's alignment recipe on a small grid, with the positive control, on scenes no benchmark uses.

The paper fixes one recipe per method family by a grid search; the study does the same once, with the one
preference signal that is known to be right (the oracle-ranked pairs of `dpo_oracle`), so that a method that does
not move the model cannot blame a recipe too weak to move anything. Each grid point trains DPO from the base on the
oracle pairs and is scored on a selection split (`mmstudy.world.files.write_selection_split`: new scenes, never a
benchmark item), together with its shift from the base (KL per token, changed answers).

The rule, fixed before any grid was run (`choose_recipe`): among the points that keep object recall and POPE F1
(macro) within `tolerance` of the base's on the selection split, the one with the lowest CHAIR_i; ties within
0.1 point go to the smaller KL. The chosen recipe then trains every method (params/05_offline.yaml, 06, 07).

    >>> rows, base = run_grid("runs/default/01_world_base", pairs, RecipeGrid(), "runs/recipe")
    >>> chosen = choose_recipe(rows, base)
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from mmstudy import io
from mmstudy.study.stages import evaluate_into, shift_into
from mmstudy.training.dpo import DPOTrainConfig, train_dpo
from mmstudy.world.files import write_selection_split

logger = logging.getLogger(__name__)

SELECTION_BENCHMARKS = ("pope", "chair")
COLUMNS = {"chair_i": "chair/chair_i", "recall": "chair/recall", "pope_f1": "pope/macro/f1",
           "pope_adv_acc": "pope/adversarial/accuracy"}
TIE = 0.001   # CHAIR_i within 0.1 point counts as a tie
RULE = ("among the points that keep object recall and POPE F1 (macro) within the tolerance of the base's on the "
        "selection split, the lowest CHAIR_i; ties within 0.1 point go to the smaller KL per token")


@dataclass(frozen=True)
class RecipeGrid:
    """The grid: every combination of the four lists, the other DPO settings from `fixed` (DPOTrainConfig
    fields)."""

    lr: tuple[float, ...] = (5e-5, 1e-4, 2e-4)
    epochs: tuple[int, ...] = (2, 4)
    beta: tuple[float, ...] = (0.1,)
    max_pairs: tuple[int, ...] = (768, 1024)   # the file's first N pairs (0: all)
    fixed: dict = field(default_factory=lambda: {"loss": "dpo", "lora_r": 16, "lora_alpha": 32, "batch_size": 16,
                                                 "train_projector": False})
    selection_images: int = 500
    tolerance: float = 0.01    # recall and POPE F1 may fall at most this much below the base's

    def __post_init__(self):
        for name in ("lr", "epochs", "beta", "max_pairs"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"RecipeGrid.{name}: give at least one value, each once (got {values!r})")
        if min(self.lr) <= 0 or min(self.beta) <= 0 or min(self.epochs) < 1 or min(self.max_pairs) < 0:
            raise ValueError("RecipeGrid: lr and beta must be > 0, epochs >= 1, max_pairs >= 0")
        if self.tolerance < 0:
            raise ValueError(f"RecipeGrid.tolerance must be >= 0, got {self.tolerance}")
        clash = {"lr", "epochs", "beta", "seed"} & set(self.fixed)
        if clash:
            raise ValueError(f"RecipeGrid.fixed must not set what the grid varies: {sorted(clash)}")

    def points(self) -> list[dict]:
        return [{"lr": lr, "epochs": e, "beta": b, "max_pairs": n}
                for lr, e, b, n in itertools.product(self.lr, self.epochs, self.beta, self.max_pairs)]


def point_name(point: dict) -> str:
    """A grid point's directory name, e.g. lr1e-04_e2_b0.1_n768 (n0: all pairs)."""
    return f"lr{point['lr']:.0e}_e{point['epochs']}_b{point['beta']:g}_n{point['max_pairs']}"


def selection_row(metrics: dict, shift: dict | None = None, where: str = "") -> dict:
    """The columns the rule reads (and the KL) from one evaluation's metrics on the selection split."""
    missing = [key for key in COLUMNS.values() if key not in metrics]
    if missing:
        raise KeyError(f"{where or 'selection metrics'}: no {missing}; evaluate with {SELECTION_BENCHMARKS}")
    row = {col: float(metrics[key]) for col, key in COLUMNS.items()}
    if shift is not None:
        row |= {"kl_per_token": float(shift["kl_per_token"]), "changed_share": float(shift["changed_share"])}
    return row


def keeps(row: dict, base: dict, tolerance: float) -> bool:
    """Whether a grid point keeps recall and POPE F1 within `tolerance` of the base's (float slack 1e-9)."""
    return all(row[col] >= base[col] - tolerance - 1e-9 for col in ("recall", "pope_f1"))


def choose_recipe(rows: Sequence[dict], base: dict, tolerance: float = 0.01) -> dict | None:
    """The rule of this module's docstring over grid rows (each a point's settings and its `selection_row`):
    the chosen row, or None when no point keeps recall and POPE F1 within `tolerance` of `base`. Pure."""
    kept = [r for r in rows if keeps(r, base, tolerance)]
    if not kept:
        return None
    best = min(r["chair_i"] for r in kept)
    tied = [r for r in kept if r["chair_i"] <= best + TIE]
    return min(tied, key=lambda r: (r.get("kl_per_token", 0.0), r["chair_i"]))


def _grid_key(pairs: Sequence[dict], grid: RecipeGrid, seed: int) -> dict:
    """What every point of a grid directory shares; a directory made with another key is refused."""
    digest = hashlib.sha256("\n".join(f"{p['id']}\t{p['chosen']}\t{p['rejected']}" for p in pairs).encode())
    return {"pairs": len(pairs), "pairs_sha256": digest.hexdigest(), "fixed": dict(grid.fixed), "seed": seed,
            "selection_images": grid.selection_images}


def run_grid(base_run: str | Path, pairs: Sequence[dict], grid: RecipeGrid, out_dir: str | Path, seed: int = 0,
             device: str = "cpu", progress: bool = True) -> tuple[list[dict], dict]:
    """Train and score every grid point (resumable: a point whose eval/ is complete is kept; a directory holding
    a grid of other pairs, seed, fixed settings or selection size is refused). `base_run`: a directory with
    world/ and model/ (01_world_base's run). Returns (rows, the base's row)."""
    base_run, out_dir = Path(base_run), Path(out_dir)
    too_many = [p["max_pairs"] for p in grid.points() if p["max_pairs"] > len(pairs)]
    if too_many:
        raise ValueError(f"the grid asks for {max(too_many)} pairs, the file has {len(pairs)}")
    key, key_path = _grid_key(pairs, grid, seed), out_dir / "grid_key.json"
    if key_path.is_file() and io.read_json(key_path) != key:
        raise FileExistsError(f"{out_dir} holds a grid of other pairs, seed, fixed settings or selection size "
                              f"({key_path}); pick another --out")
    io.write_json(key_path, key)
    world, base_model = base_run / "world", base_run / "model"
    selection = out_dir / "selection"
    write_selection_split(world, selection, grid.selection_images, progress=progress)
    base_eval = out_dir / "base" / "eval"
    base = selection_row(evaluate_into(base_model, selection, base_eval, SELECTION_BENCHMARKS, seed=seed,
                                       device=device, progress=progress), where=str(base_eval))
    rows = []
    for i, point in enumerate(grid.points()):
        run = out_dir / point_name(point)
        logger.info("recipe grid %d/%d: %s", i + 1, len(grid.points()), point_name(point))
        if not (run / "train_summary.json").is_file():
            chosen = list(pairs[:point["max_pairs"]] if point["max_pairs"] else pairs)
            cfg = DPOTrainConfig(**grid.fixed, lr=point["lr"], epochs=point["epochs"], beta=point["beta"], seed=seed)
            train_dpo(base_model, chosen, cfg, run, world / "images", device=device, progress=progress)
        metrics = evaluate_into(run / "model", selection, run / "eval", SELECTION_BENCHMARKS, seed=seed,
                                device=device, progress=progress)
        shift = shift_into(run / "eval", base_run, device, base_eval=base_eval, image_root=selection / "images",
                           progress=progress)
        summary = io.read_json(run / "train_summary.json")
        rows.append({**point, "pairs": summary["pairs"], "steps": summary["steps"],
                     "train_seconds": summary["seconds"], **selection_row(metrics, shift, where=str(run / "eval"))})
    return rows, base


def grid_report(rows: Sequence[dict], base: dict, grid: RecipeGrid, chosen: dict | None) -> dict:
    """What `mmstudy recipe-grid` writes to grid.json: the grid, the base's row, every point and the choice."""
    return {"grid": asdict(grid), "rule": RULE,
            "base": base, "rows": list(rows), "chosen": chosen}
