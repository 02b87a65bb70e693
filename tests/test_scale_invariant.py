"""The scale-invariant scalarization against finite differences of Σ λ log L, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps
from helpers.scalarization_testing import loss_derivatives, numeric_gradient

import camegrad_jax as cg


def objective(losses, task_weights):
    """The official `ScaleInvariantLinearScalarization` loss: Σ λ_i log L_i."""
    return np.sum(task_weights * np.log(losses))


@pytest.mark.parametrize("seed", range(3))
def test_update_is_the_gradient_of_the_sum_of_log_losses(seed):
    rng = np.random.default_rng(seed)
    _, values = random_problem(rng, 4, 3, 1)
    weights = rng.uniform(0.5, 3, 3)
    derivatives, _, _ = loss_derivatives(cg.scale_invariant, values, task_weights=weights)
    for losses, derivative in zip(values, derivatives, strict=True):
        expected = numeric_gradient(lambda x: objective(x, weights), losses)
        np.testing.assert_allclose(derivative, expected, rtol=1e-5)


def test_update_on_a_parameter_problem_matches_finite_differences():
    """Quadratic task losses L_i(θ) = 1 + |A_i θ - b_i|²: the update is ∇_θ Σ log L_i(θ)."""
    rng = np.random.default_rng(4)
    a, b, theta = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4)), rng.normal(size=5)

    def task_losses(t):
        return 1.0 + np.sum((np.einsum("kij,j->ki", a, t) - b) ** 2, axis=1)

    grads = 2 * np.einsum("kij,ki->kj", a, np.einsum("kij,j->ki", a, theta) - b)
    updates, _, _ = run_steps(cg.scale_invariant, grads[None], task_losses(theta)[None])
    expected = numeric_gradient(lambda t: objective(task_losses(t), 1.0), theta)
    assert rel_err(updates[0], expected) < 1e-5


def test_rescaling_one_task_changes_nothing():
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, 3, 3, 6)
    scale = np.array([1e-3, 1.0, 1e4])
    updates, _, _ = run_steps(cg.scale_invariant, grads, values)
    rescaled, _, _ = run_steps(cg.scale_invariant, grads * scale[:, None], values * scale)
    assert rel_err(rescaled, updates) < 1e-5


def test_permuting_tasks_permutes_nothing_in_the_update():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, 2, 4, 5)
    order = np.array([2, 0, 3, 1])
    updates, _, _ = run_steps(cg.scale_invariant, grads, values)
    permuted, _, _ = run_steps(cg.scale_invariant, grads[:, order], values[:, order])
    assert rel_err(permuted, updates) < 1e-6


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1.0, 1e4, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(1)
    grads, values = random_problem(rng, 2, 3, 5)
    updates, _, _ = run_steps(cg.scale_invariant, grads * scale, values * scale)
    assert np.all(np.isfinite(updates))
    assert rel_err(updates, run_steps(cg.scale_invariant, grads, values)[0]) < 1e-5


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_non_positive_or_non_finite_losses_poison_the_update(bad):
    tx = cg.scale_invariant(num_tasks=2)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(
        jnp.ones((2, 3)), tx.init(params), params, value=jnp.array([1.0, bad])
    )
    assert np.all(np.isnan(updates))


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 2, 2, 6)
    updates, _, _ = run_steps(cg.scale_invariant, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    g = np.asarray(jnp.asarray(grads, jnp.bfloat16), float)
    v = np.asarray(jnp.asarray(values, jnp.bfloat16), float)
    assert rel_err(updates, np.einsum("tk,tkd->td", 1 / v, g)) < 1e-2


def test_shared_mask_limits_the_weights_to_shared_leaves():
    tx = cg.scale_invariant(task_weights=[1.0, 2.0], shared_mask={"a": True, "b": False})
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.eye(2), "b": jnp.eye(2)}
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.array([4.0, 0.5]))
    np.testing.assert_allclose(updates["a"], [0.25, 4.0])  # λ / L
    np.testing.assert_allclose(updates["b"], [1.0, 2.0])  # λ


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"task_weights": [1.0, float("nan")]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cg.scale_invariant(**kwargs)


def test_missing_or_misshapen_value():
    tx = cg.scale_invariant(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(3,\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones(3))
