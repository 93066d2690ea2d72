"""How far alignment moved a model from its base on the evaluation prompts.

Two numbers per aligned model, next to its benchmarks, so that "no difference" can be told apart from "no change":

    kl_per_token    mean over answer tokens of KL(policy || base), the full next-token distributions, along the
                    policy's own greedy descriptions of the caption-evaluation images (teacher-forced)
    changed_share   share of evaluation items (POPE questions, caption images, judged items) whose greedy answer
                    differs from the base's, overall and per benchmark

    >>> shift = shift_metrics(policy, base, processor, policy_samples, base_samples, "world/images")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mmstudy.progress import progress_bar
from mmstudy.training.dpo import collate, encode_pairs, response_log_probs, text_max_length

logger = logging.getLogger(__name__)

_ITEM_KEY = {"pope": ("split", "question_id"), "chair": ("image_id",), "objhal": ("index",), "mmhal": ("index",),
             "mmhal_v": ("index",), "llava_w": ("question_id",), "amber": ("id",)}


def changed_shares(policy_samples: Sequence[dict], base_samples: Sequence[dict]) -> dict:
    """{"changed_share", "<benchmark>/changed_share", "<benchmark>/paired"}: the share of items both runs answered
    whose answer text differs, over all paired items and per benchmark (`_ITEM_KEY` says what an item is)."""
    def keyed(samples):
        return {(s["benchmark"], *(s[k] for k in _ITEM_KEY[s["benchmark"]])): s["answer"]
                for s in samples if s.get("benchmark") in _ITEM_KEY and "answer" in s}

    a, b = keyed(policy_samples), keyed(base_samples)
    common = [k for k in a if k in b]
    out = {"changed_share": float(np.mean([a[k] != b[k] for k in common])) if common else float("nan")}
    for bench in sorted({k[0] for k in common}):
        mine = [a[k] != b[k] for k in common if k[0] == bench]
        out[f"{bench}/changed_share"], out[f"{bench}/paired"] = float(np.mean(mine)), len(mine)
    return out


@torch.no_grad()
def kl_per_token(policy, base, processor, records: Sequence[dict], image_root: str | Path,
                 batch_size: int = 16, progress: bool = False) -> float:
    """Mean KL(policy || base) per answer token (EOS included) over `records` ({"id", "image", "prompt",
    "answer"}), the answer teacher-forced after the chat prompt and image; both models are LLaVAs sharing
    `processor`."""
    pairs = [{"id": r["id"], "image": r["image"], "prompt": r["prompt"], "chosen": r["answer"],
              "rejected": r["answer"]} for r in records if r["answer"].strip()]
    encoded, _ = encode_pairs(processor, pairs, image_root, text_max_length(policy), "skip", need_second=False)
    for p in encoded:
        p.responses = p.responses[:1]
    pad = processor.tokenizer.pad_token_id
    total, count = 0.0, 0
    for start in progress_bar(range(0, len(encoded), batch_size), desc="KL to the base", unit="batch",
                              disable=not progress):
        batch = collate(encoded[start:start + batch_size], pad, device=policy.device)
        logp = [response_log_probs(model, batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"],
                                   batch["response_mask"], batch["pixel_values"], 1, batch.get("image_sizes"))
                for model in (policy, base)]
        kl = (logp[0].exp() * (logp[0] - logp[1])).sum(-1)
        mask = batch["response_mask"].float()
        total += float((kl * mask).sum())
        count += int(mask.sum())
    return total / count if count else float("nan")


def shift_metrics(policy, base, processor, policy_samples: Sequence[dict], base_samples: Sequence[dict],
                  image_root: str | Path, progress: bool = False) -> dict:
    """`kl_per_token` along the policy's caption answers (its CHAIR samples) and `changed_shares` against the
    base's samples, flat: {"kl_per_token", "changed_share", "<benchmark>/changed_share", ...}."""
    captions = [{"id": str(s["image_id"]), "image": s["image"], "prompt": s["prompt"], "answer": s["answer"]}
                for s in policy_samples if s.get("benchmark") == "chair"]
    out = changed_shares(policy_samples, base_samples)
    out["kl_per_token"] = (kl_per_token(policy, base, processor, captions, image_root, progress=progress)
                           if captions else float("nan"))
    out["kl_prompts"] = len(captions)
    logger.info("shift from the base: KL %.4f per token, %.1f %% of answers changed", out["kl_per_token"],
                100 * out["changed_share"])
    return out
