"""Headroom probes: the probe fit, the pure recoverable scores, and the diagnostic inside `evaluate`."""

import numpy as np
import pytest
import torch

from mmstudy.benchmarks.headroom import pope_object, recoverable_scores
from mmstudy.evaluation.evaluate import evaluate, with_requirements
from mmstudy.evaluation.headroom import (
    Features,
    HeadroomConfig,
    default_layers,
    fit_probe,
    image_features,
    log_loss,
)


def test_fit_probe_learns_a_linear_rule_and_is_calibrated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5))
    logits = np.stack([3 * x[:, 0], -2 * x[:, 1] + x[:, 2]], 1)
    y = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(float)
    probe = fit_probe(Features(pooled=x[:1500]), y[:1500], l2=1e-4, steps=100)
    p = probe.proba(Features(pooled=x[1500:]))
    true_p = 1 / (1 + np.exp(-logits[1500:]))
    assert np.abs(p - true_p).mean() < 0.05                      # close to the true probabilities
    assert log_loss(p, y[1500:]) < log_loss(np.full_like(p, y.mean(0)), y[1500:]) - 0.1
    assert probe.weight[0, 0] > 1 and probe.weight[1, 1] < -0.5  # standardized features: the rule's signs


def test_token_probe_finds_the_token_that_shows_a_class():
    """Presence = some token carries the class's direction, at any of a varying number of positions: the token
    probe reads it almost perfectly, pooling over tokens much less so."""
    rng = np.random.default_rng(1)
    n, t, h = 1500, 12, 8
    tokens = rng.normal(size=(n, t, h)).astype(np.float32)
    counts = rng.integers(6, t + 1, size=n)
    mask = np.arange(t)[None] < counts[:, None]
    y = np.zeros((n, 2))
    for i in range(n):
        for c in range(2):
            if rng.random() < 0.3:
                y[i, c] = 1
                tokens[i, rng.integers(counts[i]), c] += 6.0     # one token shows class c
    tokens[~mask] = 99.0                                        # padding must never count
    f = Features(tokens, mask)
    probe = fit_probe(f.rows(slice(0, 1000)), y[:1000], steps=100)
    accuracy = ((probe.proba(f.rows(slice(1000, None))) >= 0.5) == y[1000:]).mean()
    pooled = np.concatenate([(tokens * mask[..., None]).sum(1) / counts[:, None],
                             np.where(mask[..., None], tokens, -np.inf).max(1)], 1)
    flat = fit_probe(Features(pooled=pooled[:1000]), y[:1000], steps=100)
    flat_accuracy = ((flat.proba(Features(pooled=pooled[1000:])) >= 0.5) == y[1000:]).mean()
    assert accuracy > 0.97 and accuracy > flat_accuracy


def test_pope_object():
    assert pope_object("Is there a traffic light in the image?") == "traffic light"
    assert pope_object("Is there an umbrella in the image?") == "umbrella"
    with pytest.raises(ValueError, match="not a POPE question"):
        pope_object("How many forks are there?")


def test_recoverable_scores_count_exactly():
    classes = ["fork", "knife", "cup"]
    p = {"a.png": np.array([0.99, 0.05, 0.5]), "b.png": np.array([0.2, 0.92, 0.01])}
    pope = [  # (image, object, label, pred): the probe is right on 3 of 4; the model wrong on 2
        {"image": "a.png", "question": "Is there a fork in the image?", "label": "yes", "pred": "no"},   # p 0.99
        {"image": "a.png", "question": "Is there a knife in the image?", "label": "no", "pred": "yes"},  # 0.95
        {"image": "b.png", "question": "Is there a fork in the image?", "label": "yes", "pred": "yes"},  # wrong probe
        {"image": "b.png", "question": "Is there a cup in the image?", "label": "no", "pred": "no"},
    ]
    chair = [{"image": "a.png", "reference": {"hallucinated": [["knife", "knife"], ["cups", "cup"]]}},  # 0.95, 0.5
             {"image": "b.png", "reference": {"hallucinated": [["knives", "knife"]]}}]                   # 0.08
    out = recoverable_scores(p, classes, pope, chair, threshold=0.9)
    assert out["probe_pope_accuracy"] == 0.75
    assert out["recoverable_pope"] == 1.0 and out["pope_wrong"] == 2
    assert out["recoverable_chair"] == pytest.approx(1 / 3) and out["chair_hallucinated"] == 3
    stricter = recoverable_scores(p, classes, pope, chair, threshold=0.96)
    assert stricter["recoverable_pope"] == 0.5 and stricter["recoverable_chair"] == 0.0


def test_config_is_validated():
    with pytest.raises(ValueError, match="threshold"):
        HeadroomConfig(threshold=0.4)
    with pytest.raises(ValueError, match="probe"):
        HeadroomConfig(probe="mlp")
    with pytest.raises(ValueError, match="1-based"):
        HeadroomConfig(layers=(0,))
    assert default_layers(4) == (2, 4) and default_layers(32) == (16, 32) and default_layers(1) == (1,)


def test_projector_features_are_the_lm_inputs_at_image_positions(smoke_model, smoke_world):
    from mmstudy.io import load_image

    model, processor, _ = smoke_model
    images = [load_image(smoke_world / "images" / f"val_{i:06d}.png") for i in range(3)]
    feats = image_features(model, processor, images, layers=(1, 2), batch_size=2, progress=False)
    assert set(feats) == {"projector", "lm1", "lm2"}
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        tower = model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
        projected = model.model.multi_modal_projector(tower).numpy()
    assert feats["projector"].mask.all() and feats["projector"].tokens.shape == projected.shape
    np.testing.assert_allclose(feats["projector"].tokens, projected, rtol=1e-4, atol=1e-5)
    pooled = image_features(model, processor, images, layers=(1,), probe="pooled", progress=False)["projector"]
    np.testing.assert_allclose(pooled.pooled, np.concatenate([projected.mean(1), projected.max(1)], 1), rtol=1e-4,
                               atol=1e-5)


def test_headroom_in_evaluate_runs_pope_and_chair_first(smoke_model, smoke_world):
    model, processor, _ = smoke_model
    assert with_requirements(["headroom"]) == ["pope", "chair", "headroom"]
    assert with_requirements(["chair", "headroom", "pope"]) == ["chair", "pope", "headroom"]
    metrics, samples = evaluate(model, processor, smoke_world, ["headroom"], limit=20, progress=False)
    assert {s["benchmark"] for s in samples} == {"pope", "chair"}
    for key in ("probe_pope_accuracy", "recoverable_pope", "recoverable_chair"):
        value = metrics[f"headroom/{key}"]
        assert np.isnan(value) or 0 <= value <= 1
    assert metrics["headroom/source"] in {"projector", "lm1", "lm2"}       # the smoke LM has 2 layers
    assert metrics["headroom/n_train"] == 240 and metrics["headroom/version"] == 1
    wrong = sum(s["pred"] != s["label"] for s in samples if s["benchmark"] == "pope")
    assert metrics["headroom/pope_wrong"] == wrong
    again, _ = evaluate(model, processor, smoke_world, ["headroom"], limit=20, progress=False)
    assert again["headroom/probe_pope_accuracy"] == metrics["headroom/probe_pope_accuracy"]
