"""Preference losses: hand-computed values, ln 2 at the reference, gradients only where they belong."""

import math

import pytest
import torch

from mmstudy.training.losses import LOSSES, avg_dpo_loss, dpo_loss, ipo_loss, slic_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_dpo_is_ln2_when_policy_equals_reference():
    loss, rc, rr = dpo_loss(t(-3.0, -7.0), t(-5.0, -1.0), t(-3.0, -7.0), t(-5.0, -1.0), beta=0.1)
    assert loss.tolist() == pytest.approx([math.log(2)] * 2)
    assert rc.tolist() == [0.0, 0.0] and rr.tolist() == [0.0, 0.0]


def test_hand_computed_values():
    # policy chosen -2, rejected -6; reference chosen -3, rejected -4 -> ratios +1 and -2, margin h = 3
    args = (t(-2.0), t(-6.0), t(-3.0), t(-4.0))
    loss, rc, rr = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.5)))          # -log sigmoid(1.5)
    assert (rc.item(), rr.item()) == (0.5, -1.0)
    smoothed, _, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * math.log(1 + math.exp(-1.5)) + 0.1 * math.log(1 + math.exp(1.5)))
    assert ipo_loss(*args, beta=0.5)[0].item() == pytest.approx((3 - 1.0) ** 2)    # (h - 1/(2 beta))^2
    assert slic_loss(*args, beta=0.1)[0].item() == pytest.approx(0.7)              # max(0, 1 - 0.3)
    assert slic_loss(*args, beta=0.5)[0].item() == 0.0                              # margin beyond the hinge


def test_avg_dpo_averages_two_dpo_losses():
    pc, pr, pr2, rc, rr, rr2 = t(-2.0), t(-6.0), t(-3.0), t(-3.0), t(-4.0), t(-3.5)
    loss, _, _ = avg_dpo_loss(pc, pr, pr2, rc, rr, rr2, beta=0.5, gamma=0.25)
    first = dpo_loss(pc, pr, rc, rr, beta=0.5)[0]
    second = dpo_loss(pc, pr2, rc, rr2, beta=0.5)[0]
    assert loss.item() == pytest.approx(0.25 * first.item() + 0.75 * second.item())
    with pytest.raises(ValueError):
        avg_dpo_loss(pc, pr, pr2, rc, rr, rr2, gamma=1.5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_the_policy_only(name):
    pc, pr = t(-2.0, -1.0).requires_grad_(), t(-3.0, -2.5).requires_grad_()
    rc, rr = t(-2.5, -1.0).requires_grad_(), t(-2.0, -3.0).requires_grad_()
    loss, reward_c, reward_r = LOSSES[name](pc, pr, rc, rr, beta=0.1)
    loss.sum().backward()
    assert pc.grad is not None and pr.grad is not None
    assert (pc.grad <= 0).all() and (pr.grad >= 0).all()       # raise y+, lower y-
    assert not reward_c.requires_grad and not reward_r.requires_grad   # rewards are logged, not trained on
    # the reference enters the loss, but a trainer keeps it out of the graph (no_grad / cached log-probs)
    assert rc.grad is not None


def test_mdpo_adds_a_conditional_preference_and_an_anchor_by_hand():
    from mmstudy.training.losses import mdpo_loss

    # chosen log-ratio c = -1 - -1.5 = 0.5, rejected -3 - -2.5 = -0.5 (h = 1.0), corrupted c' = -2 - -1.8 = -0.2
    loss, rc, rr = mdpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-1.5), t(-2.5), t(-1.8), beta=0.5, anchor=0.0)

    def nls(x):
        return math.log(1 + math.exp(-x))          # -log sigmoid(x)

    assert loss.item() == pytest.approx(nls(0.5 * 1.0) + nls(0.5 * 0.7) + nls(0.5 * 0.5))
    assert (rc.item(), rr.item()) == pytest.approx((0.25, -0.25))
    at_reference, _, _ = mdpo_loss(*(t(-2.0),) * 6, beta=0.1)
    assert at_reference.item() == pytest.approx(3 * math.log(2))     # policy = reference: three coin flips
    more_anchor, _, _ = mdpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-1.5), t(-2.5), t(-1.8), beta=0.5, anchor=1.0)
    assert more_anchor.item() > loss.item()
