"""Decoding methods without training: VCD's contrastive logits against hand-computed values."""

import math

import pytest
import torch

from mmstudy.models.decoding import contrastive_logits, plausible


def test_plausibility_keeps_tokens_within_beta_of_the_best():
    logits = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.06), math.log(0.04)]])
    assert plausible(logits, 0.1).tolist() == [[True, True, True, False]]     # 0.06 >= 0.1 x 0.6 > 0.04
    assert plausible(logits, 0.5).tolist() == [[True, True, False, False]]
    assert plausible(logits, 0.0).all() and plausible(logits, 1.0).sum() == 1


def test_contrastive_logits_by_hand():
    clean, noised = torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.5, -3.0]])
    out = contrastive_logits(clean, noised, alpha=1.0, beta=0.1)
    # (1 + 1) x clean - 1 x noised = [3.0, 0.5, -3.0]; p(-3) / p(2) = e^-5 < 0.1: cut
    assert out[0, :2].tolist() == [3.0, 0.5] and out[0, 2] == float("-inf")
    assert torch.equal(contrastive_logits(clean, noised, alpha=0.0, beta=0.0), clean)     # no contrast: the model
    with pytest.raises(ValueError, match="alpha"):
        contrastive_logits(clean, noised, alpha=-1)
    with pytest.raises(ValueError, match="differ"):
        contrastive_logits(clean, noised[:, :2])
