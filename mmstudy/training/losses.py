"""Preference objectives as pure functions of per-sequence log-probabilities (Amirloo et al. §1-3; docs/alignment.md).

Every objective takes the summed log-probabilities of the chosen and rejected responses under the policy and the
reference, each a (B,) tensor, and returns (loss (B,), chosen rewards (B,), rejected rewards (B,)), the rewards
being beta x (policy - reference) log-ratios (DPO's implicit reward). With the log-ratio margin
h = (log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-)):

    dpo   -log sigmoid(beta h)                                     Eq. 3 (Rafailov et al. 2023); with label
          (1 - eps) (-log sigmoid(beta h)) + eps (-log sigmoid(-beta h))   smoothing eps: conservative DPO
    ipo   (h - 1 / (2 beta))^2                                     IPO (Azar et al. 2023), beta = tau: the
          regression of the log-ratio margin on 1 / (2 tau); h from summed log-probs (TRL averages them over
          tokens instead; pass length-normalized log-probs to get that parameterization)
    slic  max(0, 1 - beta h)                                       the hinge (SLiC-HF, Zhao et al. 2023) on the
          reference-normalized margin, as TRL's "hinge" loss whose beta range (0.02-0.2) the paper reports
    avg_dpo  gamma L_dpo(y+, y-) + (1 - gamma) L_dpo(y+, y-_2)     Eq. 5: two DPO losses sharing y+, e.g. an
          external rejection and a self-generated (BDHS) one; gamma = 0.5 as POVID's public code

    >>> loss, r_c, r_r = LOSSES["dpo"](pc, pr, rc, rr, beta=0.1)
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _margin_and_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    return chosen_ratio - rejected_ratio, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0):
    """DPO (Eq. 3), sigmoid form, with optional label smoothing (conservative DPO). ln 2 when policy = reference."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h, reward_chosen, reward_rejected = _margin_and_rewards(policy_chosen, policy_rejected, ref_chosen,
                                                            ref_rejected, beta)
    loss = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return loss, reward_chosen, reward_rejected


def ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 1.0, label_smoothing=0.0):
    """IPO: (h - 1/(2 beta))^2, beta playing IPO's tau (the paper's range 0.8-1.0)."""
    h, reward_chosen, reward_rejected = _margin_and_rewards(policy_chosen, policy_rejected, ref_chosen,
                                                            ref_rejected, beta)
    return (h - 1 / (2 * beta)) ** 2, reward_chosen, reward_rejected


def slic_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1, label_smoothing=0.0):
    """SLiC's hinge on the reference-normalized margin: max(0, 1 - beta h)."""
    h, reward_chosen, reward_rejected = _margin_and_rewards(policy_chosen, policy_rejected, ref_chosen,
                                                            ref_rejected, beta)
    return torch.relu(1 - beta * h), reward_chosen, reward_rejected


LOSSES: dict[str, LossFn] = {"dpo": dpo_loss, "ipo": ipo_loss, "slic": slic_loss}
OBJECTIVES = (*LOSSES, "avg_dpo", "mdpo")


def avg_dpo_loss(policy_chosen, policy_rejected, policy_rejected_2, ref_chosen, ref_rejected, ref_rejected_2,
                 beta: float = 0.1, gamma: float = 0.5, label_smoothing: float = 0.0):
    """Avg-DPO (Eq. 5): gamma DPO(y+, y-) + (1 - gamma) DPO(y+, y-_2); rewards of y- and y-_2 averaged alike."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    first, chosen_reward, rejected_1 = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                                                label_smoothing)
    second, _, rejected_2 = dpo_loss(policy_chosen, policy_rejected_2, ref_chosen, ref_rejected_2, beta,
                                     label_smoothing)
    return gamma * first + (1 - gamma) * second, chosen_reward, gamma * rejected_1 + (1 - gamma) * rejected_2


def mdpo_loss(policy_chosen, policy_rejected, policy_chosen_corrupt, ref_chosen, ref_rejected, ref_chosen_corrupt,
              beta: float = 0.1, anchor: float = 0.0):
    """mDPO (Wang et al. 2024), per pair: DPO, plus a conditional preference (the chosen response is more likely
    with the real image than with a corrupted one: a DPO term whose "rejected" side is y+ given the corrupted image),
    plus an anchor that keeps the chosen response's reward above `anchor`:

        -log sigmoid(beta h) - log sigmoid(beta (c - c')) - log sigmoid(beta c - anchor)

    with c = log pi(y+ | x, m) - log ref(y+ | x, m), c' the same given the corrupted image m', h DPO's margin.
    Returns (loss, chosen rewards, rejected rewards) as the other objectives. The trainer scores y+ given the
    corrupted image in a second pass (`mmstudy.training.dpo.corrupted_view`, docs/alignment.md)."""
    h, reward_chosen, reward_rejected = _margin_and_rewards(policy_chosen, policy_rejected, ref_chosen,
                                                            ref_rejected, beta)
    chosen = policy_chosen - ref_chosen
    conditional = chosen - (policy_chosen_corrupt - ref_chosen_corrupt)
    loss = -F.logsigmoid(beta * h) - F.logsigmoid(beta * conditional) - F.logsigmoid(beta * chosen - anchor)
    return loss, reward_chosen, reward_rejected
