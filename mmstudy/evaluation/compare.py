"""Paired comparison of two evaluation runs on the same items: metric differences with bootstrap intervals.

Each benchmark's samples (samples.jsonl from `mmstudy eval`) are reduced to per-item values keyed by the item's
identity; items present in both runs are resampled jointly (`mmstudy.benchmarks.stats.paired_difference`), so
the interval of "B - A" accounts for both runs seeing the same, correlated items. Ratio metrics (CHAIR_i, recall)
are ratios of sums over the resampled items, as the metrics themselves.

    >>> compare_runs(read_jsonl("runs/base/samples.jsonl"), read_jsonl("runs/bdhs/samples.jsonl"))
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np

from mmstudy.benchmarks.stats import paired_difference

logger = logging.getLogger(__name__)

ItemValues = dict  # item key -> {metric: float | (numerator, denominator)}


def _ratio(rows: np.ndarray) -> float:
    den = rows[:, 1].sum()
    return float(rows[:, 0].sum() / den) if den else 0.0


def _pope(samples: Iterable[dict]) -> ItemValues:
    return {(s["split"], s["question_id"]): {f"{s['split']}/accuracy": float(s["pred"] == s["label"]),
                                             "accuracy": float(s["pred"] == s["label"])} for s in samples}


def _object_rates(d: dict) -> dict:
    return {"chair_s": float(bool(d["hallucinated"])), "chair_i": (len(d["hallucinated"]), len(d["mentioned"])),
            "recall": (len(d["covered"]), len(d["gt"]))}


def _chair(samples: Iterable[dict]) -> ItemValues:
    """CHAIR as the reference scores it (each sample's "reference" record; "fixed" is the named alternative)."""
    return {s["image_id"]: _object_rates(s["reference"]) for s in samples}


def _objhal(samples: Iterable[dict]) -> ItemValues:
    return {s["index"]: {**_object_rates(s), **({"response_hallucination": float(bool(s["hallucinated"]))}
                                                if s["mentioned"] else {})}
            for s in samples if not s.get("extraction_failed")}


def _rated(samples: Iterable[dict]) -> ItemValues:
    return {s["index"]: {"score": float(s["rating"]), "hallucination_rate": float(s["rating"] < 3)}
            for s in samples if s.get("rating") is not None}


def _llava_w(samples: Iterable[dict]) -> ItemValues:
    # relative score = 100 x sum(model) / sum(reference): a ratio of sums over the paired questions
    return {s["question_id"]: {"relative_score": (100.0 * s["scores"][1], s["scores"][0])}
            for s in samples if s.get("scores")}


def _amber(samples: Iterable[dict]) -> ItemValues:
    """In percent, as AMBER reports (plain definitions, without the reference's rounding)."""
    out = {}
    for s in samples:
        if s["task"] == "generative":
            out[s["id"]] = {"chair": (100.0 * s["n_hallucinated"], s["n_nouns"]),
                            "cover": (100.0 * s["n_truth_covered"], s["n_truth"]),
                            "hal": 100.0 * s["has_hallucination"]}
        else:
            out[s["id"]] = {"accuracy": 100.0 * s["correct"], "accuracy_first_word": 100.0 * s["correct_first_word"]}
    return out


ITEM_VALUES: dict[str, Callable[[list[dict]], ItemValues]] = {
    "pope": _pope, "chair": _chair, "objhal": _objhal, "amber": _amber, "mmhal": _rated, "mmhal_v": _rated,
    "llava_w": _llava_w,
}


def _by_benchmark(samples: Iterable[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for s in samples:
        grouped.setdefault(s["benchmark"], []).append(s)
    return grouped


def compare_runs(a: list[dict], b: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """{"<benchmark>/<metric>": {"a", "b", "diff", "low", "high", "p_le_zero", "n"}} for every benchmark both runs
    hold and mmstudy can pair, over the items both runs answered (unpaired items are counted and logged)."""
    out = {}
    groups_a, groups_b = _by_benchmark(a), _by_benchmark(b)
    for name in sorted(set(groups_a) & set(groups_b)):
        if name not in ITEM_VALUES:
            logger.info("compare: no item-level pairing for %s; skipped", name)
            continue
        va, vb = ITEM_VALUES[name](groups_a[name]), ITEM_VALUES[name](groups_b[name])
        keys = [k for k in va if k in vb]
        if len(keys) < max(len(va), len(vb)):
            logger.warning("compare %s: %d items in A, %d in B, %d in both (only those are compared)", name, len(va),
                           len(vb), len(keys))
        metrics = sorted({m for k in keys for m in va[k]} & {m for k in keys for m in vb[k]})
        for metric in metrics:
            paired = [k for k in keys if metric in va[k] and metric in vb[k]]
            xa, xb = np.array([va[k][metric] for k in paired]), np.array([vb[k][metric] for k in paired])
            stat = _ratio if xa.ndim == 2 else np.mean
            d = paired_difference(xa, xb, stat, n_boot=n_boot, seed=seed)
            out[f"{name}/{metric}"] = {"a": float(stat(xa)), "b": float(stat(xb)), "diff": d["value"],
                                       "low": d["low"], "high": d["high"], "p_le_zero": d["p_le_zero"], "n": d["n"]}
    return out


def comparison_table(result: dict) -> str:
    lines = [f"{'metric':<34} {'A':>8} {'B':>8} {'B - A':>8}  95% CI of B - A      n"]
    for key, r in result.items():
        lines.append(f"{key:<34} {r['a']:>8.4f} {r['b']:>8.4f} {r['diff']:>+8.4f}  "
                     f"[{r['low']:+.4f}, {r['high']:+.4f}]  {r['n']}")
    return "\n".join(lines)
