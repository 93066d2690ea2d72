"""VLFeedback -> preference pairs, one per prompt: the best-rated completion against a lower-rated one.

Released data: https://huggingface.co/datasets/MMInstruction/VLFeedback (80k rows, parquet; JSON lines or a JSON
list with the same fields are read too), images in the same repository's image archive: `--image-root` is the
folder the rows' `img_path` is relative to. A row is `{"id", "prompt", "models", "completions", "img_path"}`;
`completions` holds 4 model responses with GPT-4V annotations, either column-wise as the Hugging Face `datasets`
release stores it (`{"annotations": [...], "model": [...], "response": [...]}`) or as a list of `{"annotations",
"model", "response"}`. Each annotation maps an aspect ("Helpfulness", "Visual Faithfulness", "Ethical
Considerations") to `{"Rating": "1".."5", "Rationale": ...}`.

The pairing rule (the paper does not give its own; Silkie, VLFeedback's authors, used every pair with different
mean ratings; this is [ours], docs/preference-data.md):
  1. A completion's score is the mean of its aspect ratings. A completion with a missing or non-numeric rating
     (e.g. "N/A"), or an empty response, takes no part (counted as `completions_unrated` / `completions_empty`).
  2. Fewer than two scored completions: no pair (`skipped_fewer_than_two_rated`). All scores equal: no pair
     (`skipped_all_tied`).
  3. chosen = a completion with the highest score; rejected = one of those scoring strictly lower. Each is a
     seeded pick (`derive_seed(seed, "vlfeedback", id)`), so the same seed gives the same pairs.
The scores go into `chosen_score` / `rejected_score`, the two models into the provenance.

    >>> result = convert_vlfeedback("vlfeedback.parquet", ConvertConfig(image_root="vlfeedback/images", seed=0))
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Sequence

from mmstudy import io
from mmstudy.converters.common import (
    Context,
    ConvertConfig,
    ConvertResult,
    SkipRecord,
    collect,
    fail,
    get,
    iter_table,
    obj,
    record_id,
    text,
)
from mmstudy.data.preferences import PREFERENCE
from mmstudy.runs import derive_seed

SOURCE = "vlfeedback"
DATASET = "MMInstruction/VLFeedback"


def _completions(r: dict, where: str) -> list[dict]:
    value = get(r, "completions", where)
    if isinstance(value, dict):  # the datasets release: one list per field
        columns = {k: get(value, k, where, f"completions.{k}") for k in ("annotations", "response")}
        for k, col in columns.items():
            if not isinstance(col, list):
                raise fail(where, f"completions.{k}", f"must be a list, got {type(col).__name__}")
        columns["model"] = value.get("model")
        if columns["model"] is None:
            columns["model"] = [None] * len(columns["response"])
        elif not isinstance(columns["model"], list):
            raise fail(where, "completions.model", f"must be a list, got {type(columns['model']).__name__}")
        if len({len(col) for col in columns.values()}) != 1:
            raise fail(where, "completions", "its annotations, model and response lists differ in length")
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    if not isinstance(value, list):
        raise fail(where, "completions", f"must be a list or an object of lists, got {type(value).__name__}")
    return [obj(c, where, f"completions[{k}]") for k, c in enumerate(value)]


RATING_RANGE = (1, 5)   # VLFeedback's annotators rate each aspect from 1 to 5


def _rating(value, where: str, field: str) -> Fraction | None:
    """A rating as an exact number; None for a missing or non-numeric one ("N/A"). A number outside 1..5 (or not
    finite) is a DataError naming the field: the file is not VLFeedback as released."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(where, field, f"must be a number or a numeric string, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:                  # "N/A" and other words: unrated
        return None
    except OverflowError:               # an integer beyond a float's range: a number, off the scale
        number = math.inf
    low, high = RATING_RANGE
    if not (math.isfinite(number) and low <= number <= high):
        raise fail(where, field, f"must be a rating from {low} to {high}, got {io.show(value)}")
    return Fraction(number)


def _score(annotations, where: str, field: str) -> Fraction | None:
    """Mean rating over the aspects; None when the completion is not fully rated."""
    annotations = obj(annotations, where, field)
    ratings = []
    for aspect, note in annotations.items():     # every rating is checked, also after a missing one
        note = None if note is None else obj(note, where, f"{field}.{aspect}")
        ratings.append(None if note is None else _rating(note.get("Rating"), where, f"{field}.{aspect}.Rating"))
    if not ratings or any(x is None for x in ratings):
        return None
    return sum(ratings) / len(ratings)


def best_vs_lower(scored: Sequence[tuple], rng: random.Random) -> tuple[tuple, tuple] | None:
    """The pairing rule (steps 2-3 above) on (score, response, model) tuples: (chosen, rejected), a seeded pick of
    a best-scored completion and of one scoring strictly lower; None when all scores are equal. Also used by the
    world's ranking edition (`mmstudy.editions.sampled`)."""
    best = max(c[0] for c in scored)
    lower = [c for c in scored if c[0] < best]
    if not lower:
        return None
    return rng.choice([c for c in scored if c[0] == best]), rng.choice(lower)


def vlfeedback_pair(row, where: str, index: int, ctx: Context) -> dict:
    r = obj(row, where)
    rid = record_id(r, "id", where)
    prompt = text(r, "prompt", where, prompt=True)
    scored = []
    for k, c in enumerate(_completions(r, where)):
        response, model = c.get("response"), c.get("model")
        if not isinstance(response, str):
            raise fail(where, f"completions[{k}].response", f"must be a string, got {type(response).__name__}")
        if model is not None and not isinstance(model, str):
            raise fail(where, f"completions[{k}].model", f"must be a string, got {type(model).__name__}")
        score = _score(get(c, "annotations", where, f"completions[{k}].annotations"), where,
                       f"completions[{k}].annotations")
        if score is None:
            ctx.stats["completions_unrated"] += 1
        elif not response.strip():
            ctx.stats["completions_empty"] += 1
        else:
            scored.append((score, text(c, "response", where, field=f"completions[{k}].response"), model))
    img_path = ctx.images.relative(get(r, "img_path", where), where, "img_path")
    if len(scored) < 2:
        raise SkipRecord("fewer_than_two_rated")
    picked = best_vs_lower(scored, random.Random(derive_seed(ctx.cfg.seed, "vlfeedback", rid)))
    if picked is None:
        raise SkipRecord("all_tied")
    chosen, rejected = picked
    image = ctx.images.existing(img_path, where, "img_path")
    source = ctx.cfg.source or SOURCE
    provenance = {"dataset": DATASET, "original_id": rid, "rule": "best_mean_rating_vs_seeded_lower"}
    provenance.update({k: m for k, m in (("chosen_model", chosen[2]), ("rejected_model", rejected[2])) if m})
    return {"id": f"{source}-{rid}", "image": image, "prompt": prompt, "chosen": chosen[1], "rejected": rejected[1],
            "source": source, "chosen_score": float(chosen[0]), "rejected_score": float(rejected[0]),
            "provenance": provenance}


def convert_vlfeedback(path: str | Path, cfg: ConvertConfig) -> ConvertResult:
    path = Path(path)
    return collect(path, iter_table(path), vlfeedback_pair, cfg, PREFERENCE, cfg.source or SOURCE)
