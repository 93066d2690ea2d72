"""The one mapping between command-line options and config dataclasses.

Every field of a config (`DPOTrainConfig`, `OnlineConfig`) is an option whose default is the field's default, so a
setting is declared once, in its dataclass. `add_options` puts a config's options on a parser, `from_args` builds
the config back, and `to_argv` writes the options that reproduce a config: the CLI uses the first two, and the
multi-process launcher (`mmstudy.study.stages.launch_command`) the third, checked by a round trip.

    >>> parser = argparse.ArgumentParser(); add_options(parser, DPO)
    >>> cfg = from_args(parser.parse_args(to_argv(DPOTrainConfig(beta=0.2), DPO)), DPO)   # == DPOTrainConfig(beta=0.2)
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmstudy.training.dpo import DPOTrainConfig
from mmstudy.training.grpo import GRPOConfig
from mmstudy.training.losses import OBJECTIVES
from mmstudy.training.online import MODES, OnlineConfig


@dataclass(frozen=True)
class ConfigOptions:
    """How a config's fields appear on the command line. A field's flag is `--field-name` unless `flags` names
    another; a boolean field whose flag is named there is a switch that sets the opposite of its default
    (`--freeze-lm` sets `train_lm` False); fields in `skip` are not options."""
    cls: type
    flags: dict[str, str] = field(default_factory=dict)
    choices: dict[str, tuple] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    def fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.skip]

    def flag(self, name: str) -> str:
        return self.flags.get(name, "--" + name.replace("_", "-"))


DPO = ConfigOptions(
    DPOTrainConfig,
    flags={"train_projector": "--train-projector", "train_lm": "--freeze-lm", "train_vision": "--train-vision",
           "merge": "--adapter-only", "precompute_ref": "--precompute-ref"},
    choices={"loss": tuple(OBJECTIVES), "on_too_long": ("error", "skip")},
    helps={"gamma": "Avg-DPO weight of 'rejected' against 'rejected_2'", "lora_r": "0: full fine-tuning",
           "merge": "save the LoRA adapter instead of merged weights",
           "precompute_ref": "reference log-probs once per dataset (offline training only)",
           "batch_size": "pairs per optimizer step (over all processes)",
           "max_length": "default: the language model's context",
           "checkpoint_every": "optimizer steps; 0: only at the end"},
)
GRPO = ConfigOptions(
    GRPOConfig, flags={"merge": "--adapter-only", "scale_advantages": "--center-only"},
    helps={"k": "samples per prompt (the group)", "batch_size": "prompts per sampling round",
           "steps": "sampling rounds", "updates": "optimizer steps per round (the clip binds from 2)",
           "beta": "weight of the k3 KL to the reference", "merge": "save the LoRA adapter instead of merged weights",
           "scale_advantages": "centre the group's rewards without dividing by their std",
           "hallucination_weight": "a false claim costs this many correct mentions"},
)
ONLINE = ConfigOptions(
    OnlineConfig, skip=("seed",), choices={"mode": tuple(MODES)},
    helps={"k": "samples per prompt", "p_offline": "mixed: chance of the offline pair per example",
           "regen_every": "online BDHS: regenerate rejected this often (steps)"},
)


def _value_type(f: dataclasses.Field):
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation.split("|")[0].strip() == name:
            return kind
    raise TypeError(f"{f.name}: no command-line type for annotation {annotation!r}")


def add_options(parser: argparse.ArgumentParser, spec: ConfigOptions) -> None:
    """One option per field of `spec.cls`, defaulting to the field's default."""
    for f in spec.fields():
        kind, default, flag = _value_type(f), f.default, spec.flag(f.name)
        help_ = spec.helps.get(f.name)
        if kind is bool and f.name in spec.flags:
            parser.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=help_)
        elif kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=spec.choices.get(f.name),
                                help=help_)


def from_args(args: argparse.Namespace, spec: ConfigOptions, **extra: Any):
    """The config `args` describe (`extra` sets the skipped fields)."""
    return spec.cls(**{f.name: getattr(args, f.name) for f in spec.fields()}, **extra)


def to_argv(cfg, spec: ConfigOptions) -> list[str]:
    """The options that reproduce `cfg`: every field written out, so a launched command line shows the whole
    config (a switch only when it is on, a None only when it is the default)."""
    argv: list[str] = []
    for f in spec.fields():
        value, flag = getattr(cfg, f.name), spec.flag(f.name)
        if isinstance(value, bool) and f.name in spec.flags:
            argv += [flag] if value != f.default else []
        elif isinstance(value, bool):
            argv.append(("--" if value else "--no-") + flag[2:])
        elif value is None and f.default is None:
            continue
        elif value is None:
            raise ValueError(f"{f.name}=None cannot be written as {flag} (its default is {f.default!r})")
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
