"""MMHal-Bench (Sun et al. 2023, LLaVA-RLHF) and MMHal-V (Amirloo et al. 2024): a judge rates each answer 0-6.

96 image-question pairs, 8 question types x 12 (attribute, adversarial, comparison, counting, relation,
environment, holistic, other). Each item carries the image's `image_content` labels and a human `gt_answer`; a
judge reads the reference prompt (five worked examples, then image contents, question, standard answer and the
answer to evaluate) and picks a rating:

    6 very informative with good analysis or reasoning, no hallucination   2 very informative, with hallucination
    5 very informative, no hallucination                                   1 somewhat informative, with hallucination
    4 somewhat informative, no hallucination                               0 not informative, with hallucination
    3 not informative, no hallucination

Protocol followed (LLaVA-RLHF `Eval/eval_gpt4.py`, see docs/benchmarks.md):
    * prompt: `JUDGE_TEMPLATE`, the reference text with its five examples, image contents joined by ", ";
      MMHal judges read text only (GPT-4 in the reference); MMHal-V sends the same prompt with the image attached
      (the paper used GPT-4o), which lets the judge catch what the `image_content` labels omit;
    * parsing: the judge's text must contain "rating: k" (case-insensitive) for exactly one k in 0..6;
    * score = mean rating; hallucination rate = share of ratings < 3; per-type means by `question_type`.

Unparseable verdicts: the reference silently scores them 0, which turns a judge formatting slip into a
"hallucination". Here they are counted and, by default (`mode="strict"`), left out of the means; `mode="reference"`
scores them 0 as the reference does, for comparison. Judge failures (no text at all) are counted and left out in
both modes (the reference retries until it gets text).

    >>> items = load_mmhal("response_template.json"); prompts = [judge_prompt(it, ans) for it, ans in ...]
    >>> mmhal_metrics([parse_rating(t) for t in judge_texts], [it["question_type"] for it in items])
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from mmstudy import io
from mmstudy.benchmarks.stats import bootstrap_ci

logger = logging.getLogger(__name__)

MMHAL_VERSION = 1  # bump whenever the prompt, parsing or metrics change
QUESTION_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic",
                  "other")  # the reference's order: item i has type QUESTION_TYPES[i % 8]
ITEM_FIELDS = ("question_type", "image_content", "question", "gt_answer")
MODES = ("strict", "reference")
HALLUCINATION_BELOW = 3

# The reference judge prompt (LLaVA-RLHF, Eval/eval_gpt4.py, Apache-2.0), verbatim including its typo
# "evalutation", kept as a resource file: four {} slots, filled with image contents, question, standard answer and
# the answer to evaluate.
JUDGE_TEMPLATE = (Path(__file__).resolve().parents[1] / "resources" / "mmhal_judge_prompt.txt").read_text(
    encoding="utf-8")

_RATING = re.compile(r"rating: ([0-6])")


# ---------------------------------------------------------------- files


def load_mmhal(path: str | Path) -> list[dict]:
    """The released item file (`response_template.json`: a JSON list of items with question_type, question_topic,
    image_id, image_src, image_content, question, gt_answer, and `model_answer` once answered), validated.

    Raises DataError naming the file, the record index and the field for anything malformed."""
    path = Path(path)
    items = io.read_json(path)
    if not isinstance(items, list):
        raise io.DataError(f"{path}: expected a JSON list of MMHal items, got {type(items).__name__}")
    for i, item in enumerate(items):
        where = f"{path}, record {i}"
        io.check_fields(item, ITEM_FIELDS, where)
        if item["question_type"] not in QUESTION_TYPES:
            raise io.DataError(f"{where}: field 'question_type' is {item['question_type']!r}, expected one of "
                               f"{list(QUESTION_TYPES)}")
        content = item["image_content"]
        if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
            raise io.DataError(f"{where}: field 'image_content' must be a list of strings")
        for key in ("question", "gt_answer") + (("model_answer",) if "model_answer" in item else ()):
            if not isinstance(item[key], str):
                raise io.DataError(f"{where}: field {key!r} must be a string")
    reordered = [i for i, item in enumerate(items) if item["question_type"] != QUESTION_TYPES[i % 8]]
    if reordered:
        logger.warning("%s: %d item(s) (first: record %d) break the reference's order (type = index mod 8); the "
                       "reference script would file them under the wrong type, mmstudy uses 'question_type'",
                       path, len(reordered), reordered[0])
    return items


def image_file(item: dict) -> str:
    """The image's file name: the basename of `image_src` (an OpenImages URL in the release), else `image`."""
    src = item.get("image_src") or item.get("image")
    if not src:
        raise io.DataError(f"MMHal item {item.get('image_id', '?')}: neither 'image_src' nor 'image' is set")
    return str(src).rsplit("/", 1)[-1]


# ---------------------------------------------------------------- judging


def judge_prompt(item: dict, answer: str) -> str:
    """The reference prompt for one answer (same text for MMHal and MMHal-V; MMHal-V attaches the image)."""
    return JUDGE_TEMPLATE.format(", ".join(item["image_content"]), item["question"], item["gt_answer"], answer)


def parse_rating(text: str | None) -> int | None:
    """The rating in a judge's text, or None when it names no rating or more than one distinct rating.

    "Explanation ... Rating: 4, somewhat informative" -> 4; "rating: 4 ... Rating: 4" -> 4 (one distinct value,
    as the reference, which tests each k once); "Rating: 2 or Rating: 5" -> None; "4/6" -> None.
    """
    if text is None:
        return None
    found = set(_RATING.findall(text.lower()))
    return int(found.pop()) if len(found) == 1 else None


# ---------------------------------------------------------------- metrics


def mmhal_metrics(ratings: Sequence[int | None], question_types: Sequence[str], failed: Sequence[bool] = (),
                  mode: str = "strict") -> dict:
    """Score, hallucination rate and per-type means, with 95 % bootstrap intervals over items.

    ratings[i] is the parsed rating of item i (None: unparseable); failed[i] marks a judge failure (no text),
    which is never scored. mode "strict" leaves unparseable verdicts out; "reference" scores them 0.
    """
    if mode not in MODES:
        raise ValueError(f"unknown MMHal mode {mode!r}; choose from {list(MODES)}")
    if len(ratings) != len(question_types):
        raise ValueError(f"MMHal: {len(ratings)} ratings but {len(question_types)} question types")
    failed = list(failed) or [False] * len(ratings)
    scored: list[tuple[str, int]] = []
    for r, t, f in zip(ratings, question_types, failed):
        if f:
            continue
        if r is None and mode == "reference":
            r = 0
        if r is not None:
            scored.append((t, r))
    values = np.array([r for _, r in scored], dtype=float)
    metrics = {
        "score": float(values.mean()) if len(values) else float("nan"),
        "hallucination_rate": float((values < HALLUCINATION_BELOW).mean()) if len(values) else float("nan"),
        "n": len(ratings), "n_scored": len(scored), "n_failed": int(sum(failed)),
        "n_unparseable": sum(r is None and not f for r, f in zip(ratings, failed)),
        "mode": mode, "version": MMHAL_VERSION,
    }
    for name, stat in (("score", np.mean), ("hallucination_rate", lambda v: np.mean(v < HALLUCINATION_BELOW))):
        ci = bootstrap_ci(values, stat)
        metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"] = ci["low"], ci["high"]
    for t in QUESTION_TYPES:
        of_type = [r for tt, r in scored if tt == t]
        if of_type:
            metrics[f"type/{t}"] = float(np.mean(of_type))
    return metrics
