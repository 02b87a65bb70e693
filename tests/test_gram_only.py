"""Gram-only mode: equal to the standard mode on the full parameter set, O(P) memory otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg


def make_problem(width=16, depth_in=6, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    params = {
        "trunk": jax.random.normal(keys[0], (depth_in, width)) / np.sqrt(depth_in),
        "last": jax.random.normal(keys[1], (width, width)) / np.sqrt(width),
        "head_a": jax.random.normal(keys[2], (width,)),
        "head_b": jax.random.normal(keys[3], (width,)),
    }
    x = jax.random.normal(keys[4], (32, depth_in))

    def encode(p, x):
        return jnp.tanh(jnp.tanh(x @ p["trunk"]) @ p["last"])

    def decode(p, z, x):
        del x
        return jnp.stack([jnp.mean((z @ p["head_a"] - 1.0) ** 2), jnp.mean((z @ p["head_b"]) ** 2)])

    def losses(p, x):
        return decode(p, encode(p, x), x)

    return params, x, losses, encode, decode


SHARED = {"trunk": True, "last": True, "head_a": False, "head_b": False}


def standard_mode(tx, params, losses, x, shared_mask=None):
    values, grads = cg.task_gradients(losses, params, x)
    update, state = tx.update(grads, tx.init(params), params, value=values)
    return values, update, state


@pytest.mark.parametrize("shared_mask", [None, SHARED])
def test_equals_standard_mode_on_full_shared_set(shared_mask):
    params, x, losses, _, _ = make_problem()
    tx = cg.camegrad(0.5, 1.5, 0.2, task_weights=[1.0, 4.0], shared_mask=shared_mask)
    _, expected, expected_state = standard_mode(tx, params, losses, x)
    values, grads, state = jax.jit(
        lambda p: cg.gram_only_gradients(
            losses,
            p,
            x,
            transform=tx,
            state=tx.init(p),
            gram_mask=shared_mask,
            shared_mask=shared_mask,
            task_weights=[1.0, 4.0],
        )
    )(params)
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(state.coefficients, expected_state.coefficients, rtol=1e-5)


def test_subset_gram_uses_that_subset_geometry():
    params, x, losses, _, _ = make_problem()
    tx = cg.camegrad(0.5, 1.5, 0.2, num_tasks=2)
    gram_mask = {"trunk": False, "last": True, "head_a": False, "head_b": False}
    _, grads, state = cg.gram_only_gradients(
        losses, params, x, transform=tx, state=tx.init(params), gram_mask=gram_mask
    )
    jacobian = jax.jacrev(losses)(params, x)
    last = np.asarray(jacobian["last"]).reshape(2, -1)
    weights = cg.camegrad_weights(jnp.asarray(last @ last.T), c=0.5, gamma=1.5, alpha=0.2)
    np.testing.assert_allclose(state.coefficients, weights.coefficients, rtol=1e-4)
    for name in params:
        expected = np.tensordot(np.asarray(weights.coefficients), np.asarray(jacobian[name]), 1)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=1e-6)


def test_representation_mode_uses_gradients_wrt_the_representation():
    params, x, _, encode, decode = make_problem()
    tx = cg.camegrad(0.5, 1.5, 0.2, num_tasks=2)
    _, grads, state = cg.gram_only_gradients(
        None, params, x, transform=tx, state=tx.init(params), representation=(encode, decode)
    )
    z = encode(params, x)
    dz = np.asarray(jax.jacrev(lambda z: decode(params, z, x))(z)).reshape(2, -1)
    weights = cg.camegrad_weights(jnp.asarray(dz @ dz.T), c=0.5, gamma=1.5, alpha=0.2)
    np.testing.assert_allclose(state.coefficients, weights.coefficients, rtol=1e-4)
    full = jax.jacrev(lambda p: decode(p, encode(p, x), x))(params)
    for name in params:
        expected = np.tensordot(np.asarray(weights.coefficients), np.asarray(full[name]), 1)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=1e-6)


def test_memory_is_o_of_p_not_k_times_p():
    # A wide trunk and K = 8 tasks: the standard mode holds 8 stacked copies of the trunk.
    width, k = 256, 8
    key = jax.random.key(0)
    params = {"trunk": jax.random.normal(key, (width, width)) / 16, "heads": jnp.ones((k, width))}
    x = jax.random.normal(key, (4, width))

    def losses(p, x):
        z = jnp.tanh(x @ p["trunk"])
        return jnp.mean((z @ p["heads"].T) ** 2, axis=0)

    tx = cg.camegrad(num_tasks=k)
    mask = {"trunk": False, "heads": True}

    def gram_only(p):
        return cg.gram_only_gradients(losses, p, x, transform=tx, state=tx.init(p), gram_mask=mask)[
            1
        ]

    def standard(p):
        values, grads = cg.task_gradients(losses, p, x)
        return tx.update(grads, tx.init(p), p)[0]

    def temp_bytes(fn):
        return jax.jit(fn).lower(params).compile().memory_analysis().temp_size_in_bytes

    trunk_bytes = width * width * 4
    assert temp_bytes(standard) >= k * trunk_bytes
    assert temp_bytes(gram_only) < 3 * trunk_bytes


def test_needs_recorded_coefficients():
    params, x, losses, _, _ = make_problem()
    tx = cg.linear_scalarization()
    with pytest.raises(ValueError, match="diagnostics=True"):
        cg.gram_only_gradients(losses, params, x, transform=tx, state=tx.init(params))
    tx = cg.linear_scalarization(num_tasks=2, diagnostics=True)
    values, grads, _ = cg.gram_only_gradients(
        losses, params, x, transform=tx, state=tx.init(params)
    )
    expected = jax.grad(lambda p: jnp.sum(losses(p, x)))(params)
    for name in params:
        np.testing.assert_allclose(grads[name], expected[name], rtol=1e-5, atol=1e-7)


def test_exactly_one_source_of_the_gram_matrix():
    params, x, losses, encode, decode = make_problem()
    tx = cg.camegrad(num_tasks=2)
    with pytest.raises(ValueError, match="exactly one"):
        cg.gram_only_gradients(
            losses,
            params,
            x,
            transform=tx,
            state=tx.init(params),
            representation=(encode, decode),
        )
    with pytest.raises(ValueError, match="alternatives"):
        cg.gram_only_gradients(
            None,
            params,
            x,
            transform=tx,
            state=tx.init(params),
            gram_mask=SHARED,
            representation=(encode, decode),
        )
