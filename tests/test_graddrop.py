"""GradDrop against Algorithm 1 of the paper in NumPy (with the uniform draws of the documented
key schedule), torchjd's fixed value in distribution, and its properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    run,
)

import camegrad_jax as cg
from camegrad_jax._graddrop import graddrop

DIM = 16
K = 3
# torchjd's tests/unit/aggregation/test_values.py: GradDrop() on J_base gives [6, 2, 2] for its
# seed; the first entry is 6 with probability P = 0.6, else -4.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])


def first_step_uniforms(seed, shapes):
    """The draws of the first update: the seed's key split once, then once per shared leaf."""
    _, draw = jax.random.split(jax.random.PRNGKey(seed))
    keys = jax.random.split(draw, len(shapes))
    return [
        np.asarray(jax.random.uniform(key, shape, jnp.float32))
        for key, shape in zip(keys, shapes, strict=True)
    ]


def numpy_graddrop(h, uniform, leak, f=lambda p: p):
    """Lines 10-15 of Algorithm 1: sign purity, one draw per entry, one sign kept, leak.
    Returns each task's contribution (K, D); the update is their sum."""
    magnitude = np.abs(h).sum(axis=0)
    purity = 0.5 * (1 + h.sum(axis=0) / np.where(magnitude > 0, magnitude, 1.0))
    mapped = f(purity)
    keep = (mapped > uniform) & (h > 0) | (mapped < uniform) & (h < 0)
    leak = np.broadcast_to(leak, (len(h),))[:, None]
    return (leak + (1 - leak) * keep) * h


@functools.cache
def three_tasks():
    """One compiled run: the property batch (no leak), and random problems with task weights
    and a sweep of the leak, traced."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, K, DIM)
    n = len(properties.names)
    random = batch_of(rng, 12, K, DIM)
    grads = np.concatenate([properties.grads, random])
    weights = np.concatenate([np.ones((n, K)), rng.uniform(0.5, 4, (12, K))])
    leak = np.concatenate([np.zeros(n), np.linspace(0.0, 1.0, 12)])
    updates, state = run(graddrop, grads, hyper={"leak": leak}, task_weights=weights)
    return properties, updates, state, grads, weights, leak, n


def test_matches_algorithm_1():
    _, updates, state, grads, weights, leak, n = three_tasks()
    (uniform,) = first_step_uniforms(0, [(DIM,)])
    for i in range(n, len(grads)):
        h = weights[i][:, None] * grads[i]
        contributions = numpy_graddrop(h, uniform, leak[i])
        expected = contributions.sum(axis=0)
        np.testing.assert_allclose(updates[i], expected, rtol=1e-5, atol=1e-6 * np.abs(h).max())
        # Effective weights: λ_i times the share of ‖g_i‖² that passed.
        share = np.sum(contributions * h, axis=1) / np.sum(h * h, axis=1)
        np.testing.assert_allclose(state.coefficients[i], weights[i] * share, rtol=1e-4)
    np.testing.assert_array_equal(
        state.method_state.key[0], jax.random.split(jax.random.PRNGKey(0))[0]
    )


def test_properties():
    properties, updates, *_ = three_tasks()
    n = len(properties.names)
    check_properties(updates[:n], properties)
    # Full leak is linear scalarization.
    _, updates, _, grads, weights, leak, n = three_tasks()
    np.testing.assert_allclose(
        updates[-1], np.sum(weights[-1][:, None] * grads[-1], axis=0), rtol=1e-5
    )


def test_torchjd_value_in_distribution():
    tx = cg.graddrop(seed=1)
    params = jnp.zeros(3)
    update = jax.jit(tx.update)
    state, firsts = tx.init(params), []
    for _ in range(400):
        out, state = update(jnp.asarray(J_BASE, jnp.float32), state, params)
        np.testing.assert_array_equal(out[1:], [2.0, 2.0])  # the tasks agree: nothing dropped
        firsts.append(float(out[0]))
    assert set(firsts) == {6.0, -4.0}
    assert abs(np.mean(np.array(firsts) == 6.0) - 0.6) < 0.1  # P = 0.6, four σ


def test_f_and_per_task_leak_and_trees():
    grads = {"a": jnp.asarray(J_BASE, jnp.float32), "b": jnp.ones((2, 2, 2))}
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:]), grads)
    always_positive = cg.graddrop(f=jnp.ones_like, leak=[0.5, 0.0])
    updates, state = jax.jit(always_positive.update)(grads, always_positive.init(params), params)
    np.testing.assert_allclose(updates["a"], [-2.0 + 6.0, 2.0, 2.0])  # -4 leaks at half
    np.testing.assert_allclose(updates["b"], 2.0)
    uniforms = first_step_uniforms(0, [(3,), (2, 2)])
    np.testing.assert_allclose(
        updates["a"], numpy_graddrop(J_BASE, uniforms[0], [0.5, 0.0], np.ones_like).sum(0)
    )
    with pytest.raises(ValueError, match="`leak` has shape \\(2,\\)"):
        three = jnp.ones((3, 3))
        always_positive.update(three, always_positive.init(jnp.zeros(3)), jnp.zeros(3))


def test_bfloat16():
    check_bfloat16(graddrop, batch_of(np.random.default_rng(2), 4, K, DIM))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"leak": 1.5}, ValueError, "`leak`"),
        ({"leak": [0.1, -0.1]}, ValueError, "`leak`"),
        ({"leak": [[0.1]]}, ValueError, "`leak`"),
        ({"leak": "0.1"}, TypeError, "`leak`"),
        ({"f": 2.0}, TypeError, "`f`"),
        ({"seed": 1.5}, ValueError, "`seed`"),
        ({"task_weights": [1.0, 0.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        graddrop(**kwargs)
