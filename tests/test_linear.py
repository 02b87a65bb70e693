"""linear_scalarization: the baseline, as a transformation over stacked gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg


def test_weighted_sum_over_pytree():
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(3, 4, 2)), "b": rng.normal(size=(3,))}
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:]), grads)
    tx = cg.linear_scalarization([1.0, 4.0, 0.5])
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), tx.init(params), params)
    for name in grads:
        expected = np.tensordot([1.0, 4.0, 0.5], grads[name], axes=1)
        np.testing.assert_allclose(updates[name], expected, rtol=1e-6)


def test_default_weights_and_any_number_of_tasks():
    tx = cg.linear_scalarization()
    for k in (1, 2, 7):
        grads = jnp.arange(k * 3, dtype=jnp.float32).reshape(k, 3)
        updates, _ = tx.update(grads, tx.init(jnp.zeros(3)))
        np.testing.assert_allclose(updates, grads.sum(0))


def test_diagnostics_match_camegrad_statistics():
    rng = np.random.default_rng(1)
    grads = jnp.asarray(rng.normal(size=(2, 10)), jnp.float32)
    tx = cg.linear_scalarization([1.0, 4.0], diagnostics=True)
    updates, state = tx.update(grads, tx.init(jnp.zeros(10)))
    h = np.array([1.0, 4.0])[:, None] * np.asarray(grads)
    cosine = h[0] @ h[1] / np.linalg.norm(h[0]) / np.linalg.norm(h[1])
    np.testing.assert_allclose(state.stats.cosine_similarity[0, 1], cosine, rtol=1e-5)
    np.testing.assert_allclose(state.stats.update_norm, np.linalg.norm(updates), rtol=1e-5)
    np.testing.assert_allclose(
        state.stats.magnitude_collapse_ratio,
        np.linalg.norm(h.sum(0)) / np.linalg.norm(h, axis=1).sum(),
        rtol=1e-5,
    )


def test_bfloat16_preserved():
    grads = jnp.ones((2, 5), jnp.bfloat16)
    tx = cg.linear_scalarization()
    updates, _ = tx.update(grads, tx.init(jnp.zeros(5, jnp.bfloat16)))
    assert updates.dtype == jnp.bfloat16


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 1.0], [[1.0]], []])
def test_bad_task_weights(weights):
    with pytest.raises(ValueError, match="task_weights"):
        cg.linear_scalarization(weights)


def test_task_weights_checked_against_task_axis():
    tx = cg.linear_scalarization([1.0, 2.0])
    with pytest.raises(ValueError, match="K = 3"):
        tx.update(jnp.ones((3, 2)), tx.init(jnp.zeros(2)))


def test_unstacked_gradients_fail_against_params():
    tx = cg.linear_scalarization()
    with pytest.raises(ValueError, match="expected"):
        tx.update(jnp.ones((2, 3)), tx.init(jnp.zeros((2, 3))), jnp.zeros((2, 3)))
