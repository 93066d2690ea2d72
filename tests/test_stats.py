"""Bootstrap intervals and paired comparisons.  Run: pytest tests/test_stats.py"""

import numpy as np
import pytest

from mmstudy.benchmarks.stats import bootstrap_ci, paired_difference


def test_constant_values_give_a_degenerate_interval():
    ci = bootstrap_ci([1.0] * 50)
    assert ci["value"] == ci["low"] == ci["high"] == 1.0 and ci["n"] == 50


def test_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 100), seed=1)
    large = bootstrap_ci(rng.integers(0, 2, 10_000), seed=1)
    assert small["low"] <= small["value"] <= small["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 5
    # binomial standard error at p=0.5, n=100 is 0.05: a 95 % interval is about 0.2 wide
    assert 0.14 < small["high"] - small["low"] < 0.26


def test_deterministic_for_a_seed_and_rows_reach_the_statistic():
    rows = [[1, 1], [0, 1], [1, 0], [0, 0]]
    accuracy = lambda r: float(np.mean(r[:, 0] == r[:, 1]))  # noqa: E731
    assert bootstrap_ci(rows, accuracy, seed=3) == bootstrap_ci(rows, accuracy, seed=3)
    assert bootstrap_ci(rows, accuracy)["value"] == 0.5


def test_paired_difference_detects_a_real_gain_and_not_a_null_one():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 2000)
    better = np.where(rng.random(2000) < 0.2, 1, a)        # flips about 10 % of items to correct
    gain = paired_difference(a, better)
    assert gain["value"] > 0 and gain["low"] > 0 and gain["p_le_zero"] < 0.01
    same = paired_difference(a, a)
    assert same["value"] == same["low"] == same["high"] == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1, 0], level=1.5)
    assert np.isnan(bootstrap_ci([])["value"])


def test_seed_interval_is_a_t_interval():
    from mmstudy.benchmarks.stats import seed_interval

    ci = seed_interval([0.80, 0.82, 0.84])
    assert ci["mean"] == pytest.approx(0.82) and ci["sd"] == pytest.approx(0.02)
    assert ci["high"] - ci["mean"] == pytest.approx(4.303 * 0.02 / 3 ** 0.5)
    assert seed_interval([0.5]) == {"mean": 0.5, "low": None, "high": None, "sd": None, "n": 1}
    assert seed_interval([0.7] * 40)["low"] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        seed_interval([])


def test_hierarchical_paired_difference_pairs_seeds_and_items():
    from mmstudy.benchmarks.stats import hierarchical_paired_difference, minimal_detectable_effect

    rng = np.random.default_rng(0)
    a = [rng.random((500, 1)) < 0.7 for _ in range(3)]
    flip = [rng.random((500, 1)) < 0.05 for _ in range(3)]
    b = [x | f for x, f in zip(a, flip)]                     # b is right wherever a is, and on ~1.5 % more
    mean = lambda s: s[..., 0]  # noqa: E731  (rows are [x]; the mean is the sum over the count of items)
    ratio = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    rows = lambda xs: [np.hstack([x, np.ones_like(x)]).astype(float) for x in xs]  # noqa: E731
    d = hierarchical_paired_difference(rows(a), rows(b), ratio, n_boot=1000)
    true = np.mean([(x | f).mean() - x.mean() for x, f in zip(a, flip)])
    assert d["value"] == pytest.approx(true) and 0 < d["low"] < true < d["high"]
    assert d["n_seeds"] == 3 and d["n_items"] == 1500 and d["se"] > 0
    unpaired = hierarchical_paired_difference(rows(a), rows([rng.permutation(x) for x in b]), ratio, n_boot=1000)
    assert unpaired["se"] > 2 * d["se"]                      # pairing is what makes the interval narrow
    same = hierarchical_paired_difference(rows(a), rows(a), ratio, n_boot=200)
    assert same["low"] == same["high"] == same["se"] == 0
    assert hierarchical_paired_difference(rows(a), rows(b), ratio, n_boot=300, seed=4) == \
        hierarchical_paired_difference(rows(a), rows(b), ratio, n_boot=300, seed=4)
    assert minimal_detectable_effect(1.0) == pytest.approx(2.8016, abs=1e-3)
    with pytest.raises(ValueError, match="same, non-zero number of seeds"):
        hierarchical_paired_difference(rows(a), rows(b[:2]), mean)


def test_the_seeds_share_of_a_paired_difference():
    """Seeds whose models differ a lot (b gains 1 %, 10 %, 20 % over a) make a wide interval that more items would
    not narrow: holding the seeds fixed leaves only the items' small share."""
    from mmstudy.benchmarks.stats import hierarchical_paired_difference

    rng = np.random.default_rng(1)
    a = rng.random((2000, 1)) < 0.5                                   # the base: one run, the same for every seed
    ratio = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    rows = lambda xs: [np.hstack([x, np.ones_like(x)]).astype(float) for x in xs]  # noqa: E731
    b = [a | (rng.random((2000, 1)) < p) for p in (0.02, 0.2, 0.4)]
    full = hierarchical_paired_difference(rows([a] * 3), rows(b), ratio, n_boot=1000)
    items = hierarchical_paired_difference(rows([a] * 3), rows(b), ratio, n_boot=1000, resample_seeds=False)
    assert items["se"] < full["se"] / 5 and items["low"] < items["value"] < items["high"]


def test_items_are_crossed_with_seeds():
    """Every seed answers the same items: three identical seeds carry the information of one, not of three, and
    resampling them changes nothing."""
    from mmstudy.benchmarks.stats import hierarchical_paired_difference

    rng = np.random.default_rng(2)
    a = rng.random((1000, 1)) < 0.5
    b = a | (rng.random((1000, 1)) < 0.2)
    ratio = lambda s: s[..., 0] / s[..., 1]  # noqa: E731
    rows = lambda xs: [np.hstack([x, np.ones_like(x)]).astype(float) for x in xs]  # noqa: E731
    one = hierarchical_paired_difference(rows([a]), rows([b]), ratio, n_boot=2000)
    three = hierarchical_paired_difference(rows([a] * 3), rows([b] * 3), ratio, n_boot=2000)
    fixed = hierarchical_paired_difference(rows([a] * 3), rows([b] * 3), ratio, n_boot=2000, resample_seeds=False)
    assert three["value"] == pytest.approx(one["value"])
    assert three["se"] == pytest.approx(fixed["se"], rel=0.1) and three["se"] == pytest.approx(one["se"], rel=0.1)
    with pytest.raises(ValueError, match="same items"):
        hierarchical_paired_difference(rows([a, a[:500]]), rows([b, b[:500]]), ratio)
