"""Decoding methods that need no training, as pure functions of next-token logits (docs/alignment.md).

    vcd   visual contrastive decoding (Leng et al. 2024): (1 + alpha) logits(image) - alpha logits(noised image),
          on the tokens whose probability under the clean logits is at least `beta` times the most likely one's
          (the adaptive plausibility cut-off), -inf elsewhere; greedy or sampled from the result

    >>> contrastive_logits(torch.tensor([[2.0, 1.0, -3.0]]), torch.tensor([[1.0, 1.5, -3.0]]), alpha=1.0, beta=0.1)

The generation hook that runs the model twice per step (with the image and with its noised copy) and the option of
`mmstudy eval --decoding` are not built yet.
"""

from __future__ import annotations

import torch


def plausible(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """The adaptive plausibility mask: tokens whose probability is at least `beta` times the most likely one's
    (log p >= log beta + max log p), per row."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp >= logp.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(beta))


def contrastive_logits(logits: torch.Tensor, logits_noised: torch.Tensor, alpha: float = 1.0,
                       beta: float = 0.1) -> torch.Tensor:
    """VCD's next-token logits: (1 + alpha) logits - alpha logits_noised where `plausible(logits, beta)`, -inf
    elsewhere. logits, logits_noised: (..., vocabulary), from the same prefix with the image and with its noised
    copy."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if logits.shape != logits_noised.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and noised logits {tuple(logits_noised.shape)} differ")
    contrast = (1 + alpha) * logits.float() - alpha * logits_noised.float()
    return contrast.masked_fill(~plausible(logits, beta), float("-inf"))
