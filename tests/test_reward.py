"""The reward model: Bradley-Terry loss, scores against a plain forward, what trains, learning world pairs, exact
resume, accuracy per source with intervals, save / load, and the train-rm / eval-rm commands.

Run: python -m pytest -q tests/test_reward.py
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.cli import main
from mmstudy.editions.povid import povid_like_pairs
from mmstudy.models.generation import chat_prompt
from mmstudy.training.reward import (
    RewardModel,
    RewardTrainConfig,
    bradley_terry_loss,
    init_head,
    load_reward_model,
    lr_schedule,
    pairwise_accuracy,
    prepare_reward_model,
    rm_accuracy,
    save_reward_model,
    score_pairs,
    train_reward_model,
)

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def pairs(smoke_world):
    return povid_like_pairs(smoke_world, n=8, seed=0)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_bradley_terry_loss_hand_computed():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, -1.0])
    expected = [math.log(1 + math.exp(-1)), math.log(2), math.log(1 + math.exp(-3))]
    assert bradley_terry_loss(chosen, rejected).tolist() == pytest.approx(expected, abs=1e-6)
    # centering adds eta (r+ + r-)^2: 1, 0 and 1 here
    assert bradley_terry_loss(chosen, rejected, center=0.5).tolist() == pytest.approx(
        [expected[0] + 0.5, expected[1], expected[2] + 0.5], abs=1e-6)


def test_pairwise_accuracy_per_source_with_intervals():
    result = pairwise_accuracy([1, 2, 3, 0, 5], [0, 3, 1, 1, 5], ["a", "a", "b", "b", "b"], n_boot=200)
    assert result["per_source"]["a"]["accuracy"] == 0.5 and result["per_source"]["a"]["n"] == 2
    assert result["per_source"]["b"]["accuracy"] == pytest.approx(1.5 / 3)       # right, wrong, tie (1/2)
    assert result["per_source"]["b"]["margin"] == pytest.approx(1 / 3)
    assert result["all"]["accuracy"] == 0.5 and result["all"]["n"] == 5
    for r in [result["all"], *result["per_source"].values()]:
        assert 0 <= r["low"] <= r["accuracy"] <= r["high"] <= 1
    perfect = pairwise_accuracy([1, 1, 1], [0, 0, 0], ["x"] * 3)["all"]
    assert (perfect["accuracy"], perfect["low"], perfect["high"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        pairwise_accuracy([1, 2], [0], ["a", "a"])


def test_lr_schedules():
    constant, linear = lr_schedule("constant", 10, 2), lr_schedule("linear", 10, 2)
    assert [constant(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0] and constant(9) == 1.0
    assert [linear(s) for s in (0, 1, 2, 3, 9)] == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 1 / 8])
    with pytest.raises(ValueError):
        lr_schedule("cosine", 10, 0)


def test_config_validation():
    for bad in ({"schedule": "cosine"}, {"on_too_long": "cut"}, {"lr": 0}, {"center": -1}, {"lora_r": -1},
                {"warmup_ratio": 1.0}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            RewardTrainConfig(**bad)


def test_scores_equal_a_plain_forward_of_backbone_and_head(smoke_model, pairs, smoke_world):
    """Prompt once, both responses from its cache, head on the closing EOS: the same as a full forward of each
    prompt + response and the head on its last position."""
    from mmstudy.training.dpo import encode_pairs

    model, processor, _ = smoke_model
    rm = RewardModel(model, seed=3).eval()
    chosen, rejected = score_pairs(rm, processor, pairs[:3], smoke_world / "images", batch_size=3)
    encoded, _ = encode_pairs(processor, pairs[:3], smoke_world / "images", 10**6, "error", False)
    plain = []
    with torch.no_grad():
        for k in range(2):
            for pair, enc in zip(pairs[:3], encoded):
                assert enc.responses[k][-1] == processor.tokenizer.eos_token_id
                image = io.load_image(smoke_world / "images" / pair["image"])
                inputs = processor(images=[image], text=[chat_prompt(processor, pair["prompt"])], return_tensors="pt")
                ids = torch.cat([inputs["input_ids"], torch.tensor([enc.responses[k]])], dim=1)
                hidden = model.model(input_ids=ids, pixel_values=inputs["pixel_values"]).last_hidden_state
                plain.append(rm.head(hidden[0, -1]).item())
    assert np.concatenate([chosen, rejected]).tolist() == pytest.approx(plain, abs=1e-4)
    assert len(set(np.round(plain, 4))) > 1, "the scores must depend on the input"


@pytest.mark.parametrize("layout", ["_real_llava15", "_real_llava_next"])
def test_scores_equal_a_plain_forward_on_llava_15_and_next_layouts(layout):
    """Tiny random checkpoints in the layouts of LLaVA 1.5 (untied head, layer -2) and LLaVA-NeXT (AnyRes: a
    varying number of image tokens) score as a plain forward does."""
    from PIL import Image
    from test_model import CORPUS, _real_llava15, _real_llava_next

    from mmstudy.models.llava import build_tokenizer
    from mmstudy.training.dpo import collate
    from mmstudy.training.reward import encode_responses

    tok = build_tokenizer(CORPUS)
    torch.manual_seed(0)
    model, processor = {"_real_llava15": _real_llava15, "_real_llava_next": _real_llava_next}[layout](tok)
    rm = RewardModel(model.eval(), seed=0).eval()
    images = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    prompts = ["describe the image .", "is there a fork ?"]
    responses = [["yes , there is a fork .", "no"], ["a red circle .", "no !"]]
    encoded = encode_responses(processor, images, prompts, responses, ["a", "b"])
    with torch.no_grad():
        got = rm(**collate(encoded, tok.pad_token_id)).tolist()
        plain = []
        for k in range(2):
            for image, prompt, enc in zip(images, prompts, encoded):
                inputs = processor(images=[image], text=[chat_prompt(processor, prompt)], return_tensors="pt")
                ids = torch.cat([inputs["input_ids"], torch.tensor([enc.responses[k]])], dim=1)
                sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
                hidden = model.model(input_ids=ids, pixel_values=inputs["pixel_values"], **sizes).last_hidden_state
                plain.append(rm.head(hidden[0, -1]).item())
    assert got == pytest.approx(plain, abs=1e-5)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_one_step_changes_the_head_and_the_trained_weights_only(base_dir, pairs, smoke_world, tmp_path, lora_r):
    cfg = RewardTrainConfig(lora_r=lora_r, lora_alpha=8, lr=1e-3, batch_size=8, warmup_ratio=0.0, checkpoint_every=0)
    summary = train_reward_model(base_dir, pairs, cfg, tmp_path / "run", smoke_world / "images", progress=False)
    assert summary["steps"] == 1
    before, after = _weights(base_dir), _weights(tmp_path / "run" / "rm" / "backbone")
    assert set(before) == set(after)
    moved = {n: not torch.equal(before[n], after[n]) for n in before}
    for name, changed in moved.items():
        if "language_model" not in name:                 # vision tower and projector stay frozen
            assert not changed, name
        elif lora_r == 0:                                 # full fine-tuning: every LM tensor moves
            assert changed, name
        else:                                             # LoRA merged: exactly the adapted projections move
            assert changed == name.endswith(tuple(f"{a}.weight" for a in ADAPTED)), name
    head = load_file(str(tmp_path / "run" / "rm" / "head.safetensors"))
    initial = init_head(head["weight"].shape[1], cfg.seed)
    assert not torch.equal(head["weight"], initial.weight.detach())
    assert head["bias"].item() == 0.0     # Bradley-Terry is blind to a shift of r: without centering no gradient


def test_learns_its_training_pairs(base_dir, pairs, smoke_world, tmp_path):
    """A few steps on world pairs (yes/no flips need the image): clearly above chance on the training pairs."""
    cfg = RewardTrainConfig(lora_r=0, lr=3e-3, epochs=12, batch_size=8, warmup_ratio=0.0, checkpoint_every=0)
    train_reward_model(base_dir, pairs, cfg, tmp_path / "run", smoke_world / "images", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=0.05)        # a small head: r+ ~ r- at the start
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    rm, processor = load_reward_model(tmp_path / "run" / "rm")
    result = rm_accuracy(rm, processor, pairs, smoke_world / "images")
    # 6 of 8 at least: one pair ends within 0.05 of a tie (rewards span +-10), so float sums taken in another order
    # (the response rows' length groups) can flip it
    assert result["all"]["accuracy"] >= 0.75 and result["all"]["margin"] > 0
    assert set(result["per_source"]) == {"world_povid"}


def test_interrupted_run_resumes_to_the_same_model(base_dir, pairs, smoke_world, tmp_path):
    cfg = RewardTrainConfig(lora_r=4, lora_alpha=8, lr=1e-3, epochs=2, batch_size=4, checkpoint_every=0, seed=1)
    images = smoke_world / "images"
    assert train_reward_model(base_dir, pairs, cfg, tmp_path / "full", images, progress=False)["steps"] == 4
    stopped = train_reward_model(base_dir, pairs, cfg, tmp_path / "part", images, progress=False, stop_after_steps=2)
    assert stopped == {"stopped_at": 2, "total_steps": 4}
    metrics = tmp_path / "part" / "metrics.jsonl"
    with metrics.open("a") as f:                  # a crash after step 3, before any checkpoint of it
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    train_reward_model(base_dir, pairs, cfg, tmp_path / "part", images, progress=False)
    for name in ("backbone/model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "full" / "rm" / name)), load_file(str(tmp_path / "part" / "rm" / name))
        assert all(torch.equal(a[n], b[n]) for n in a), name
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    part = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in part] == [1, 2, 3, 4]
    assert [r["loss"] for r in part] == [r["loss"] for r in full]
    assert {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "lr"} <= set(part[0])
    train_reward_model(base_dir, pairs, cfg, tmp_path / "again", images, progress=False, stop_after_steps=1)
    with pytest.raises(ValueError, match="another training config"):
        train_reward_model(base_dir, pairs, RewardTrainConfig(lora_r=4, lora_alpha=8, epochs=3, batch_size=4),
                           tmp_path / "again", images, progress=False)
    with pytest.raises(ValueError, match="other training data than this one"):
        train_reward_model(base_dir, pairs[::-1], cfg, tmp_path / "again", images, progress=False)
    other = tmp_path / "other_model"                                     # the same settings on another model
    shutil.copytree(base_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("{", '{"note": "edited",', 1))
    with pytest.raises(ValueError, match="with another model than this one"):
        train_reward_model(other, pairs, cfg, tmp_path / "again", images, progress=False)


def test_save_load_round_trip_and_errors(smoke_model, pairs, smoke_world, tmp_path):
    import copy

    model, processor, _ = smoke_model
    rm = prepare_reward_model(copy.deepcopy(model), RewardTrainConfig(lora_r=4, lora_alpha=8, seed=2))
    with torch.no_grad():                             # adapters that matter, so that merging is exercised
        for name, p in rm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    rm.eval()
    before = score_pairs(rm, processor, pairs, smoke_world / "images")
    path = save_reward_model(rm, processor, tmp_path / "rm")
    assert {p.name for p in path.iterdir()} == {"backbone", "head.safetensors", "reward_config.json"}
    assert hasattr(rm.backbone, "disable_adapter"), "saving merges a copy, not the model itself"
    loaded, loaded_processor = load_reward_model(path)
    after = score_pairs(loaded, loaded_processor, pairs, smoke_world / "images")
    assert np.allclose(before[0], after[0], atol=1e-4) and np.allclose(before[1], after[1], atol=1e-4)
    assert not any(p.requires_grad for p in loaded.parameters())
    save_reward_model(loaded, loaded_processor, path)          # replaces an existing directory
    assert not list(tmp_path.glob(".rm.*"))
    with pytest.raises(io.DataError, match="not a reward-model directory"):
        load_reward_model(path / "backbone")
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}, str(path / "head.safetensors"))
    with pytest.raises(io.DataError, match="head.safetensors: expected a head"):
        load_reward_model(path)


def test_train_rm_and_eval_rm_commands(base_dir, smoke_world, tmp_path, capsys):
    prefs, held_out = tmp_path / "prefs.jsonl", tmp_path / "held_out.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=8, seed=1))
    other = povid_like_pairs(smoke_world, n=6, seed=2, split="val")
    io.write_jsonl(held_out, [dict(p, source="world_povid" if i % 2 else "other") for i, p in enumerate(other)])
    out = tmp_path / "run"
    images = str(smoke_world / "images")
    assert main(["-q", "train-rm", "--model", str(base_dir), "--prefs", str(prefs), "--image-root", images,
                 "--out", str(out), "--eval-prefs", str(held_out), "--lora-r", "4", "--lora-alpha", "8",
                 "--lr", "1e-3", "--epochs", "1", "--batch-size", "8"]) == 0
    assert (out / "rm" / "backbone" / "config.json").is_file() and (out / "manifest.json").is_file()
    accuracy = io.read_json(out / "accuracy.json")["accuracy"][str(held_out)]
    assert set(accuracy["per_source"]) == {"other", "world_povid"} and accuracy["all"]["n"] == 6
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    capsys.readouterr()
    assert main(["-q", "eval-rm", "--rm", str(out / "rm"), "--prefs", str(held_out), "--image-root", images,
                 "--out", str(tmp_path / "acc.json")]) == 0
    table = capsys.readouterr().out
    assert "| other | 3 |" in table and "| world_povid | 3 |" in table and "| all | 6 |" in table
    assert io.read_json(tmp_path / "acc.json")["accuracy"] == {str(held_out): accuracy}
    assert main(["-q", "eval-rm", "--rm", str(base_dir), "--prefs", str(held_out), "--image-root", images]) == 2
