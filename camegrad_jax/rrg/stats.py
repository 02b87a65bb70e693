"""Small statistics for comparing runs: paired tests of a difference, and the update-noise trace.

* :func:`paired_bootstrap_ci`: percentile bootstrap of the mean of paired differences (e.g. the
  per-seed differences ``method − linear`` of a metric on the same data and seeds).
* :func:`sign_flip_p_value`: the exact paired sign-flip (randomisation) test of a zero mean;
* :func:`covariance_trace`: trace of the sample covariance of vectors, the paper's measure of
  the update noise (Appendix B.2), computed without forming the covariance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["BootstrapCI", "covariance_trace", "paired_bootstrap_ci", "sign_flip_p_value"]


class BootstrapCI(NamedTuple):
    """A bootstrap interval ``[low, high]`` of a mean, and the observed ``mean``."""

    low: float
    high: float
    mean: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def paired_bootstrap_ci(
    differences: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap interval of the mean of paired differences.

    The n differences are resampled with replacement ``resamples`` times; the interval is the
    ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled means (numpy's
    default linear interpolation between order statistics).

    With few pairs the interval is coarse: it can never leave ``[min, max]`` of the differences,
    and with n = 2 or 3 seeds it says little more than whether all differences share a sign.

    Args:
      differences: the paired differences, one per pair (e.g. per seed), finite.
      confidence: the interval's nominal coverage, in (0, 1).
      resamples: bootstrap resamples.
      seed: seed of the resampling.

    Returns:
      A :class:`BootstrapCI`: ``low`` and ``high``, and ``mean``, the observed mean difference.

    Examples:
      >>> paired_bootstrap_ci([1.0, 1.0, 1.0])
      BootstrapCI(low=1.0, high=1.0, mean=1.0)
      >>> ci = paired_bootstrap_ci([0.02, 0.01, 0.03, 0.02], seed=1)
      >>> ci.excludes_zero(), round(ci.mean, 3)
      (True, 0.02)
    """
    values = np.asarray(differences, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("`differences` should hold at least one value.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`differences` should be finite. Found {values.tolist()}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` should lie in (0, 1). Found `confidence = {confidence}`.")
    if not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"`resamples` should be a positive int. Found `resamples = {resamples}`.")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return BootstrapCI(float(low), float(high), float(values.mean()))


def covariance_trace(samples: np.ndarray) -> float:
    """Trace of the sample covariance (ddof 1) of the rows of ``samples``.

    ``tr Σ̂ = Σ_j var_j = (1 / (M − 1)) Σ_m ‖x_m − x̄‖²`` for M samples x_m of dimension P,
    in float64, without the P × P matrix.

    Args:
      samples: ``(M, P)``, one sample per row, M ≥ 2.

    Returns:
      The trace, a float ≥ 0.

    Examples:
      >>> covariance_trace(np.array([[0.0, 0.0], [2.0, 4.0]]))  # variances 2 and 8
      10.0
    """
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[0] < 2:
        raise ValueError(
            f"`samples` should be (M, P) with M >= 2 samples. Found shape {samples.shape}."
        )
    centred = samples - samples.mean(axis=0)
    return float(np.sum(centred * centred) / (samples.shape[0] - 1))


def sign_flip_p_value(differences: Sequence[float]) -> float:
    """Exact two-sided p-value of the paired sign-flip (randomisation) test of a zero mean.

    Under the null each difference is equally likely positive or negative; the p-value is the
    share of the 2^n sign patterns whose |mean| reaches the observed one. With n pairs it can
    never fall below 2^(1 − n) (0.5 for two seeds, 0.25 for three).

    Examples:
      >>> sign_flip_p_value([1.0, 2.0, 3.0])  # only +++ and --- reach |mean| >= 2
      0.25
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0 or values.size > 20:
        raise ValueError(f"`differences` should hold 1 to 20 values. Found {values.size}.")
    observed = abs(values.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=values.size)))
    means = np.abs(signs @ values) / values.size
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))
