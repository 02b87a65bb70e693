"""The paired statistics against exact references: the bootstrap against the exact resampling
distribution, the sign-flip test and the covariance trace by hand."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from camegrad_jax.rrg.stats import covariance_trace, paired_bootstrap_ci, sign_flip_p_value


def test_bootstrap_of_equal_differences_is_a_point():
    ci = paired_bootstrap_ci([1.0, 1.0, 1.0])
    assert (ci.low, ci.high, ci.mean) == (1.0, 1.0, 1.0)
    assert ci.excludes_zero()
    assert paired_bootstrap_ci([0.0, 0.0]).excludes_zero() is False


def exact_bootstrap_quantile(differences, level):
    """The level-quantile of the exact bootstrap distribution of the mean (all n^n equally
    likely resamples), as the smallest atom whose CDF reaches the level, with the distance of
    the level from the CDF's jumps (how well a Monte Carlo bootstrap pins it down)."""
    n = len(differences)
    weights: dict[Fraction, Fraction] = {}
    for picks in itertools.product(differences, repeat=n):
        mean = Fraction(sum(picks), n)
        weights[mean] = weights.get(mean, 0) + Fraction(1, n**n)
    cdf = Fraction(0)
    for atom in sorted(weights):
        below = cdf
        cdf += weights[atom]
        if cdf >= level:
            return float(atom), float(min(level - below, cdf - level))
    raise AssertionError("unreachable")


def test_bootstrap_matches_the_exact_resampling_distribution():
    differences = [0, 1, 2, 7]  # 4^4 = 256 equally likely resamples
    low, low_margin = exact_bootstrap_quantile(differences, Fraction(25, 1000))
    high, high_margin = exact_bootstrap_quantile(differences, Fraction(975, 1000))
    assert (low, high) == (0.5, 5.5)
    # Both levels sit well inside a CDF step, many Monte Carlo standard errors from its edges.
    assert min(low_margin, high_margin) > 10 * np.sqrt(0.025 * 0.975 / 100_000)
    ci = paired_bootstrap_ci([float(d) for d in differences], 0.95, resamples=100_000, seed=3)
    assert (ci.low, ci.high) == (low, high)
    assert ci.mean == 2.5


def test_bootstrap_covers_a_skewed_mean_as_the_normal_interval_does():
    # 2000 samples of 30 exponential draws (mean 1, skewed: a median differs from the mean).
    # The percentile interval of the resampled means is, to first order, the normal interval
    # mean ± z·σ̂/√n (σ̂ with ddof 0, the resampled means' spread); on the same samples both
    # cover the true mean equally often, a little under 95% on skewed data (about 91-92% here).
    rng = np.random.default_rng(7)
    samples = rng.exponential(size=(2000, 30))
    covered = []
    for seed, sample in enumerate(samples):
        ci = paired_bootstrap_ci(sample, 0.95, resamples=1000, seed=seed)
        covered.append(ci.low <= 1.0 <= ci.high)
    half_width = 1.959964 * samples.std(axis=1) / np.sqrt(30)
    normal = np.mean(np.abs(samples.mean(axis=1) - 1.0) <= half_width)
    assert 0.88 <= normal <= 0.97
    # The Monte Carlo standard error of either coverage is 0.6 points; a 90% interval (a wrong
    # tail) would cover about 5 points less, an interval of the median about 25 less.
    assert abs(np.mean(covered) - normal) <= 0.025, (np.mean(covered), normal)


def test_bootstrap_resamples_every_difference():
    # Two differences {0, 1}: a resample's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4,
    # so the 95% interval is [0, 1] in either order.
    for differences in ([0.0, 1.0], [1.0, 0.0]):
        ci = paired_bootstrap_ci(differences, resamples=2000)
        assert (ci.low, ci.high) == (0.0, 1.0), differences
    # One outlier among ten: a resample holds it with probability 1 - 0.9^10 = 0.65, so the
    # upper end is at least the mean of a resample holding it once, wherever it is listed.
    for position in range(10):
        differences = np.zeros(10)
        differences[position] = 100.0
        ci = paired_bootstrap_ci(differences, resamples=2000)
        assert ci.low == 0.0 and ci.high >= 10.0, position


def test_bootstrap_validates_its_arguments():
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([1.0, np.nan])
    with pytest.raises(ValueError, match="`confidence`"):
        paired_bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="`resamples`"):
        paired_bootstrap_ci([1.0], resamples=0)


def test_sign_flip_p_value_by_hand():
    # [1, 1]: sign patterns ++ (mean 1), +- (0), -+ (0), -- (-1): |mean| >= 1 in 2 of 4.
    assert sign_flip_p_value([1.0, 1.0]) == 0.5
    # [1, 2, 3]: only +++ and --- reach |mean| >= 2, 2 of 8.
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == 0.25
    # [3, -1]: |mean| 1 observed; patterns give 1, 2, 2, 1: all 4 reach it.
    assert sign_flip_p_value([3.0, -1.0]) == 1.0


def test_covariance_trace_by_hand():
    samples = np.array([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    # Columns (1, 3, 5) and (2, 6, 10): variances (4 + 0 + 4) / 2 = 4 and (16 + 0 + 16) / 2 = 16.
    assert covariance_trace(samples) == 20.0
    assert covariance_trace(samples + np.array([100.0, -7.0])) == pytest.approx(20.0)
    assert covariance_trace(3.0 * samples) == pytest.approx(9.0 * 20.0)
    rng = np.random.default_rng(0)
    random = rng.normal(size=(6, 4))
    assert covariance_trace(random) == pytest.approx(np.trace(np.cov(random, rowvar=False)))
    with pytest.raises(ValueError, match="M >= 2"):
        covariance_trace(samples[:1])
