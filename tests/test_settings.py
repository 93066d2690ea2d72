"""`--set KEY=VALUE` overrides of the world's and the base recipe's dataclass configs."""

import pytest

from mmstudy.study.settings import parse_sets, with_overrides
from mmstudy.training.base import BaseTrainConfig
from mmstudy.world.scene import WorldSpec


def test_overrides_reach_nested_fields_and_keep_tuples():
    spec = with_overrides(WorldSpec(), ["p_drift=0.6", "faint_alpha=[0.5, 0.85]"])
    assert spec.p_drift == 0.6 and spec.faint_alpha == (0.5, 0.85)
    cfg = with_overrides(BaseTrainConfig(), ["instruct.steps=3000", "p_blind=0.2", "model.text_layers=6"])
    assert (cfg.instruct.steps, cfg.instruct.lr, cfg.p_blind, cfg.model.text_layers) == (3000, 1e-3, 0.2, 6)
    assert with_overrides(cfg, []) == cfg


def test_bad_overrides_name_the_key():
    with pytest.raises(ValueError, match="no field 'p_drfit'.*p_drift"):
        with_overrides(WorldSpec(), ["p_drfit=0.6"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_sets(["p_drift"])
    with pytest.raises(ValueError, match="given twice"):
        parse_sets(["a=1", "a=2"])
    with pytest.raises(ValueError, match="group of settings"):
        with_overrides(BaseTrainConfig(), ["instruct=3"])
    with pytest.raises(ValueError, match="p_drift must be a probability"):
        with_overrides(WorldSpec(), ["p_drift=1.5"])         # the config's own validation runs


def test_world_cli_takes_overrides(tmp_path):
    from mmstudy import io
    from mmstudy.cli import main

    out = tmp_path / "world"
    assert main(["-q", "world", "--out", str(out), "--profile", "smoke", "--set", "p_drift=0",
                 "--set", "faint_alpha=[0.3, 0.4]"]) == 0
    spec = io.read_json(out / "world.json")["spec"]
    assert spec["p_drift"] == 0 and spec["faint_alpha"] == [0.3, 0.4] and spec["n_train"] == 300
    assert main(["-q", "world", "--out", str(tmp_path / "w2"), "--profile", "smoke", "--set", "p_dirft=0"]) == 2
