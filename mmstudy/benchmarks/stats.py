"""Uncertainty for benchmark numbers: percentile-bootstrap confidence intervals and paired run comparisons.

Every headline metric is a statistic of per-item values (a 0/1 correctness per POPE question, a per-caption
hallucination count, ...). Resampling items with replacement gives a 95 % interval; resampling the same items for
two runs of the same benchmark gives an interval for their difference.

    >>> bootstrap_ci([1, 0, 1, 1], np.mean)        # {"value": 0.75, "low": ..., "high": ..., "n": 4, ...}
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

Statistic = Callable[[np.ndarray], float]


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: Sequence, statistic: Statistic = np.mean, *, n_boot: int = 1000, level: float = 0.95,
                 seed: int = 0) -> dict:
    """Percentile bootstrap of `statistic` over items: {"value", "low", "high", "level", "n", "n_boot"}.

    `values` is (N,) or (N, k) (one row per item, e.g. prediction and label); the statistic receives rows.
    Empty input gives NaNs rather than an error, so a report can still be written.
    """
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    arr = np.asarray(values)
    n = len(arr)
    if n == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "level": level, "n": 0,
                "n_boot": n_boot}
    boots = np.array([statistic(arr[idx]) for idx in _resample_indices(n, n_boot, seed)])
    alpha = (1 - level) / 2
    return {"value": float(statistic(arr)), "low": float(np.quantile(boots, alpha)),
            "high": float(np.quantile(boots, 1 - alpha)), "level": level, "n": n, "n_boot": n_boot}


def paired_difference(a: Sequence, b: Sequence, statistic: Statistic = np.mean, *, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """statistic(b) - statistic(a) on the same items, with a paired percentile-bootstrap interval.

    a[i] and b[i] must describe the same item in both runs. Adds "p_le_zero": the share of bootstrap differences
    <= 0 (small when b is reliably better than a).
    """
    a_arr, b_arr = np.asarray(a), np.asarray(b)
    if len(a_arr) != len(b_arr):
        raise ValueError(f"paired comparison needs the same items: got {len(a_arr)} and {len(b_arr)}")
    if len(a_arr) == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "p_le_zero": float("nan"),
                "level": level, "n": 0, "n_boot": n_boot}
    diffs = np.array([statistic(b_arr[idx]) - statistic(a_arr[idx])
                      for idx in _resample_indices(len(a_arr), n_boot, seed)])
    alpha = (1 - level) / 2
    return {"value": float(statistic(b_arr) - statistic(a_arr)), "low": float(np.quantile(diffs, alpha)),
            "high": float(np.quantile(diffs, 1 - alpha)), "p_le_zero": float(np.mean(diffs <= 0)),
            "level": level, "n": len(a_arr), "n_boot": n_boot}


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1-10); beyond, the normal 1.96 is within 6 %.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_interval(values: Sequence[float]) -> dict:
    """A 95 % t-interval of the mean over runs that differ only in their seed: {"mean", "low", "high", "sd", "n"}.
    With one run there is no interval (low = high = None). Seeds are few (3 in the study), so the interval is wide:
    t(0.975, 2) = 4.30 standard errors."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or not len(v):
        raise ValueError(f"seed_interval needs a non-empty list of numbers, got shape {v.shape}")
    mean = float(v.mean())
    if len(v) == 1:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1}
    sd = float(v.std(ddof=1))
    t = _T95[len(v) - 2] if len(v) - 1 <= len(_T95) else 1.96
    half = t * sd / np.sqrt(len(v))
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": len(v)}


# Normal quantiles for the minimal detectable effect of a two-sided 95 % test at 80 % power.
Z_975, Z_80 = 1.959964, 0.841621


def hierarchical_paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], statistic: Statistic, *,
                                   n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                                   resample_seeds: bool = True) -> dict:
    """statistic(pooled b) - statistic(pooled a) for runs paired by seed and by item, with a two-way bootstrap.

    a[s] and b[s] are (N, k) rows of the same N items in the same order for every seed s (the two models' runs with
    that seed; the base model is the same run for every seed). Items are crossed with seeds, not nested in them:
    every seed answers the same questions about the same images, so an item that is hard for one seed's model is
    hard for the others. Each replicate therefore draws the seeds with replacement and, independently, one
    multiset of items that every drawn seed uses, and recomputes the difference on the pooled rows. `statistic`
    maps summed rows (..., k) to a value, vectorized over the leading axes (e.g. a ratio of sums
    `s[..., 0] / s[..., 1]`), so a replicate is a weighted sum: every metric of the report is a function of sums
    of per-item rows. With resample_seeds=False every seed is drawn once and only the items are resampled: the
    part of the uncertainty that more items can reduce. Returns {"value", "low", "high", "se", "p_le_zero",
    "n_seeds", "n_items", ...}; se is the bootstrap standard deviation of the difference; n_items counts rows
    over the seeds.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same, non-zero number of seeds for both models, got {len(a)} and {len(b)}")
    a = [np.asarray(x, dtype=float) for x in a]
    b = [np.asarray(x, dtype=float) for x in b]
    for s, (xa, xb) in enumerate(zip(a, b)):
        if xa.shape != xb.shape or xa.ndim != 2 or not len(xa):
            raise ValueError(f"seed {s}: paired rows need equal (N, k) shapes with N > 0, got {xa.shape}, {xb.shape}")
        if xa.shape != a[0].shape:
            raise ValueError(f"seed {s}: every seed needs the same items, got {xa.shape} rows against {a[0].shape}")
    rng = np.random.default_rng(seed)
    n_seeds, (n, k) = len(a), a[0].shape
    draws = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_boot) if resample_seeds \
        else np.ones((n_boot, n_seeds), dtype=int)                                # times each seed is drawn
    # Resampling N items uniformly is a multinomial over the distinct rows (an item's a and b rows for every seed,
    # side by side) weighted by how many items share each: the same replicates, with fewer categories than items.
    patterns, counts = np.unique(np.hstack([np.hstack([xa, xb]) for xa, xb in zip(a, b)]), axis=0,
                                 return_counts=True)
    per_seed = (rng.multinomial(n, counts / n, size=n_boot) @ patterns).reshape(n_boot, n_seeds, 2, k)
    sums_a = np.einsum("rs,rsk->rk", draws, per_seed[:, :, 0])
    sums_b = np.einsum("rs,rsk->rk", draws, per_seed[:, :, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = statistic(sums_b) - statistic(sums_a)
        value = float(statistic(sum(x.sum(0) for x in b)) - statistic(sum(x.sum(0) for x in a)))
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs) or not np.isfinite(value):   # e.g. a ratio with nothing to count (no object mentioned)
        nan = float("nan")
        return {"value": nan, "low": nan, "high": nan, "se": nan, "p_le_zero": nan, "level": level,
                "n_seeds": n_seeds, "n_items": int(sum(len(x) for x in a)), "n_boot": n_boot}
    alpha = (1 - level) / 2
    return {"value": value, "low": float(np.quantile(diffs, alpha)), "high": float(np.quantile(diffs, 1 - alpha)),
            "se": float(diffs.std(ddof=1)), "p_le_zero": float(np.mean(diffs <= 0)), "level": level,
            "n_seeds": n_seeds, "n_items": int(sum(len(x) for x in a)), "n_boot": n_boot}


def minimal_detectable_effect(se: float) -> float:
    """The smallest true difference a two-sided 95 % test detects with 80 % power, given the standard error of the
    estimated difference: (z_0.975 + z_0.8) * se."""
    return (Z_975 + Z_80) * se
