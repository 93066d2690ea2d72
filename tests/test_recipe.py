"""The recipe grid: its validation, the choice rule, the selection split, and one tiny grid end to end."""

import json
import shutil

import pytest

from mmstudy import io
from mmstudy.study.recipe import RecipeGrid, choose_recipe, keeps, point_name, selection_row
from mmstudy.world.files import write_selection_split
from mmstudy.world.layout import SELECTION_SPLIT, load_scenes

BASE = {"chair_i": 0.20, "recall": 0.90, "pope_f1": 0.88}


def _row(chair_i, recall=0.90, pope_f1=0.88, kl=0.01, lr=1e-4):
    return {"lr": lr, "epochs": 2, "beta": 0.1, "max_pairs": 0, "chair_i": chair_i, "recall": recall,
            "pope_f1": pope_f1, "kl_per_token": kl}


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": ()}, "lr"), ({"epochs": (2, 2)}, "epochs"), ({"beta": (0.0,)}, "beta must be > 0"),
    ({"max_pairs": (-1,)}, "max_pairs >= 0"), ({"tolerance": -0.1}, "tolerance"),
    ({"fixed": {"lr": 1e-3}}, "must not set"),
])
def test_grid_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RecipeGrid(**kwargs)


def test_grid_points_are_the_product_with_distinct_names():
    points = RecipeGrid(lr=(1e-4, 2e-4), epochs=(1, 2, 3), beta=(0.1,), max_pairs=(0, 64)).points()
    assert len(points) == 12
    assert len({point_name(p) for p in points}) == 12
    assert point_name({"lr": 5e-5, "epochs": 2, "beta": 0.1, "max_pairs": 768}) == "lr5e-05_e2_b0.1_n768"


def test_choice_skips_points_that_lose_recall_or_pope():
    rows = [_row(0.10, recall=0.85), _row(0.11, pope_f1=0.80), _row(0.15), _row(0.18)]
    assert choose_recipe(rows, BASE, tolerance=0.01) is rows[2]
    assert choose_recipe(rows, BASE, tolerance=0.10) is rows[0]   # a looser tolerance admits the first


def test_choice_breaks_ties_by_smaller_kl_and_says_none_when_nothing_keeps_recall():
    rows = [_row(0.150, kl=0.05), _row(0.1505, kl=0.02), _row(0.16, kl=0.001)]
    assert choose_recipe(rows, BASE) is rows[1]
    assert choose_recipe([_row(0.1, recall=0.5)], BASE) is None


def test_a_drop_of_exactly_the_tolerance_is_kept():
    assert keeps(_row(0.1, recall=0.89, pope_f1=0.87), BASE, tolerance=0.01)
    assert not keeps(_row(0.1, recall=0.8899), BASE, tolerance=0.01)


def test_selection_row_names_what_is_missing_and_where():
    with pytest.raises(KeyError, match="run/eval.*pope/macro/f1"):
        selection_row({"chair/chair_i": 0.1, "chair/recall": 0.9, "pope/adversarial/accuracy": 0.8}, where="run/eval")


def test_selection_split_is_new_scenes_laid_out_for_pope_and_chair(smoke_world, tmp_path):
    out = tmp_path / "selection"
    summary = write_selection_split(smoke_world, out, n_images=30, progress=False)
    scenes = load_scenes(out)
    assert len(scenes) == 30 and {s.split for s in scenes} == {SELECTION_SPLIT}
    used = {s.image_id for s in load_scenes(smoke_world)}
    assert not used & {s.image_id for s in scenes}
    coco_ids = {im["id"] for split in ("train", "val")
                for im in io.read_json(smoke_world / "annotations" / f"instances_{split}.json")["images"]}
    mine = {im["id"] for im in io.read_json(out / "annotations" / "instances_val.json")["images"]}
    assert len(mine) == 30 and not mine & coco_ids
    assert all((out / "images" / f"{s.image_id}.png").is_file() for s in scenes)
    captions = io.read_jsonl(out / "caption_eval.jsonl")
    assert [c["image_id"] for c in captions] == [s.image_id for s in scenes]
    pope = io.read_jsonl(out / "pope" / "world_pope_adversarial.json")
    assert pope and {q["image"] for q in pope} <= {f"{s.image_id}.png" for s in scenes}
    assert summary["counts"]["pope_questions"]["adversarial"] == len(pope)
    # kept when asked again; refused for another size rather than overwritten
    assert write_selection_split(smoke_world, out, n_images=30, progress=False) == summary
    with pytest.raises(FileExistsError, match="images: 30 there, 40 asked"):
        write_selection_split(smoke_world, out, n_images=40, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no selection split"):
        write_selection_split(smoke_world, tmp_path / "other", n_images=30, progress=False)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="at least 10"):
        write_selection_split(smoke_world, tmp_path / "tiny", n_images=3, progress=False)


def test_recipe_grid_command_trains_scores_and_chooses(smoke_world, base_dir, tmp_path):
    from mmstudy.cli import main
    from mmstudy.editions.povid import povid_like_pairs

    run = tmp_path / "base_run"
    run.mkdir()
    (run / "world").symlink_to(smoke_world)
    shutil.copytree(base_dir, run / "model")
    prefs = tmp_path / "pairs.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=8, seed=0))
    out = tmp_path / "grid"

    def command(out_dir, pairs="4"):
        return ["-q", "recipe-grid", "--base-run", str(run), "--prefs", str(prefs), "--out", str(out_dir), "--lr",
                "1e-4,2e-4", "--epochs", "1", "--pairs", pairs, "--selection-images", "12", "--tolerance", "1"]

    args = command(out)
    assert main(args) == 0
    report = json.loads((out / "grid.json").read_text())
    assert len(report["rows"]) == 2 and report["base"]["recall"] >= 0
    for row in report["rows"]:
        assert row["pairs"] == 4 and row["steps"] == 1 and row["kl_per_token"] >= 0
        assert (out / point_name(row) / "eval" / "shift.json").is_file()
    assert report["chosen"] == choose_recipe(report["rows"], report["base"], tolerance=1)
    assert report["chosen"] is not None   # tolerance 1 keeps every point
    assert (out / "grid.png").stat().st_size > 0
    lines = (out / "grid.csv").read_text().splitlines()
    assert lines[0].startswith("name,") and len(lines) == 4
    # resumable: a second call trains nothing and reads the same rows back
    first = out / point_name(report["rows"][0])
    kept = [first / "train_summary.json", first / "eval" / "results.json", first / "eval" / "shift.json"]
    mtimes = [f.stat().st_mtime for f in kept]
    assert main(args) == 0
    assert json.loads((out / "grid.json").read_text())["rows"] == report["rows"]
    assert [f.stat().st_mtime for f in kept] == mtimes
    # the same directory with other pairs, or a grid asking for more pairs than the file has, is refused
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=8, seed=1))
    assert main(args) == 2
    assert main(command(tmp_path / "other", pairs="9")) == 2
    assert json.loads((out / "grid.json").read_text())["rows"] == report["rows"]
