"""eval.stats against exact enumeration: the bootstrap distribution and the sign-flip null of tiny samples are
enumerated in full (itertools), independently of numpy's resampling."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from eval import stats


def exact_quantile(dist: dict[Fraction, Fraction], q: float) -> Fraction:
    """Smallest value whose CDF reaches q (the q-quantile of a discrete distribution)."""
    total = Fraction(0)
    for value in sorted(dist):
        total += dist[value]
        if total >= Fraction(q).limit_denominator(10_000):
            return value
    raise AssertionError("CDF never reached q")


def bootstrap_distribution(values: list[int]) -> dict[Fraction, Fraction]:
    """Every one of the n^n equally likely resamples, and the mean of each."""
    n = len(values)
    dist: dict[Fraction, Fraction] = {}
    for draw in itertools.product(values, repeat=n):
        mean = Fraction(sum(draw), n)
        dist[mean] = dist.get(mean, Fraction(0)) + Fraction(1, n**n)
    return dist


def test_bootstrap_ci_of_a_task_mean_matches_the_enumerated_quantiles():
    # hand-worked: resample means of [0, 0, 0, 100] are 25*k, k ~ Binomial(4, 1/4):
    # P = 81, 108, 54, 12, 1 (/256); CDF .316 .738 .949 .996 1 -> 2.5% quantile 0, 97.5% quantile 75
    values = [0, 0, 0, 100]
    dist = bootstrap_distribution(values)
    assert dist[Fraction(75)] == Fraction(12, 256)
    assert (exact_quantile(dist, 0.025), exact_quantile(dist, 0.975)) == (0, 75)
    assert stats.bootstrap_ci({"t": values}) == (0.0, 75.0)


def test_bootstrap_ci_of_an_average_resamples_within_each_task():
    # avg of two tasks = (mean_a + mean_b) / 2; enumerate the product of both tasks' resample distributions
    a, b = [0, 100, 100], [0, 0, 50]
    da, db = bootstrap_distribution(a), bootstrap_distribution(b)
    avg: dict[Fraction, Fraction] = {}
    for (x, px), (y, py) in itertools.product(da.items(), db.items()):
        avg[(x + y) / 2] = avg.get((x + y) / 2, Fraction(0)) + px * py
    expected = (float(exact_quantile(avg, 0.025)), float(exact_quantile(avg, 0.975)))
    low, high = stats.bootstrap_ci({"a": a, "b": b}, {"a": 0.5, "b": 0.5})
    # 10,000 resamples: the empirical quantiles land within one support step (1/6 of 100 / 2) of the exact ones
    assert low == pytest.approx(expected[0], abs=100 / 6 / 2 + 1e-9)
    assert high == pytest.approx(expected[1], abs=100 / 6 / 2 + 1e-9)
    assert stats.weighted_mean({"a": a, "b": b}) == pytest.approx((200 / 3 + 50 / 3) / 2)


def test_bootstrap_is_seeded_and_a_constant_sample_has_a_point_ci():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert stats.bootstrap_ci({"t": values}) == stats.bootstrap_ci({"t": values})
    assert stats.bootstrap_ci({"t": [7.0] * 5}) == (7.0, 7.0)


def test_sign_flip_p_value_matches_exact_enumeration():
    a = [100, 100, 100, 0, 100, 100, 0, 100, 50, 100]
    b = [0, 0, 100, 0, 0, 50, 0, 0, 50, 100]
    d = [x - y for x, y in zip(a, b)]
    observed = sum(d) / len(d)
    flips = list(itertools.product((-1, 1), repeat=len(d)))
    exact = sum(abs(sum(s * x for s, x in zip(signs, d))) / len(d) >= observed for signs in flips) / len(
        flips
    )
    result = stats.paired_test({"t": a}, {"t": b})
    assert result.diff == pytest.approx(observed)
    # Monte Carlo with 10,000 flips: 4 standard errors of a binomial proportion
    assert result.p_value == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 10_000) + 1e-4)
    assert result.n == 10


def test_paired_ci_is_the_bootstrap_of_the_differences_and_flags_noise():
    a, b = [0, 0, 100, 100], [0, 0, 0, 100]
    d = [x - y for x, y in zip(a, b)]  # [0, 0, 100, 0]: resample means 25k, k ~ Bin(4, 1/4)
    dist = bootstrap_distribution(d)
    result = stats.paired_test({"t": a}, {"t": b})
    assert (result.low, result.high) == (
        float(exact_quantile(dist, 0.025)),
        float(exact_quantile(dist, 0.975)),
    )
    assert (result.low, result.high) == (0.0, 75.0) and result.within_noise
    clear = stats.paired_test({"t": [100] * 30}, {"t": [0] * 25 + [100] * 5})
    assert clear.low > 0 and not clear.within_noise and clear.p_value < 0.001


def test_paired_test_refuses_different_samples():
    with pytest.raises(ValueError, match="task 't': 3 vs 2 samples"):
        stats.paired_test({"t": [1, 2, 3]}, {"t": [1, 2]})
    with pytest.raises(ValueError, match="same tasks"):
        stats.paired_test({"t": [1]}, {"u": [1]})


def test_few_same_sign_differences_stay_within_noise():
    # 4 of 8 samples lost: the bootstrap CI of the difference excludes 0 (a resample without a loss has probability
    # 0.5^8 < 2.5%), but the exact sign-flip p is P(|sum of 4 random signs| = 4) = 2/16: not a real difference
    a, b = [0.0] * 4 + [100.0] * 4, [100.0] * 8
    result = stats.paired_test({"t": a}, {"t": b})
    assert result.high < 0 and result.p_value == pytest.approx(0.125, abs=0.015)
    assert result.within_noise
