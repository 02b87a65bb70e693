"""IMTL-L against finite differences of its objective Σ e^s L - s, torchjd's fixed values and
its relation to uncertainty weighting, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps
from helpers.scalarization_testing import loss_derivatives, numeric_gradient

import camegrad_jax as cg


def objective(losses, log_scales):
    """torchjd's `IMTLL.forward`: Σ_i e^{s_i} L_i - s_i."""
    return np.sum(np.exp(log_scales) * losses - log_scales)


def reference(values, learning_rate, init_log_scale, task_weights):
    """Per step: ∂F/∂L (the weights on the task gradients), then SGD on s with ∂F/∂s, both by
    finite differences of the objective on the weighted losses."""
    s = np.full(values.shape[1], init_log_scale, np.float64)
    derivatives, log_scales = [], []
    for losses in values:
        weighted = task_weights * losses
        derivatives.append(numeric_gradient(lambda x, s=s: objective(task_weights * x, s), losses))
        s = s - learning_rate * numeric_gradient(lambda v, w=weighted: objective(w, v), s)
        log_scales.append(s)
    return np.array(derivatives), np.array(log_scales)


def test_reference_reproduces_torchjd_fixed_values():
    # torchjd's tests/unit/scalarization/test_imtl_l.py: at s = 0, IMTLL([1, 2, 4]) = 7, and
    # IMTL-L(s) = 2 UW(-s) with torchjd's UW = Σ ½ e^{-v} L + ½ v (checked at s = (0.3, -0.7, 1.2)).
    values, s = np.array([1.0, 2.0, 4.0]), np.array([0.3, -0.7, 1.2])
    assert objective(values, np.zeros(3)) == pytest.approx(7.0)
    assert objective(values, s) == pytest.approx(2 * np.sum(0.5 * np.exp(s) * values - 0.5 * s))


def test_torchjd_fixed_value_direction():
    # At s = 0 the objective is Σ L: every task gradient has weight 1.
    derivatives, _, _ = loss_derivatives(cg.imtl_l, [[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(derivatives[0], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_over_steps(seed):
    rng = np.random.default_rng(seed)
    _, values = random_problem(rng, 12, 3, 1)
    lr, init, weights = rng.uniform(0.01, 0.5), rng.uniform(-1, 1), rng.uniform(0.5, 3, 3)
    derivatives, states, _ = loss_derivatives(
        cg.imtl_l, values, learning_rate=lr, init_log_scale=init, task_weights=weights
    )
    expected_derivatives, expected_s = reference(values, lr, init, weights)
    assert rel_err(derivatives, expected_derivatives) < 1e-5
    np.testing.assert_allclose(states.method_state.log_scales, expected_s, rtol=1e-5, atol=1e-6)


def test_equals_uncertainty_weighting_with_negated_log_variances():
    rng = np.random.default_rng(7)
    grads, values = random_problem(rng, 8, 3, 5)
    updates, states, _ = run_steps(cg.imtl_l, grads, values, learning_rate=0.2, init_log_scale=0.4)
    uw_updates, uw_states, _ = run_steps(
        cg.uncertainty_weighting, grads, values, learning_rate=0.2, init_log_var=-0.4
    )
    assert rel_err(updates, uw_updates) < 1e-6
    np.testing.assert_allclose(
        states.method_state.log_scales, -uw_states.method_state.log_vars, rtol=1e-6, atol=1e-7
    )


def test_scaled_losses_converge_to_one():
    values = np.tile([[0.2, 3.0, 50.0]], (300, 1))
    _, _, final = loss_derivatives(cg.imtl_l, values, learning_rate=0.1)
    np.testing.assert_allclose(final.method_state.log_scales, -np.log(values[0]), rtol=1e-4)


def test_permuting_tasks_permutes_nothing_in_the_update():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, 4, 4, 5)
    order = np.array([2, 0, 3, 1])
    updates, _, _ = run_steps(cg.imtl_l, grads, values, learning_rate=0.3)
    permuted, _, _ = run_steps(cg.imtl_l, grads[:, order], values[:, order], learning_rate=0.3)
    assert rel_err(permuted, updates) < 1e-6


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1.0, 1e4, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(1)
    grads, values = random_problem(rng, 4, 3, 5)
    updates, states, _ = run_steps(cg.imtl_l, grads * scale, values * scale, learning_rate=1e-12)
    assert np.all(np.isfinite(updates))
    assert np.all(np.isfinite(states.method_state.log_scales))


def test_zero_and_negative_losses_raise_the_scales_without_a_fixed_point():
    values = np.array([[0.0, -1.0]] * 3)
    derivatives, states, _ = loss_derivatives(cg.imtl_l, values, learning_rate=0.1)
    assert np.all(np.isfinite(derivatives))
    s = states.method_state.log_scales
    np.testing.assert_allclose(s[:, 0], [0.1, 0.2, 0.3], rtol=1e-6)  # ∂/∂s = -1 at L = 0
    assert np.all(np.diff(s[:, 1]) > 0.1)  # and more than that below 0


def test_overflowing_scales_poison_the_update_and_keep_the_state():
    tx = cg.imtl_l(init_log_scale=100.0, num_tasks=2)  # e^100 overflows float32
    params = jnp.zeros(3)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(jnp.ones((2, 3)), state, params, value=jnp.ones(2))
    assert np.all(np.isnan(updates))
    np.testing.assert_array_equal(new_state.method_state.log_scales, 100.0)


def test_non_finite_losses_keep_state_and_poison_update():
    tx = cg.imtl_l(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(
        jnp.ones((2, 3)), state, params, value=jnp.array([1.0, jnp.nan])
    )
    assert np.all(np.isnan(updates))
    np.testing.assert_array_equal(new_state.method_state.log_scales, 0.0)


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 2, 2, 6)
    updates, states, _ = run_steps(cg.imtl_l, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.log_scales.dtype == jnp.float32
    g = np.asarray(jnp.asarray(grads, jnp.bfloat16), float)
    assert rel_err(updates[0], g[0].sum(axis=0)) < 1e-2  # s = 0 at the first step


def test_shared_mask_limits_the_weights_to_shared_leaves():
    tx = cg.imtl_l(
        init_log_scale=np.log(4.0), task_weights=[1.0, 2.0], shared_mask={"a": True, "b": False}
    )
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.eye(2), "b": jnp.eye(2)}
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.ones(2))
    np.testing.assert_allclose(updates["a"], [4.0, 8.0], rtol=1e-6)  # λ e^{s}
    np.testing.assert_allclose(updates["b"], [1.0, 2.0])  # λ


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"learning_rate": -1.0}, "learning_rate = -1.0"),
        ({"learning_rate": float("nan")}, "`learning_rate`"),
        ({"init_log_scale": float("inf")}, "`init_log_scale`"),
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cg.imtl_l(**kwargs)


def test_wrong_type_is_refused():
    with pytest.raises(TypeError, match="`learning_rate`"):
        cg.imtl_l(learning_rate="0.1")


def test_missing_or_misshapen_value():
    tx = cg.imtl_l(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(3,\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones(3))
