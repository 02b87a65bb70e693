"""The stacked-gradient builder against NumPy: Σ_i β_i g_i on the shared leaves with β from the
raw Gram matrix and λ, Σ_i λ_i g_i on the others, the per-leaf wrapper, and its refusals."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax._aggregation import (
    stacked_gradient_transformation,
    stateless_weighting,
    weight_every_leaf,
)

MASK = {"trunk": True, "head": False}


def inverse_squared_norms():
    """b_i = 1 / ‖h_i‖² on the weighted gradients: β_i = λ_i b_i = 1 / (λ_i ‖g_i‖²)."""
    return stateless_weighting(lambda gram: 1.0 / jnp.diagonal(gram))


def problem(seed=0):
    rng = np.random.default_rng(seed)
    grads = {"trunk": rng.normal(size=(3, 4)), "head": rng.normal(size=(3, 2))}
    return grads, {name: jnp.asarray(g, jnp.float32) for name, g in grads.items()}


def test_shared_and_other_leaves_match_numpy():
    grads, stacked = problem()
    weights = np.array([1.0, 2.0, 0.5])
    tx = stacked_gradient_transformation(
        inverse_squared_norms(), name="inv", num_tasks=None, task_weights=weights, shared_mask=MASK
    )
    params = {"trunk": jnp.zeros(4), "head": jnp.zeros(2)}
    updates, state = tx.update(stacked, tx.init(params), params)
    beta = 1.0 / (weights * np.sum(grads["trunk"] ** 2, axis=1))
    np.testing.assert_allclose(state.coefficients, beta, rtol=1e-5)
    np.testing.assert_allclose(updates["trunk"], beta @ grads["trunk"], rtol=1e-5)
    np.testing.assert_allclose(updates["head"], weights @ grads["head"], rtol=1e-5)
    norms = np.linalg.norm(grads["trunk"], axis=1)
    np.testing.assert_allclose(state.stats.task_norms, weights * norms, rtol=1e-5)


def test_weight_every_leaf_applies_the_coefficients_to_the_other_leaves():
    grads, stacked = problem(1)
    inner = stacked_gradient_transformation(
        inverse_squared_norms(), name="inv", num_tasks=None, task_weights=None, shared_mask=MASK
    )
    tx = weight_every_leaf(inner, MASK)
    updates, state = tx.update(stacked, tx.init(None))
    beta = 1.0 / np.sum(grads["trunk"] ** 2, axis=1)
    np.testing.assert_allclose(updates["head"], beta @ grads["head"], rtol=1e-5)
    np.testing.assert_allclose(updates["trunk"], beta @ grads["trunk"], rtol=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="`task_weights` has 2 entries but `num_tasks = 3`"):
        stacked_gradient_transformation(
            inverse_squared_norms(), name="inv", num_tasks=3, task_weights=[1.0, 1.0]
        )
    tx = stacked_gradient_transformation(
        inverse_squared_norms(), name="inv", num_tasks=None, task_weights=None
    )
    with pytest.raises(ValueError, match="leaves disagree on the task axis size"):
        tx.update({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}, tx.init(None))
