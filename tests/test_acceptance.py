"""The foundation's quality bar and BDHS's, on the default profile, end to end through the CLI (about 20 minutes).

Run: python -m pytest -q -m slow tests/test_acceptance.py

A base model that grounds (recall, POPE), yet hallucinates (CHAIR_i in range) in a prior-driven way (POPE
adversarial below random, hallucinations co-occur with present objects), and whose masked descriptions stay fluent.
"""

import json

import pytest

from mmstudy.cli import main

pytestmark = pytest.mark.slow


def test_default_profile_meets_the_acceptance_bar(tmp_path):
    world, model, results = tmp_path / "world", tmp_path / "model", tmp_path / "run" / "results.json"
    assert main(["-q", "world", "--out", str(world), "--profile", "default", "--seed", "0"]) == 0
    assert main(["-q", "train-base", "--world", str(world), "--out", str(model), "--profile", "default"]) == 0
    assert main(["-q", "eval", "--model", str(model), "--world", str(world), "--benchmarks",
                 "pope,chair,masked,headroom",
                 "--out", str(results)]) == 0
    m = json.loads(results.read_text())["metrics"]
    assert m["chair/n_captions"] >= 1000 and m["pope/random/n"] == 3000
    assert m["chair_fixed/recall"] >= 0.70
    assert 0.05 <= m["chair_fixed/chair_i"] <= 0.35
    assert m["pope/random/accuracy"] >= 0.85
    assert m["pope/adversarial/accuracy"] <= m["pope/random/accuracy"] - 0.03
    assert m["chair_fixed/hallucinated_cooccurring_share"] > 2 * m["chair_fixed/absent_cooccurring_share_chance"]
    assert m["masked/well_formed_sentence_share"] >= 0.9
    assert m["masked/context_consistent_mention_share"] >= 0.8
    assert m["masked/mentions_per_description"] >= 1.0
    # the hallucinations are the language model's: its own image tokens hold the truth (docs/sensitivity.md)
    assert m["headroom/recoverable_pope"] >= 0.6 and m["headroom/recoverable_chair"] >= 0.6
    _bdhs_acceptance(world, model, tmp_path)


def _bdhs_acceptance(world, model, tmp_path):
    """BDHS on the same base model (issue 4): guided rejections are mostly faithful without masking, hallucinate
    far more often with 99 % or 100 % of the image hidden, in the prior's direction, and keep y+'s style."""
    stats = {}
    for rho in ("0.0", "0.99", "1.0"):
        out = tmp_path / f"bdhs_{rho}.jsonl"
        assert main(["-q", "bdhs", "--model", str(model), "--sft", str(world / "llava_instruct_train.json"),
                     "--image-root", str(world / "images"), "--n", "300", "--rho", rho, "--iterations", "1",
                     "--out", str(out), "--world", str(world)]) == 0
        stats[rho] = json.loads(out.with_name(out.stem + ".stats.json").read_text())["stats"]
    faithful, masked, blind = (stats[r]["world"] for r in ("0.0", "0.99", "1.0"))
    assert faithful["hallucinated_share"] <= 0.35
    for w in (masked, blind):
        assert w["hallucinated_share"] >= 1.6 * faithful["hallucinated_share"]
        assert w["chair_i"] >= 1.6 * faithful["chair_i"]
        assert w["hallucinated_cooccurring_share"] > 3 * w["absent_cooccurring_share_chance"]
    for s in stats.values():
        assert s["length_ratio_mean"] == pytest.approx(1.0, abs=0.15) and s["similarity_mean"] >= 0.85
