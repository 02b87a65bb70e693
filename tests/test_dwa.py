"""Dynamic Weight Average against a NumPy re-implementation of the official (MTAN) rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

from camegrad_jax._dwa import dwa

T, K, D = 12, 3, 5


def reference(grads, values, epoch_length, temperature, task_weights):
    """MTAN's `avg_cost` per epoch and `lambda_weight`, applied to every step of the epoch."""
    weighted = task_weights * values
    steps = len(values)
    averages = [weighted[e : e + epoch_length].mean(0) for e in range(0, steps, epoch_length)]
    updates, weights_seen = [], []
    for t in range(steps):
        epoch = t // epoch_length
        if epoch < 2:
            w = np.ones(values.shape[1])
        else:
            ratio = averages[epoch - 1] / averages[epoch - 2]
            w = len(ratio) * np.exp(ratio / temperature) / np.sum(np.exp(ratio / temperature))
        weights_seen.append(w)
        updates.append((w * task_weights) @ grads[t])
    return np.array(updates), np.array(weights_seen)


@pytest.mark.parametrize(("seed", "epoch_length"), [(0, 2), (1, 3), (2, 1)])
def test_matches_reference_over_epochs(seed, epoch_length):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    temperature, weights = rng.uniform(0.5, 4), rng.uniform(0.5, 2, K)
    updates, states, _ = run_steps(
        dwa,
        grads,
        values,
        temperature=temperature,
        task_weights=weights,
        epoch_length=epoch_length,
    )
    expected_updates, expected_weights = reference(
        grads, values, epoch_length, temperature, weights
    )
    assert rel_err(updates, expected_updates) < 1e-5
    np.testing.assert_allclose(states.coefficients / weights, expected_weights, rtol=1e-5)


def test_equal_weights_for_two_epochs_then_softmax_of_ratios():
    values = np.array([[1.0, 1.0]] * 2 + [[1.0, 2.0]] * 2 + [[1.0, 1.0]] * 2 + [[5.0, 5.0]])
    grads = np.tile(np.eye(2), (len(values), 1, 1))
    _, states, final = run_steps(dwa, grads, values, temperature=1.0, epoch_length=2)
    np.testing.assert_array_equal(states.coefficients[:4], 1.0)
    # Epoch 2: ratios (1, 2) → 2 softmax(1, 2).
    expected = 2 * np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    np.testing.assert_allclose(states.coefficients[4:6], [expected, expected], rtol=1e-6)
    # Epoch 3 (one step so far): ratios (1, 1/2).
    expected = 2 * np.exp([1.0, 0.5]) / np.exp([1.0, 0.5]).sum()
    np.testing.assert_allclose(states.coefficients[6], expected, rtol=1e-6)
    assert int(final.method_state.step_in_epoch) == 1
    np.testing.assert_allclose(final.method_state.epoch_loss_sum, [5.0, 5.0])


@pytest.mark.parametrize("seed", range(3))
def test_weights_are_positive_and_sum_to_k(seed):
    rng = np.random.default_rng(10 + seed)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run_steps(dwa, grads, values, temperature=rng.uniform(0.1, 5), epoch_length=2)
    coefficients = np.asarray(states.coefficients)
    assert np.all(coefficients > 0)
    np.testing.assert_allclose(coefficients.sum(1), K, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-10, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(4)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(dwa, grads * scale, values * scale, epoch_length=2)
    assert np.all(np.isfinite(updates))
    base, _, _ = run_steps(dwa, grads, values, epoch_length=2)
    np.testing.assert_allclose(np.asarray(updates) / scale, base, rtol=1e-4, atol=1e-6)


def test_zero_losses_and_gradients():
    updates, states, _ = run_steps(dwa, np.zeros((T, K, D)), np.zeros((T, K)), epoch_length=2)
    np.testing.assert_array_equal(updates, 0.0)
    np.testing.assert_allclose(states.coefficients, 1.0)  # 0/0 ratios are taken as 1


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(dwa, grads, values, dtype=jnp.bfloat16, epoch_length=2)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.last_average.dtype == jnp.float32
    expected, _ = reference(
        np.asarray(jnp.asarray(grads, jnp.bfloat16), float),
        np.asarray(jnp.asarray(values, jnp.bfloat16), float),
        2,
        2.0,
        np.ones(K),
    )
    assert rel_err(updates, expected) < 1e-2


def test_epoch_length_can_be_injected():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, 7, 2, 3)
    tx = optax.inject_hyperparams(dwa)(epoch_length=2, temperature=1.5, num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    outputs = []
    for g, v in zip(grads, values, strict=True):
        u, state = update(jnp.asarray(g, jnp.float32), state, params, value=jnp.asarray(v))
        outputs.append(u)
    expected, _ = reference(grads, values, 2, 1.5, np.ones(2))
    assert rel_err(np.array(outputs), expected) < 1e-5


def test_non_finite_losses_are_not_counted():
    tx = dwa(epoch_length=2, num_tasks=2)
    params = jnp.zeros(2)
    update = jax.jit(tx.update)
    _, state = update(jnp.eye(2), tx.init(params), params, value=jnp.array([1.0, 2.0]))
    updates, new_state = update(jnp.eye(2), state, params, value=jnp.array([jnp.inf, 2.0]))
    assert np.all(np.isnan(updates))
    jax.tree.map(np.testing.assert_array_equal, new_state.method_state, state.method_state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epoch_length": 0}, "`epoch_length`"),
        ({"epoch_length": 2.5}, "`epoch_length`"),
        ({"epoch_length": 10, "temperature": 0.0}, "`temperature`"),
        ({"epoch_length": 10, "temperature": -2.0}, "`temperature`"),
        ({"epoch_length": 10, "task_weights": [1.0, float("inf")]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dwa(**kwargs)


def test_missing_or_misshapen_value():
    tx = dwa(epoch_length=5, num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(3,\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones(3))
