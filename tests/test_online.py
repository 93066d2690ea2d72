"""Online alignment: sample ranking, the world's scenes for the oracle, Online-DPO / Mixed-DPO / Online-BDHS pairs,
judge failures, exact resume, and the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mmstudy import io
from mmstudy.cli import main
from mmstudy.data.bdhs import BDHSConfig
from mmstudy.editions.povid import fresh_records, povid_like_pairs
from mmstudy.judges.base import JudgeReply
from mmstudy.judges.oracle import check_answer
from mmstudy.judges.registry import make_judge
from mmstudy.training.dpo import DPOTrainConfig, train_dpo
from mmstudy.training.online import OnlineConfig, OnlinePairs, rank_samples, world_scenes


class WordOverlap:
    """A stand-in sentence embedder (Jaccard overlap of words), so that BDHS runs without loading MiniLM."""

    def similarity(self, a, b):
        import numpy as np

        sets = [(set(x.lower().split()), set(y.lower().split())) for x, y in zip(a, b)]
        return np.array([len(x & y) / max(1, len(x | y)) for x, y in sets])


class FailingJudge:
    name = "failing"

    def complete(self, requests):
        return [JudgeReply(None, error="down") for _ in requests]


@pytest.fixture(scope="module")
def pairs(smoke_world):
    return povid_like_pairs(smoke_world, n=8, seed=0, partner_share=0.0)


def test_rank_samples():
    assert rank_samples({(0, 1): 1}, 2) == (1, 0)
    assert rank_samples({(0, 1): 0, (0, 2): 1, (1, 2): 1}, 3) == (2, 1)     # wins: 0:1, 1:0, 2:2
    assert rank_samples({(0, 1): 0, (0, 2): 1, (1, 2): 0}, 3) == (0, 2)     # a cycle: one win each, index breaks it
    assert rank_samples({(0, 1): None}, 2) is None


def test_online_config_validation():
    for bad in ({"mode": "ppo"}, {"k": 1}, {"p_offline": 1.5}, {"temperature": 0}, {"regen_every": 0}):
        with pytest.raises(ValueError):
            OnlineConfig(**bad)
    with pytest.raises(ValueError, match="needs a judge"):
        OnlinePairs(OnlineConfig(mode="online_dpo"))
    with pytest.raises(ValueError, match="needs the world's scenes"):
        OnlinePairs(OnlineConfig(), judge=make_judge("oracle"))


def test_world_scenes_knows_val_and_fresh_images(smoke_world, tmp_path):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(smoke_world, world)
    records, scenes = fresh_records(world, 3, seed=4)
    lookup = world_scenes(world)
    for name, scene in scenes.items():
        assert lookup(name).to_record() == scene.to_record()
    val = json.loads((world / "scenes.jsonl").read_text().splitlines()[-1])
    assert lookup(f"{val['image_id']}.png").to_record()["objects"] == val["objects"]
    assert lookup("coco_000001.jpg") is None


def test_online_pairs_follow_the_oracle(smoke_model, smoke_world, pairs):
    model, processor, _ = smoke_model
    scenes = world_scenes(smoke_world)
    online = OnlinePairs(OnlineConfig(mode="online_dpo", k=3, max_new_tokens=24, seed=1), judge=make_judge("oracle"),
                         scenes=scenes, image_root=smoke_world / "images")
    made, stats = online.make(0, pairs, model.eval(), processor)
    assert made and stats["online/pairs"] == len(made)
    assert stats["online/pairs"] + stats.get("online/identical", 0) == len(pairs)
    assert stats["online/agree"] == stats["online/judged"] > 0       # the error-free oracle agrees with the world
    gt = {p["id"]: p["chosen"] for p in pairs}
    for p in made:
        chosen, rejected = (check_answer(p[k], scenes(p["image"]), gt[p["id"]]) for k in ("chosen", "rejected"))
        assert (len(chosen.hallucinations), -chosen.coverage) <= (len(rejected.hallucinations), -rejected.coverage)
    again, _ = online.make(0, pairs, model, processor)
    assert again == made                                                  # seeded by (seed, step, ids)
    other, _ = online.make(1, pairs, model, processor)
    assert other != made


def test_mixed_draws_offline_pairs_with_probability_p(smoke_model, smoke_world, pairs):
    model, processor, _ = smoke_model
    kwargs = {"judge": make_judge("oracle"), "scenes": world_scenes(smoke_world), "image_root": smoke_world / "images"}
    offline, stats = OnlinePairs(OnlineConfig(mode="mixed", p_offline=1.0, max_new_tokens=8), **kwargs).make(
        0, pairs, model, processor)
    assert offline == list(pairs) and stats["online/offline_pairs"] == len(pairs)
    half, stats = OnlinePairs(OnlineConfig(mode="mixed", p_offline=0.5, max_new_tokens=8), **kwargs).make(
        0, pairs, model, processor)
    assert 0 < stats["online/offline_pairs"] < len(pairs)
    assert [p for p in half if p["source"] != "online"] == [p for p in pairs if p in half]


def test_judge_failures_give_no_pairs_and_training_goes_on(base_dir, smoke_world, pairs, tmp_path):
    online = OnlinePairs(OnlineConfig(mode="online_dpo", max_new_tokens=8), judge=FailingJudge(),
                         image_root=smoke_world / "images")
    summary = train_dpo(base_dir, pairs, DPOTrainConfig(lora_r=4, epochs=1, batch_size=4), tmp_path / "run",
                        smoke_world / "images", progress=False, online=online)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["pairs"] for r in lines] == [0, 0]
    failures = summary["online"]["online/judge_failures"] + summary["online"].get("online/identical", 0)
    assert failures == len(pairs)
    before = load_file(str(base_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.equal(before[n], after[n]) for n in before)        # nothing to learn from: weights unchanged


@pytest.mark.parametrize("mode", ["online_dpo", "online_bdhs"])
def test_online_run_resumes_to_the_same_weights(base_dir, smoke_world, pairs, tmp_path, mode):
    cfg = DPOTrainConfig(lora_r=4, lora_alpha=8, epochs=2, batch_size=4, lr=1e-3, checkpoint_every=1, seed=2)

    def source():
        return OnlinePairs(OnlineConfig(mode=mode, max_new_tokens=12, regen_every=3, seed=2),
                           judge=make_judge("oracle:0.2", seed=2), scenes=world_scenes(smoke_world),
                           bdhs_cfg=BDHSConfig(iterations=2, max_sentence_tokens=12, seed=2), embedder=WordOverlap(),
                           image_root=smoke_world / "images")

    images = smoke_world / "images"
    full = train_dpo(base_dir, pairs, cfg, tmp_path / "full", images, progress=False, online=source())
    assert full["steps"] == 4
    train_dpo(base_dir, pairs, cfg, tmp_path / "part", images, progress=False, online=source(), stop_after_steps=3)
    train_dpo(base_dir, pairs, cfg, tmp_path / "part", images, progress=False, online=source())
    a, b = (load_file(str(tmp_path / run / "model" / "model.safetensors")) for run in ("full", "part"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    lines = {run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
             for run in ("full", "part")}
    assert [r["loss"] for r in lines["full"]] == [r["loss"] for r in lines["part"]]
    train_dpo(base_dir, pairs, cfg, tmp_path / "stopped", images, progress=False, online=source(), stop_after_steps=1)
    other_judge = source()
    other_judge.judge = make_judge("oracle:0.3", seed=2)
    other_bdhs = source()
    other_bdhs.bdhs_cfg = BDHSConfig(iterations=3, max_sentence_tokens=12, seed=2)
    for changed in (other_judge, other_bdhs):           # the same training config, another source of pairs
        with pytest.raises(ValueError, match="another online config than this one"):
            train_dpo(base_dir, pairs, cfg, tmp_path / "stopped", images, progress=False, online=changed)
    with pytest.raises(ValueError, match="with other training data and other images than this one"):
        train_dpo(base_dir, pairs[1:], cfg, tmp_path / "stopped", images, progress=False, online=source())


def test_online_bdhs_avg_trains_on_two_rejected(base_dir, smoke_world, pairs, tmp_path):
    online = OnlinePairs(OnlineConfig(mode="online_bdhs_avg"), bdhs_cfg=BDHSConfig(iterations=1, seed=0),
                         embedder=WordOverlap(), image_root=smoke_world / "images")
    with pytest.raises(ValueError, match="avg_dpo"):
        train_dpo(base_dir, pairs, DPOTrainConfig(lora_r=4, epochs=1), tmp_path / "a", smoke_world / "images",
                  progress=False, online=online)
    summary = train_dpo(base_dir, pairs, DPOTrainConfig(loss="avg_dpo", lora_r=4, epochs=1, batch_size=8),
                        tmp_path / "b", smoke_world / "images", progress=False, online=online)
    assert summary["steps"] == 1 and summary["online"]["online/pairs"] == len(pairs)


def test_train_online_cli(base_dir, smoke_world, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    io.write_jsonl(prefs, povid_like_pairs(smoke_world, n=8, seed=1, partner_share=0.0))
    out = tmp_path / "run"
    assert main(["-q", "train-online", "--model", str(base_dir), "--prompts", str(prefs), "--image-root",
                 str(smoke_world / "images"), "--world", str(smoke_world), "--judge", "oracle:0.1", "--mode", "mixed",
                 "--out", str(out), "--lora-r", "4", "--lora-alpha", "8", "--epochs", "1", "--batch-size", "4",
                 "--max-new-tokens", "12"]) == 0
    summary = io.read_json(out / "train_summary.json")
    assert summary["online_config"]["mode"] == "mixed" and "online/agreement" in summary["online"]
    assert (out / "model" / "config.json").is_file() and (out / "manifest.json").is_file()
