"""GradNorm against a NumPy re-implementation of the paper's Algorithm 1, and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

from camegrad_jax._gradnorm import gradnorm

# One shape (T steps, K tasks, D parameters) for the scanned runs: one compilation per dtype.
T, K, D = 10, 3, 8


def diagonal_gradients(norms, steps=T):
    """Task i's gradient is norms[i] times the i-th unit vector of R^D, at every step."""
    return np.tile(np.eye(K, D) * np.asarray(norms, float)[:, None], (steps, 1, 1))


def reference(grads, values, alpha, learning_rate, task_weights):
    """Algorithm 1 of Chen et al. (2018): w(t) weights step t, then one gradient step on
    L_grad = Σ|w_i n_i − mean(w n) r_i^α| (targets constant), clipped at 0, renormalised to K."""
    k = grads.shape[1]
    w = np.ones(k)
    initial = None
    updates, weights_seen = [], []
    for g, loss in zip(grads, values, strict=True):
        h = task_weights[:, None] * g
        weighted_loss = task_weights * loss
        initial = weighted_loss if initial is None else initial
        updates.append((w * task_weights) @ g)
        norms = np.linalg.norm(h, axis=1)
        ratio = weighted_loss / initial
        target = np.mean(w * norms) * (ratio / ratio.mean()) ** alpha
        w = np.maximum(w - learning_rate * np.sign(w * norms - target) * norms, 0)
        w = k * w / w.sum()
        weights_seen.append(w)
    return np.array(updates), np.array(weights_seen)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    alpha, lr, weights = rng.uniform(0, 3), rng.uniform(0.005, 0.05), rng.uniform(0.5, 2, K)
    updates, states, _ = run_steps(
        gradnorm, grads, values, alpha=alpha, learning_rate=lr, task_weights=weights
    )
    expected_updates, expected_weights = reference(grads, values, alpha, lr, weights)
    assert rel_err(updates, expected_updates) < 1e-5
    np.testing.assert_allclose(states.method_state.weights, expected_weights, rtol=1e-5)
    np.testing.assert_allclose(states.method_state.initial_losses[-1], weights * values[0], 1e-6)


def test_analytic_weight_gradient_matches_autodiff_of_the_gradnorm_loss():
    rng = np.random.default_rng(4)
    norms = rng.uniform(0.1, 3, K)
    ratios = rng.uniform(0.5, 1.5, K)
    alpha = 1.5

    def gradnorm_loss(w):
        g = w * norms
        target = jax.lax.stop_gradient(jnp.mean(g)) * (ratios / ratios.mean()) ** alpha
        return jnp.sum(jnp.abs(g - target))

    # Losses at step 2 have the ratios `ratios` to the first step's.
    values = np.ones((T, K))
    values[2] = ratios
    _, states, _ = run_steps(
        gradnorm, diagonal_gradients(norms), values, alpha=alpha, learning_rate=0.01
    )
    before = states.method_state.weights[1]
    expected = before - 0.01 * jax.grad(gradnorm_loss)(before)
    np.testing.assert_allclose(
        states.method_state.weights[2], K * expected / expected.sum(), rtol=1e-5
    )


def test_hand_computed_first_step():
    tx = gradnorm(alpha=1.0, learning_rate=0.1, num_tasks=2)
    params = jnp.zeros(2)
    grads = jnp.array([[3.0, 0.0], [0.0, 1.0]])
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params, value=jnp.array([2.0, 5.0]))
    np.testing.assert_allclose(updates, [3.0, 1.0])
    # Target mean(G) = 2 at step 0; gradient sign(G − 2)·n = (3, −1).
    np.testing.assert_allclose(state.method_state.weights, 2 * np.array([0.7, 1.1]) / 1.8, 1e-6)
    np.testing.assert_allclose(state.method_state.initial_losses, [2.0, 5.0])


@pytest.mark.parametrize("seed", range(4))
def test_weights_stay_positive_and_sum_to_k(seed):
    rng = np.random.default_rng(10 + seed)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run_steps(gradnorm, grads, values, learning_rate=rng.uniform(0.01, 1.0))
    weights = np.asarray(states.method_state.weights)
    np.testing.assert_allclose(weights.sum(1), K, rtol=1e-5)
    assert np.all(weights >= 0)


def test_large_step_clips_weights_at_zero():
    grads = diagonal_gradients([100.0, 1.0, 1.0])
    _, states, _ = run_steps(gradnorm, grads, np.ones((T, K)), learning_rate=1.0)
    np.testing.assert_allclose(states.method_state.weights[0], [0.0, 1.5, 1.5])


def test_equal_norms_and_rates_keep_weights():
    _, states, _ = run_steps(gradnorm, diagonal_gradients(np.ones(K)), np.ones((T, K)))
    np.testing.assert_allclose(states.method_state.weights, 1.0)


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1.0, 1e4, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(gradnorm, grads * scale, values * scale)
    assert np.all(np.isfinite(updates))
    np.testing.assert_allclose(np.sum(states.method_state.weights, 1), K, rtol=1e-5)


def test_zero_gradients_and_zero_losses():
    updates, states, _ = run_steps(gradnorm, np.zeros((T, K, D)), np.zeros((T, K)))
    np.testing.assert_array_equal(updates, 0.0)
    np.testing.assert_array_equal(states.method_state.weights, 1.0)


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(gradnorm, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.weights.dtype == jnp.float32
    expected, _ = reference(
        np.asarray(jnp.asarray(grads, jnp.bfloat16), float),
        np.asarray(jnp.asarray(values, jnp.bfloat16), float),
        1.5,
        0.025,
        np.ones(K),
    )
    assert rel_err(updates, expected) < 1e-2


def test_mask_selects_the_norm_layer_and_weights_apply_everywhere():
    rng = np.random.default_rng(7)
    last = rng.normal(size=(2, 4))
    first = rng.normal(size=(2, 3))
    tx = gradnorm(learning_rate=0.1, num_tasks=2, shared_mask={"first": False, "last": True})
    params = {"first": jnp.zeros(3), "last": jnp.zeros(4)}
    grads = {"first": jnp.asarray(first, jnp.float32), "last": jnp.asarray(last, jnp.float32)}
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params, value=jnp.ones(2))
    updates, _ = update(grads, state, params, value=jnp.ones(2))
    _, expected_weights = reference(last[None], np.ones((1, 2)), 1.5, 0.1, np.ones(2))
    w = expected_weights[0]
    np.testing.assert_allclose(updates["last"], w @ last, rtol=1e-5)
    np.testing.assert_allclose(updates["first"], w @ first, rtol=1e-5)


def test_non_finite_gradients_keep_state_and_poison_update():
    tx = gradnorm(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    bad = jnp.ones((2, 3)).at[0, 0].set(jnp.inf)
    updates, new_state = jax.jit(tx.update)(bad, state, params, value=jnp.ones(2))
    assert np.all(np.isnan(updates))
    np.testing.assert_array_equal(new_state.method_state.weights, 1.0)
    assert int(new_state.method_state.count) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": -0.5}, "`alpha`"),
        ({"alpha": float("nan")}, "`alpha`"),
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"learning_rate": -1e-3}, "`learning_rate`"),
        ({"task_weights": [0.0, 1.0]}, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradnorm(**kwargs)


def test_missing_or_misshapen_value():
    tx = gradnorm(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(2, 1\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones((2, 1)))
