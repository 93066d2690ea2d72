"""The one mapping between command-line options and configs: every field an option with the field's default, and
configs that survive a round trip through the command line."""

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from mmstudy.cli import build_parser
from mmstudy.study import options
from mmstudy.training.dpo import DPOTrainConfig
from mmstudy.training.online import OnlineConfig


def _parser(*specs):
    parser = argparse.ArgumentParser(exit_on_error=False)
    for spec in specs:
        options.add_options(parser, spec)
    return parser


def test_parser_defaults_are_the_dataclass_defaults():
    args = _parser(options.DPO, options.ONLINE).parse_args([])
    assert options.from_args(args, options.DPO) == DPOTrainConfig()
    assert options.from_args(args, options.ONLINE, seed=0) == OnlineConfig()


@pytest.mark.parametrize("stage, config", [("05_offline", DPOTrainConfig), ("06_online", DPOTrainConfig),
                                           ("06_online", OnlineConfig)])
def test_the_configs_defaults_are_the_default_profile(stage, config):
    """One recipe: a field the default profile's params set has that value as its dataclass default, so that
    `mmstudy train-dpo` / `train-online` without options train as the notebooks do."""
    from mmstudy.study.pipeline import stage_params

    params = stage_params(stage, "default")
    shared = [f.name for f in dataclasses.fields(config) if f.name in params and f.name != "seed"]
    assert shared
    assert {n: getattr(config(), n) for n in shared} == {n: params[n] for n in shared}


@pytest.mark.parametrize("cfg", [
    DPOTrainConfig(),
    DPOTrainConfig(loss="slic", beta=0.37, lora_r=0, train_projector=False, train_vision=True, epochs=5, lr=3.3e-7,
                   max_length=200, on_too_long="skip", merge=False, precompute_ref=True, weight_decay=0.01,
                   label_smoothing=0.1, keep_checkpoints=4, seed=11),
    DPOTrainConfig(train_lm=False, lora_r=0, train_projector=True),
])
def test_dpo_configs_survive_the_command_line(cfg):
    args = _parser(options.DPO).parse_args(options.to_argv(cfg, options.DPO))
    assert options.from_args(args, options.DPO) == cfg


def test_online_configs_survive_the_command_line():
    cfg = OnlineConfig(mode="mixed", k=3, temperature=0.7, max_new_tokens=17, p_offline=0.2, regen_every=2, seed=5)
    args = _parser(options.ONLINE).parse_args(options.to_argv(cfg, options.ONLINE))
    assert options.from_args(args, options.ONLINE, seed=5) == cfg


def test_the_cli_trainers_take_every_field_of_their_configs():
    """train-dpo and train-online expose each DPO field (and train-online each online field) under one flag."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, specs in (("train-dpo", [options.DPO]), ("train-online", [options.DPO, options.ONLINE])):
        dests = {a.dest for a in sub.choices[command]._actions}
        for spec in specs:
            assert {f.name for f in spec.fields()} <= dests, command


def test_switches_turn_their_default_around_and_bad_values_are_refused():
    args = _parser(options.DPO).parse_args(["--train-projector", "--freeze-lm", "--lora-r", "0", "--adapter-only"])
    cfg = options.from_args(args, options.DPO)
    assert (cfg.train_projector, cfg.train_lm, cfg.merge) == (True, False, False)
    with pytest.raises(argparse.ArgumentError):
        _parser(options.DPO).parse_args(["--loss", "ppo"])


def test_a_none_that_the_command_line_cannot_write_is_an_error():
    @dataclass
    class Cfg:
        width: int | None = 3

    spec = options.ConfigOptions(Cfg)
    assert options.to_argv(Cfg(width=5), spec) == ["--width", "5"]
    with pytest.raises(ValueError, match="width=None cannot be written"):
        options.to_argv(Cfg(width=None), spec)
    assert [f.name for f in dataclasses.fields(Cfg)] == [f.name for f in spec.fields()]
