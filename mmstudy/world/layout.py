"""The layout of a world directory (`mmstudy.world.files` writes it) and its readers: what every other part of
the world package and the library reads a world with."""

from __future__ import annotations

from pathlib import Path

from mmstudy import io
from mmstudy.world.scene import CLASS_INDEX, Scene

POPE_SPLITS = ("random", "popular", "adversarial")
COCO_ID_OFFSET = {"train": 0, "val": 5_000_000, "select": 7_000_000, "text": 9_000_000}
SELECTION_SPLIT = "select"   # scenes for choosing recipes: no benchmark, training set or preference file uses them


def load_world_info(world_dir: str | Path) -> dict:
    world_dir = Path(world_dir)
    info = io.read_json(world_dir / "world.json")
    io.check_fields(info, ("version", "seed", "spec", "classes", "cooccurrence"), str(world_dir / "world.json"))
    return info


def load_scenes(world_dir: str | Path, split: str | None = None) -> list[Scene]:
    """scenes.jsonl as Scene objects, optionally one split; malformed records raise DataError."""
    path = Path(world_dir) / "scenes.jsonl"
    scenes = []
    for i, r in enumerate(io.read_jsonl(path, required=("image_id", "split", "context", "objects", "clutter"))):
        if split is not None and r["split"] != split:
            continue
        try:
            scene = Scene.from_record(r)
        except TypeError as e:
            raise io.DataError(f"{path}, record {i + 1} ({r['image_id']}): bad field 'objects': {e}") from e
        for o in scene.objects:
            if o.name not in CLASS_INDEX:
                raise io.DataError(f"{path}, record {i + 1} ({r['image_id']}): unknown object class {o.name!r}")
        scenes.append(scene)
    return scenes
