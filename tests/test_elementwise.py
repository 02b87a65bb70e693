"""The element-wise weighting builder against NumPy: the update Σ_i A_i ⊙ λ_i g_i on the shared
leaves, Σ_i λ_i g_i on the others, each task's effective coefficient, NaN on non-finite input."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camegrad_jax._elementwise import elementwise_weighting_transformation


def positive_entries(h, state):
    return [(leaf > 0).astype(leaf.dtype) for leaf in h], state


def transformation(**kwargs):
    return elementwise_weighting_transformation(
        positive_entries, lambda k: optax.EmptyState(), name="positive", **kwargs
    )


def test_update_and_coefficients_match_numpy():
    rng = np.random.default_rng(0)
    grads = {"shared": rng.normal(size=(3, 4)), "head": rng.normal(size=(3, 2))}
    weights = np.array([1.0, 0.5, 2.0])
    mask = {"shared": True, "head": False}
    tx = transformation(num_tasks=None, task_weights=weights, shared_mask=mask)
    params = {"shared": jnp.zeros(4), "head": jnp.zeros(2)}
    stacked = {name: jnp.asarray(g, jnp.float32) for name, g in grads.items()}
    updates, state = tx.update(stacked, tx.init(params), params)
    h = weights[:, None] * grads["shared"]
    kept = (h > 0) * h
    np.testing.assert_allclose(updates["shared"], kept.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(updates["head"], weights @ grads["head"], rtol=1e-5)
    expected = weights * np.sum(kept * h, axis=1) / np.sum(h * h, axis=1)
    np.testing.assert_allclose(state.coefficients, expected, rtol=1e-5)


def test_non_finite_gradients_poison_the_update():
    tx = transformation(num_tasks=2, task_weights=None)
    updates, state = tx.update(jnp.array([[1.0, jnp.nan], [1.0, 2.0]]), tx.init(jnp.zeros(2)))
    assert np.all(np.isnan(updates))
    assert np.all(np.isnan(state.coefficients))


def test_a_state_built_for_another_task_count_is_refused():
    tx = transformation(num_tasks=3, task_weights=None)
    with pytest.raises(ValueError, match="K = 2 tasks, but positive's state was built for K = 3"):
        tx.update(jnp.ones((2, 2)), tx.init(jnp.zeros(2)))
