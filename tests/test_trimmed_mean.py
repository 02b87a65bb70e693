"""The coordinate-wise trimmed mean against NumPy's sort, torchjd's fixed value, its properties,
and the element-wise builder's contract (effective weights, shared mask, non-finite input)."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    rel_err,
    run,
)

from camegrad_jax._trimmed_mean import trimmed_mean

DIM = 16
K = 5
# torchjd's tests/unit/aggregation/test_values.py: TrimmedMean(trim_number=1) on J_TrimmedMean.
J_TRIMMED_MEAN = np.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]])
TORCHJD_OUTPUT = np.array([1.5, 2.5])


def numpy_trimmed_mean(h, trim_number):
    """Option II of the paper: per coordinate, drop the t largest and t smallest, average."""
    return np.sort(h, axis=0)[trim_number : len(h) - trim_number].mean(axis=0)


def numpy_effective_weights(grads, weights, trim_number):
    """λ_i/(K − 2t) · (the share of ‖g_i‖² on the entries where task i is kept)."""
    h = weights[:, None] * grads
    rank = np.argsort(np.argsort(h, axis=0, kind="stable"), axis=0, kind="stable")
    kept = (rank >= trim_number) & (rank < len(h) - trim_number)
    share = np.sum(kept * grads**2, axis=1) / np.sum(grads**2, axis=1)
    return weights * share / (len(h) - 2 * trim_number)


@functools.cache
def five_tasks():
    """One compiled run: the property batch (t = 1), and random problems with task weights,
    outlier tasks and t = 0, 1, 2, traced."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, K, DIM)
    n = len(properties.names)
    random = batch_of(rng, 12, K, DIM)
    trim = np.concatenate([np.ones(n, int), np.arange(12) % 3])
    for i in range(12):
        random[i, : trim[n + i]] *= 1e6  # as many outlier tasks as are trimmed
    grads = np.concatenate([properties.grads, random])
    weights = np.concatenate([np.ones((n, K)), rng.uniform(0.5, 4, (12, K))])
    updates, state = run(trimmed_mean, grads, hyper={"trim_number": trim}, task_weights=weights)
    return properties, updates, state.coefficients, grads, weights, trim, n


def test_matches_sorted_mean():
    _, updates, coefficients, grads, weights, trim, n = five_tasks()
    for i in range(n, len(grads)):
        h = weights[i][:, None] * grads[i]
        expected = numpy_trimmed_mean(h, trim[i])
        np.testing.assert_allclose(updates[i], expected, rtol=1e-5, atol=1e-6 * np.abs(h).max())
        np.testing.assert_allclose(
            coefficients[i], numpy_effective_weights(grads[i], weights[i], trim[i]), rtol=1e-4
        )
        if trim[i]:
            # The outliers pull no entry outside the range of the other tasks.
            others = h[trim[i] :]
            assert np.all(updates[i] <= others.max(axis=0) + 1e-6)
            assert np.all(updates[i] >= others.min(axis=0) - 1e-6)


def test_properties():
    properties, updates, *_ = five_tasks()
    n = len(properties.names)
    check_properties(updates[:n], properties)


def test_torchjd_value_and_extreme_scales():
    grads = np.stack([J_TRIMMED_MEAN, J_TRIMMED_MEAN * 1e25, J_TRIMMED_MEAN * 1e-28])
    updates, state = run(trimmed_mean, grads, trim_number=1)
    np.testing.assert_allclose(updates[0], TORCHJD_OUTPUT, rtol=1e-6)
    np.testing.assert_allclose(
        updates[1:] / np.array([[1e25], [1e-28]]), updates[[0, 0]], rtol=1e-6
    )
    # The effective weights do not overflow or underflow with the gradients' scale.
    coefficients = np.asarray(state.coefficients)
    np.testing.assert_allclose(coefficients[1:], coefficients[[0, 0]], rtol=1e-5)


def test_zero_trim_is_the_mean_and_private_leaves_get_the_sum():
    tx = trimmed_mean(0, task_weights=[1.0, 2.0, 3.0], shared_mask={"a": True, "b": False})
    grads = {"a": jnp.arange(6.0).reshape(3, 2), "b": jnp.arange(3.0).reshape(3, 1)}
    params = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
    updates, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], np.array([16.0, 22.0]) / 3)
    np.testing.assert_allclose(updates["b"], [8.0])
    np.testing.assert_allclose(state.coefficients, np.array([1.0, 2.0, 3.0]) / 3, rtol=1e-6)


def test_non_finite_and_traced_out_of_range_give_nan():
    grads = batch_of(np.random.default_rng(1), 2, K, DIM)
    grads[0, 1, 3] = np.nan
    updates, state = run(trimmed_mean, grads, hyper={"trim_number": np.array([1, 3])})
    assert np.all(np.isnan(updates)) and np.all(np.isnan(state.coefficients))


def test_bfloat16():
    check_bfloat16(trimmed_mean, batch_of(np.random.default_rng(2), 4, K, DIM), trim_number=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"trim_number": -1}, ValueError, "`trim_number`"),
        ({"trim_number": 0.5}, ValueError, "`trim_number`"),
        ({"trim_number": "1"}, TypeError, "`trim_number`"),
        ({"trim_number": 1, "num_tasks": 0}, ValueError, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        trimmed_mean(**kwargs)


def test_too_few_tasks_raise_at_update():
    tx, params = trimmed_mean(1), jnp.zeros(3)
    with pytest.raises(ValueError, match="2 \\* trim_number \\+ 1 = 3"):
        tx.update(jnp.ones((2, 3)), tx.init(params), params)
    assert rel_err(tx.update(jnp.ones((3, 3)), tx.init(params), params)[0], np.ones(3)) == 0
