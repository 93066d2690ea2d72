"""The group-relative policy-gradient objective against hand-computed values."""

import math

import pytest
import torch

from mmstudy.training.policy_losses import (
    answer_reward,
    clipped_surrogate,
    description_reward,
    group_advantages,
    grpo_loss,
    k3_kl,
)


def test_group_advantages_centre_and_scale_within_each_prompt():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    assert torch.allclose(group_advantages(rewards), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), atol=1e-5)
    assert torch.equal(group_advantages(rewards, scale=False), torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="k >= 2"):
        group_advantages(torch.ones(3, 1))


@pytest.mark.parametrize("advantage, loss", [(2.0, -1.7), (-2.0, 2.3)])
def test_the_clip_binds_on_the_side_the_advantage_pushes(advantage, loss):
    """Ratios 1.5 and 0.5, clip 0.2. A = +2: the first token is capped at 1.2 x 2, the second keeps 0.5 x 2;
    A = -2: the first keeps 1.5 x -2, the second is held at 0.8 x -2. A padded third token counts for nothing."""
    logp_old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    surrogate, clipped = clipped_surrogate(logp, logp_old, torch.tensor([advantage]), mask, clip=0.2)
    assert surrogate.item() == pytest.approx(loss) and clipped.item() == pytest.approx(0.5)


def test_k3_kl_is_zero_at_the_reference_and_matches_by_hand():
    mask = torch.ones(1, 1)
    assert k3_kl(torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]]), mask).item() == pytest.approx(
        0.5 + math.log(2) - 1)
    assert k3_kl(torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1, 4)).item() == 0.0


def test_grpo_gradient_at_the_sampling_policy_is_minus_the_advantage_per_token():
    """At rho = 1 and the reference, d loss / d logp_t = -A / T / N for every token (the KL term has no slope)."""
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([2.0, -1.0]),
                            torch.ones(2, 2), clip=0.2, beta=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 - 1.0) / 2)
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]]))
    assert stats == {"kl": 0.0, "clipped_share": 0.0}


def test_rewards_of_the_oracle():
    assert description_reward(3, 1, 4, weight=2.0) == 0.25
    assert description_reward(0, 2, 0) == -2.0                       # no ground truth: counted per 1
    assert (answer_reward(True), answer_reward(False)) == (1.0, 0.0)
    with pytest.raises(ValueError):
        description_reward(-1, 0, 3)
