"""Benchmark runs on a model: namespaced metrics, samples that recompute them, clear errors on bad input.

Run: pytest tests/test_evaluate.py
"""

import shutil

import pytest

from mmstudy import io
from mmstudy.benchmarks import pope
from mmstudy.evaluation.evaluate import evaluate
from mmstudy.world.cooccurrence import cooccurrence_shares


@pytest.fixture(scope="module")
def evaluated(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    return evaluate(model, processor, smoke_world, ("pope", "chair", "masked"), limit=12, progress=False)


def test_metrics_are_namespaced_and_complete(evaluated):
    metrics, samples = evaluated
    for split in ("random", "popular", "adversarial", "macro"):
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert 0.0 <= metrics[f"pope/{split}/{key}"] <= 1.0
    for prefix in ("chair", "chair_fixed"):
        for key in ("chair_s", "chair_i", "recall", "hallucinated_cooccurring_share"):
            assert 0.0 <= metrics[f"{prefix}/{key}"] <= 1.0
    for key in ("pope/random/accuracy", "pope/adversarial/accuracy", "chair/chair_i", "chair_fixed/recall"):
        assert metrics[f"{key}_ci95_low"] <= metrics[key] <= metrics[f"{key}_ci95_high"], key
    assert metrics["masked/rho_th"] == 0.99 and metrics["masked/n"] == 12
    assert [s["benchmark"] for s in samples].count("pope") == 3 * 12
    assert [s["benchmark"] for s in samples].count("chair") == 12


def test_pope_metrics_recompute_from_samples(evaluated):
    metrics, samples = evaluated
    for split in ("random", "adversarial"):
        rows = [s for s in samples if s["benchmark"] == "pope" and s["split"] == split]
        again = pope.pope_metrics([pope.parse_yes_no(s["answer"]) for s in rows], [s["label"] for s in rows])
        assert again["accuracy"] == metrics[f"pope/{split}/accuracy"]
        assert again["yes_ratio"] == metrics[f"pope/{split}/yes_ratio"]


def test_cooccurrence_share_by_hand():
    p_given = {"fork": {"knife": 0.8, "cup": 0.1}, "knife": {"fork": 0.7}, "cup": {"fork": 0.1}, "car": {}}
    samples = [
        {"hallucinated": [("knife", "knife"), ("car", "car")], "gt": ["fork"]},   # knife linked to fork, car not
        {"hallucinated": [("fork", "fork")], "gt": ["cup"]},                      # P(fork | cup) = 0.1: not linked
    ]
    shares = cooccurrence_shares(samples, p_given, threshold=0.3)
    assert shares["hallucinated_cooccurring_share"] == pytest.approx(1 / 3)
    # absent classes: image 1 -> car, cup, knife (knife linked); image 2 -> car, fork, knife (none linked)
    assert shares["absent_cooccurring_share_chance"] == pytest.approx(1 / 6)


def test_unknown_benchmark_is_refused(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate(model, processor, smoke_world, ("mmvet",), progress=False)


@pytest.fixture()
def world_copy(smoke_world, tmp_path):
    out = tmp_path / "world"
    shutil.copytree(smoke_world, out)
    return out


def test_corrupt_image_names_file_and_question(smoke_model, world_copy):
    model, processor, _ = smoke_model
    first = io.read_jsonl(world_copy / "pope" / "world_pope_random.json")[0]
    (world_copy / "images" / first["image"]).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(io.DataError, match=rf"world_pope_random.json, question_id {first['question_id']}.*"
                                           rf"corrupt or unreadable image .*{first['image']}"):
        evaluate(model, processor, world_copy, ("pope",), limit=4, progress=False)


def test_missing_image_and_malformed_line_are_named(smoke_model, world_copy):
    model, processor, _ = smoke_model
    path = world_copy / "pope" / "world_pope_random.json"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ['{"question_id": 99, "image": "x.png", "text": "Is there"'] + lines[2:]))
    with pytest.raises(io.DataError, match=r"world_pope_random.json, line 3"):
        evaluate(model, processor, world_copy, ("pope",), limit=4, progress=False)
    first = io.read_jsonl(world_copy / "caption_eval.jsonl")[0]
    (world_copy / "images" / first["image"]).unlink()
    with pytest.raises(io.DataError, match=rf"caption_eval.jsonl, image_id {first['image_id']}: image file not found"):
        evaluate(model, processor, world_copy, ("chair",), limit=4, progress=False)
