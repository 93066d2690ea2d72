"""Shared by the benchmarks: a smoke world and model built in a temporary directory."""

from __future__ import annotations

from pathlib import Path


def smoke_setup(root: Path) -> tuple[Path, Path]:
    """(model directory, world directory) of a smoke-profile world and base model under `root` (about 15 s)."""
    from mmstudy.base import BaseTrainConfig, train_base
    from mmstudy.model import save_llava
    from mmstudy.world import WorldSpec
    from mmstudy.world_files import write_world

    world = root / "world"
    write_world(world, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    model, processor, _ = train_base(world, BaseTrainConfig.for_profile("smoke"), progress=False)
    save_llava(model, processor, root / "model")
    return root / "model", world
