"""The gradient statistics against NumPy formed from the gradients themselves (not the Gram)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from camegrad_jax._diagnostics import empty_stats, gradient_stats, quadratic_norm


def test_gradient_stats_match_numpy_from_the_gradients():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 7))
    weights, coefficients = np.array([1.0, 0.5, 2.0]), np.array([0.2, -0.1, 0.7])
    stats = gradient_stats(
        jnp.asarray(grads @ grads.T), jnp.asarray(coefficients), jnp.asarray(weights)
    )
    norms = np.linalg.norm(grads, axis=1)
    cosine = grads @ grads.T / np.outer(norms, norms)
    joint = np.linalg.norm(weights @ grads)
    np.testing.assert_allclose(stats.cosine_similarity, cosine, rtol=1e-5, atol=1e-6)
    assert bool(stats.any_conflict) == bool(np.any(cosine < 0))
    np.testing.assert_allclose(stats.task_norms, weights * norms, rtol=1e-5)
    np.testing.assert_allclose(stats.joint_norm, joint, rtol=1e-5)
    np.testing.assert_allclose(stats.update_norm, np.linalg.norm(coefficients @ grads), rtol=1e-5)
    np.testing.assert_allclose(
        stats.magnitude_collapse_ratio, joint / np.sum(weights * norms), rtol=1e-5
    )


def test_zero_gradients_give_zero_cosines_and_no_collapse():
    stats = gradient_stats(jnp.zeros((2, 2)), jnp.ones(2), jnp.ones(2))
    assert np.all(np.asarray(stats.cosine_similarity) == 0.0)
    assert not bool(stats.any_conflict)
    assert float(stats.magnitude_collapse_ratio) == 1.0


def test_quadratic_norm_clips_round_off_below_zero():
    # An indefinite matrix stands for round-off: the norm is 0, not NaN.
    assert float(quadratic_norm(jnp.ones(2), jnp.array([[0.0, -1.0], [-1.0, 0.0]]))) == 0.0


def test_empty_stats_have_the_shapes_of_real_stats():
    empty, real = empty_stats(3), gradient_stats(jnp.eye(3), jnp.ones(3), jnp.ones(3))
    for a, b in zip(empty, real, strict=True):
        assert jnp.shape(a) == jnp.shape(b)
        assert jnp.asarray(a).dtype == jnp.asarray(b).dtype
