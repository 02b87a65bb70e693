"""GLS (the geometric mean of the losses) against finite differences of (Π L)^{1/K}, torchjd's
fixed value, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps
from helpers.scalarization_testing import loss_derivatives, numeric_gradient

import camegrad_jax as cg


def geometric_mean(losses):
    """LibMTL's `GLS` loss, `losses.prod() ** (1 / K)`."""
    return np.prod(losses) ** (1.0 / len(losses))


def test_reference_reproduces_torchjd_fixed_value():
    # torchjd's tests/unit/scalarization/test_geometric_mean.py: GeometricMean()([1, 2, 4]) = 2.
    assert geometric_mean(np.array([1.0, 2.0, 4.0])) == pytest.approx(2.0)


def test_torchjd_fixed_point_direction():
    # At L = (1, 2, 4) the mean is 2, so ∂/∂L_i = 2 / (3 L_i) = (2/3, 1/3, 1/6).
    derivatives, _, _ = loss_derivatives(cg.geometric_mean, [[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(derivatives[0], [2 / 3, 1 / 3, 1 / 6], rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_update_is_the_gradient_of_the_geometric_mean(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed
    _, values = random_problem(rng, 4, k, 1)
    weights = rng.uniform(0.5, 3, k)
    derivatives, _, _ = loss_derivatives(cg.geometric_mean, values, task_weights=weights)
    for losses, derivative in zip(values, derivatives, strict=True):
        # The method runs on the weighted losses λ_i L_i.
        expected = numeric_gradient(lambda x: geometric_mean(weights * x), losses)
        np.testing.assert_allclose(derivative, expected, rtol=1e-5)


def test_rescaling_one_task_rescales_the_step():
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, 3, 3, 6)
    scale = np.array([1e-3, 1.0, 1e4])
    updates, _, _ = run_steps(cg.geometric_mean, grads, values)
    rescaled, _, _ = run_steps(cg.geometric_mean, grads * scale[:, None], values * scale)
    assert rel_err(rescaled, updates * np.prod(scale) ** (1 / 3)) < 1e-5


def test_permuting_tasks_permutes_nothing_in_the_update():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, 2, 4, 5)
    order = np.array([2, 0, 3, 1])
    updates, _, _ = run_steps(cg.geometric_mean, grads, values)
    permuted, _, _ = run_steps(cg.geometric_mean, grads[:, order], values[:, order])
    assert rel_err(permuted, updates) < 1e-6


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e30])
def test_extreme_losses_neither_overflow_nor_underflow(scale):
    # Π L over 8 tasks at 1e30 overflows float32; the log-space form does not.
    values = np.full((1, 8), scale) * np.linspace(1.0, 2.0, 8)
    derivatives, _, _ = loss_derivatives(cg.geometric_mean, values)
    expected = numeric_gradient(geometric_mean, values[0] / scale)  # degree-0 homogeneous
    np.testing.assert_allclose(derivatives[0], expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf])
def test_non_positive_or_non_finite_losses_poison_the_update(bad):
    tx = cg.geometric_mean(num_tasks=2)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(
        jnp.ones((2, 3)), tx.init(params), params, value=jnp.array([1.0, bad])
    )
    assert np.all(np.isnan(updates))


def test_tiny_positive_loss_is_accepted():
    # torchjd accepts 1e-13; the weight of that task is then large but finite.
    derivatives, _, _ = loss_derivatives(cg.geometric_mean, [[1.0, 1e-13]])
    mean = np.sqrt(1e-13)
    np.testing.assert_allclose(derivatives[0], mean / (2 * np.array([1.0, 1e-13])), rtol=1e-5)


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 2, 2, 6)
    updates, _, _ = run_steps(cg.geometric_mean, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    g = np.asarray(jnp.asarray(grads, jnp.bfloat16), float)
    v = np.asarray(jnp.asarray(values, jnp.bfloat16), float)
    coefficients = np.sqrt(np.prod(v, axis=1, keepdims=True)) / (2 * v)
    assert rel_err(updates, np.einsum("tk,tkd->td", coefficients, g)) < 1e-2


def test_shared_mask_limits_the_weights_to_shared_leaves():
    tx = cg.geometric_mean(task_weights=[1.0, 4.0], shared_mask={"a": True, "b": False})
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.eye(2), "b": jnp.eye(2)}
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.array([4.0, 1.0]))
    # ℓ = (4, 4): mean 4, coefficients λ_i · 4 / (2 · 4).
    np.testing.assert_allclose(updates["a"], [0.5, 2.0])
    np.testing.assert_allclose(updates["b"], [1.0, 4.0])  # λ


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"task_weights": [[1.0, 2.0]]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cg.geometric_mean(**kwargs)


def test_missing_value_is_named():
    tx = cg.geometric_mean(num_tasks=2)
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), tx.init(params), params)
