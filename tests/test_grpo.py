"""GRPO with the world's exact rewards: the reward against hand-counted answers, a run that samples, rewards and
steps, exact resume, and refusals.   Run: pytest tests/test_grpo.py"""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.judges.oracle import facts
from mmstudy.training.grpo import GRPOConfig, train_grpo, world_reward
from mmstudy.world.scene import Scene, SceneObject

SCENE = Scene("val_00001", "val", "kitchen", [SceneObject("cup", 0, "small", [0, 0, 4, 4]),
                                              SceneObject("bowl", 4, "large", [8, 8, 8, 8]),
                                              SceneObject("cup", 8, "small", [16, 16, 4, 4])])


@pytest.mark.parametrize("answer, reference, expected", [
    # descriptions: (objects of the image named - weight x false claims) / objects in the image (2: cup, bowl)
    ("There is a cup and a bowl.", "A kitchen with two cups and a bowl.",
     {"reward": 1.0, "kind": "description", "correct": 2, "false": 0}),
    ("There is a cup and a fork.", "A kitchen with two cups and a bowl.",
     {"reward": 0.0, "kind": "description", "correct": 1, "false": 1}),
    ("There are three cups.", "A kitchen with two cups and a bowl.",
     {"reward": 0.0, "kind": "description", "correct": 1, "false": 1}),
    ("A knife and a fork on a street.", "A kitchen with two cups and a bowl.",
     {"reward": -1.5, "kind": "description", "correct": 0, "false": 3}),
    # yes/no: right or wrong, whatever else the answer says
    ("Yes, there is a bowl.", "Yes.", {"reward": 1.0, "kind": "yes/no", "correct": 1, "false": 0}),
    ("No.", "Yes, there is a bowl.", {"reward": 0.0, "kind": "yes/no", "correct": 0, "false": 0}),
])
def test_world_reward_counts_as_by_hand(answer, reference, expected):
    assert world_reward(answer, SCENE, reference) == expected


def test_world_reward_weighs_false_claims():
    assert world_reward("There is a cup and a fork.", SCENE, "Cups.", hallucination_weight=2.0)["reward"] == -0.5


def test_config_validation():
    for bad in ({"k": 1}, {"lora_r": 0}, {"clip": 0}, {"updates": 0}, {"beta": -1}, {"warmup_ratio": 1}):
        with pytest.raises(ValueError):
            GRPOConfig(**bad)


@pytest.fixture(scope="module")
def prompts(smoke_world):
    """Description prompts (their rewards vary between samples even from the smoke model; its yes/no answers are
    all wrong alike, which teaches nothing)."""
    pairs = povid_like_pairs(smoke_world, n=40, seed=0, progress=False)
    return [p for p in pairs if not any(kind == "pol" for kind, _ in facts(p["chosen"]))][:4]


def _run(base_dir, prompts, smoke_world, out, cfg, **kw):
    return train_grpo(base_dir, prompts, cfg, out, smoke_world, progress=False, **kw)


CFG = GRPOConfig(k=3, batch_size=2, steps=3, updates=2, max_new_tokens=12, lora_r=4, lora_alpha=8, lr=1e-3,
                 checkpoint_every=1, seed=3)


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def _logged(run, name="metrics.jsonl"):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in io.read_jsonl(run / name)]


def test_a_run_samples_rewards_and_steps_and_resumes_exactly(base_dir, prompts, smoke_world, tmp_path):
    full = _run(base_dir, prompts, smoke_world, tmp_path / "full", CFG)
    assert (full["steps"], full["optimizer_steps"]) == (3, 6)
    metrics = _logged(tmp_path / "full")
    assert [(m["step"], m["round"]) for m in metrics] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    assert {"loss", "kl", "clipped_share", "rewards/mean", "oracle/correct", "oracle/false", "grad_norm",
            "response/length"} <= set(metrics[0])
    assert metrics[0]["kl"] == 0.0                       # before the first update, policy = reference
    samples = _logged(tmp_path / "full", "samples.jsonl")
    assert len(samples) == 3 * 2 * 3 and {"reward", "kind", "correct", "false", "advantage"} <= set(samples[0])
    before = load_file(str(base_dir / "model.safetensors"))
    after = _weights(tmp_path / "full")
    assert any(not torch.equal(before[n], after[n]) for n in before if n in after)     # it learned something

    stopped = _run(base_dir, prompts, smoke_world, tmp_path / "part", CFG, stop_after_steps=1)
    assert stopped == {"stopped_at": 1, "total_steps": 3}
    io.append_jsonl(tmp_path / "part" / "samples.jsonl", samples[6:12])   # a kill after round 2's samples were
    _run(base_dir, prompts, smoke_world, tmp_path / "part", CFG)          # logged: cut back to round 1
    assert _logged(tmp_path / "part", "samples.jsonl") == samples
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _logged(tmp_path / "part") == metrics
    with pytest.raises(ValueError, match="another training config"):
        _run(base_dir, prompts, smoke_world, tmp_path / "part", dataclasses.replace(CFG, beta=0.5, steps=4))
    with pytest.raises(ValueError, match="other prompts than this one"):
        _run(base_dir, prompts[::-1], smoke_world, tmp_path / "part", CFG)
    other = tmp_path / "other_world"                   # the same scenes and images, world.json edited
    other.mkdir()
    (other / "images").symlink_to(smoke_world / "images")
    for name in ("scenes.jsonl", "world.json"):
        (other / name).write_bytes((smoke_world / name).read_bytes())
    info = io.read_json(other / "world.json")
    io.write_json(other / "world.json", dict(info, note="edited"))
    with pytest.raises(ValueError, match="another world than this one"):
        _run(base_dir, prompts, other, tmp_path / "part", CFG)


def test_a_prompt_whose_image_is_not_a_scene_is_refused(base_dir, prompts, smoke_world, tmp_path):
    with pytest.raises(io.DataError, match=r"record 2 \(id=.*\): image 'elsewhere.png' is not a scene of the world"):
        _run(base_dir, [prompts[0], dict(prompts[1], image="elsewhere.png")], smoke_world, tmp_path / "x", CFG)


def test_the_command_line_trains_with_every_field_of_the_config(base_dir, prompts, smoke_world, tmp_path):
    from mmstudy.cli import build_parser, main
    from mmstudy.study import options

    io.write_jsonl(tmp_path / "prompts.jsonl", prompts)
    argv = ["train-grpo", "--model", str(base_dir), "--prompts", str(tmp_path / "prompts.jsonl"), "--world",
            str(smoke_world), "--out", str(tmp_path / "run"), *options.to_argv(dataclasses.replace(CFG, steps=1),
                                                                               options.GRPO)]
    assert options.from_args(build_parser().parse_args(argv), options.GRPO) == dataclasses.replace(CFG, steps=1)
    assert main(["-q", *argv]) == 0
    assert (tmp_path / "run" / "model").is_dir() and (tmp_path / "run" / "manifest.json").is_file()
