"""Shared fixtures: a smoke world and a smoke-trained tiny model, built once per test session."""

import logging

import pytest
import torch

from mmstudy.runs import cpu_threads
from mmstudy.world.files import write_world
from mmstudy.world.scene import WorldSpec

torch.set_num_threads(min(2, cpu_threads()))   # at most 2; fewer under taskset or OMP_NUM_THREADS


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """A smoke-profile world (300 train / 60 val images), generated once."""
    out = tmp_path_factory.mktemp("world") / "world"
    write_world(out, WorldSpec.for_profile("smoke"), seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_model(smoke_world):
    """(model, processor, report) of a smoke-profile base training on the smoke world (seconds, no quality)."""
    from mmstudy.training.base import BaseTrainConfig, train_base

    logging.getLogger("mmstudy").setLevel(logging.WARNING)
    return train_base(smoke_world, BaseTrainConfig.for_profile("smoke"), progress=False)


@pytest.fixture(scope="session")
def base_dir(smoke_model, tmp_path_factory):
    """The smoke model saved as a Hugging Face directory (what the trainers load)."""
    from mmstudy.models.llava import save_llava

    model, processor, _ = smoke_model
    path = tmp_path_factory.mktemp("smoke_model") / "base"
    save_llava(model, processor, path)
    return path
