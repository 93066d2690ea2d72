"""The shift of an aligned model from its base: changed answers and KL per token on the caption prompts."""

import copy
import math

import pytest
import torch

from mmstudy.training.shift import changed_shares, kl_per_token, shift_metrics


def test_changed_shares_pair_items_per_benchmark():
    base = [{"benchmark": "pope", "split": "random", "question_id": i, "answer": "Yes."} for i in range(4)] + \
        [{"benchmark": "chair", "image_id": "v1", "answer": "A fork."}]
    policy = [dict(s) for s in base[:3]] + [{**base[4], "answer": "A knife."}]
    policy[0]["answer"] = "No."
    out = changed_shares(policy, base)
    assert out["pope/changed_share"] == pytest.approx(1 / 3) and out["pope/paired"] == 3
    assert out["chair/changed_share"] == 1.0 and out["changed_share"] == 0.5
    assert math.isnan(changed_shares([], base)["changed_share"])


def test_kl_is_zero_for_the_base_and_grows_with_a_change(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    records = [{"id": str(i), "image": f"val_{i:06d}.png", "prompt": "Describe the image in detail.",
                "answer": "There is a fork at the top left. There is a knife on the right."} for i in range(5)]
    root = smoke_world / "images"
    assert kl_per_token(model, model, processor, records, root, batch_size=2) == pytest.approx(0, abs=1e-6)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.lm_head.weight.add_(0.05 * torch.randn_like(moved.lm_head.weight))
    small = kl_per_token(moved, model, processor, records, root)
    with torch.no_grad():
        moved.lm_head.weight.add_(0.5 * torch.randn_like(moved.lm_head.weight))
    assert 0 < small < kl_per_token(moved, model, processor, records, root)
    samples = [{"benchmark": "chair", "image_id": r["id"], **r} for r in records]
    out = shift_metrics(model, model, processor, samples, samples, root)
    assert out["kl_per_token"] == pytest.approx(0, abs=1e-6) and out["changed_share"] == 0 and out["kl_prompts"] == 5
