"""Group-relative policy-gradient objectives as pure functions (GRPO-style: Shao et al. 2024, DeepSeekMath §4;
docs/alignment.md), and the world's exact rewards they are meant for (RL with verifiable rewards).

For each prompt the policy draws k responses; each gets a reward. With per-token log-probabilities of a response
under the current policy (`logp`), the policy that drew it (`logp_old`) and the frozen reference (`logp_ref`):

    advantage   A_i = (r_i - mean(r)) / (std(r) + eps) within the prompt's group (std with Bessel's correction,
                as TRL's GRPO); `scale=False` keeps the centred reward (Dr. GRPO)
    surrogate   per token -min(rho A, clip(rho, 1 - c, 1 + c) A) with rho = exp(logp - logp_old): PPO's clipped
                ratio, averaged over the response's tokens
    KL          per token exp(q) - q - 1 with q = logp_ref - logp (the k3 estimator: unbiased, never negative)
    loss        mean over responses of surrogate + beta KL

The rewards: a description earns (correct mentions - w x hallucinated mentions) / |ground-truth objects| (the
oracle counts both), an answer to a yes/no or counting question 1 when right and 0 when wrong.

    >>> adv = group_advantages(rewards)                                        # (prompts, k)
    >>> loss, stats = grpo_loss(logp, logp_old, logp_ref, adv.flatten(), mask, clip=0.2, beta=0.04)
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Rewards (prompts, k) centred on their group's mean and, with `scale`, divided by the group's std (+ eps):
    a group whose responses all score alike gets zero advantage."""
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, k) with k >= 2 samples per prompt, got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps) if scale else centred


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def clipped_surrogate(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response (N,): the mean over its tokens of -min(rho A, clip(rho) A), and the share of its tokens whose
    ratio the clip bound. logp, logp_old, mask: (N, T); advantages: (N,)."""
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    ratio = torch.exp(logp - logp_old)
    adv = advantages[:, None]
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv
    clipped_share = _token_mean((clipped < unclipped).to(logp.dtype), mask)
    return _token_mean(-torch.minimum(unclipped, clipped), mask), clipped_share


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per response (N,): the mean over its tokens of exp(q) - q - 1, q = logp_ref - logp (>= 0, 0 iff equal)."""
    q = logp_ref - logp
    return _token_mean(torch.exp(q) - q - 1, mask)


def grpo_loss(logp: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, beta: float = 0.04) -> tuple[torch.Tensor, dict]:
    """The scalar loss (mean over responses of surrogate + beta KL) and detached statistics: kl, clipped share."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    surrogate, clipped_share = clipped_surrogate(logp, logp_old, advantages, mask, clip)
    kl = k3_kl(logp, logp_ref, mask)
    loss = (surrogate + beta * kl).mean()
    return loss, {"kl": kl.detach().mean().item(), "clipped_share": clipped_share.detach().mean().item()}


def description_reward(correct: int, hallucinated: int, n_truth: int, weight: float = 1.0) -> float:
    """(correct mentions - weight x hallucinated mentions) / number of ground-truth objects (at least 1)."""
    if min(correct, hallucinated, n_truth) < 0 or weight < 0:
        raise ValueError("counts and weight must be >= 0")
    return (correct - weight * hallucinated) / max(n_truth, 1)


def answer_reward(correct: bool) -> float:
    """1 for a right answer to a yes/no or counting question, 0 for a wrong one (the oracle decides)."""
    return 1.0 if correct else 0.0
