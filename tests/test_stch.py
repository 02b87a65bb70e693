"""STCH against finite differences of torchjd's scalarization and of the official MTL code's
loss, torchjd's fixed values, and its numerics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps
from helpers.scalarization_testing import loss_derivatives, numeric_gradient

import camegrad_jax as cg


def smooth_tchebycheff(values, mu, weights, reference=0.0):
    """torchjd's `STCH.forward`: μ log Σ exp(λ (f - z) / μ), centred on the largest term."""
    y = weights * (values - reference)
    top = np.max(y)
    return mu * np.log(np.sum(np.exp((y - top) / mu))) + top


class OfficialSTCH:
    """The official `STCH.backward` (STCH_MTL/LibMTL/weighting/STCH.py) as a function of the
    losses, its warm-up counted in steps and averaged over all of them."""

    def __init__(self, mu, warmup_steps):
        self.mu, self.warmup_steps = mu, warmup_steps
        self.step, self.total = 0, 0.0

    def loss_function(self, losses):
        if self.step < self.warmup_steps:
            self.total = self.total + losses
            self.step += 1
            return lambda x: np.sum(np.log(x + 1e-20))
        nadir = self.total / self.warmup_steps
        top = np.max(np.log(losses / nadir + 1e-20))  # `.detach()`-ed: a constant
        k = len(losses)
        return lambda x: (
            self.mu * np.log(np.sum(np.exp((np.log(x / nadir + 1e-20) - top) / self.mu))) * k
        )


def test_reference_reproduces_torchjd_fixed_values():
    # torchjd's tests/unit/scalarization/test_stch.py.
    half, ones = np.full(2, 0.5), np.ones(2)
    assert smooth_tchebycheff(np.zeros(2), 1.0, half) == pytest.approx(np.log(2))
    assert smooth_tchebycheff(ones, 1.0, ones) == pytest.approx(1 + np.log(2))
    assert smooth_tchebycheff(ones, 1.0, ones, reference=ones) == pytest.approx(np.log(2))
    values = np.array([1e30, 2e30, 3e30])
    assert smooth_tchebycheff(values, 1e-10, np.full(3, 1 / 3)) == pytest.approx(1e30)


@pytest.mark.parametrize("seed", range(3))
def test_update_is_the_gradient_of_torchjds_scalarization(seed):
    rng = np.random.default_rng(seed)
    _, values = random_problem(rng, 4, 3, 1)
    mu, weights, reference = rng.uniform(0.1, 2), rng.uniform(0.2, 2, 3), rng.uniform(0, 1, 3)
    derivatives, _, _ = loss_derivatives(
        cg.stch, values, mu=mu, task_weights=weights, reference=reference
    )
    for losses, derivative in zip(values, derivatives, strict=True):
        expected = numeric_gradient(lambda x: smooth_tchebycheff(x, mu, weights, reference), losses)
        np.testing.assert_allclose(derivative, expected, rtol=1e-5, atol=1e-9)


def test_torchjd_overflow_case_steps_towards_the_worst_task():
    # torchjd: STCH(mu=1e-10)([1e30, 2e30, 3e30]) = 1e30, the third task's weighted value.
    derivatives, _, _ = loss_derivatives(
        cg.stch, [[1e30, 2e30, 3e30]], mu=1e-10, task_weights=np.full(3, 1 / 3)
    )
    np.testing.assert_allclose(derivatives[0], [0.0, 0.0, 1 / 3], atol=1e-7)


def test_mu_moves_between_the_worst_task_and_the_weighted_mean():
    losses = [[1.0, 1.5, 3.0]]
    weights = np.array([1.0, 2.0, 0.5])  # λ ⊙ L = (1, 3, 1.5): task 2 is the worst
    sharp, _, _ = loss_derivatives(cg.stch, losses, mu=1e-3, task_weights=weights)
    np.testing.assert_allclose(sharp[0], [0.0, 2.0, 0.0], atol=1e-6)
    smooth, _, _ = loss_derivatives(cg.stch, losses, mu=1e6, task_weights=weights)
    np.testing.assert_allclose(smooth[0], weights / 3, rtol=1e-5)


@pytest.mark.parametrize("seed", range(2))
def test_warmup_follows_the_official_code(seed):
    rng = np.random.default_rng(seed)
    _, values = random_problem(rng, 9, 3, 1)
    mu, warmup = rng.uniform(0.2, 2), 4
    derivatives, states, _ = loss_derivatives(
        cg.stch, values, mu=mu, static={"warmup_steps": warmup}
    )
    official = OfficialSTCH(mu, warmup)
    for losses, derivative in zip(values, derivatives, strict=True):
        expected = numeric_gradient(official.loss_function(losses), losses)
        np.testing.assert_allclose(derivative, expected, rtol=1e-5)
    np.testing.assert_allclose(
        states.method_state.warmup_loss_sum[-1], values[:warmup].sum(axis=0), rtol=1e-6
    )
    np.testing.assert_array_equal(states.method_state.count, [1, 2, 3, 4, 4, 4, 4, 4, 4])


def test_warmup_equals_scale_invariant_then_is_invariant_to_task_scales():
    rng = np.random.default_rng(3)
    grads, values = random_problem(rng, 6, 3, 5)
    updates, _, _ = run_steps(cg.stch, grads, values, static={"warmup_steps": 3})
    scale_invariant, _, _ = run_steps(cg.scale_invariant, grads, values)
    assert rel_err(updates[:3], scale_invariant[:3]) < 1e-6
    # The learned ideal point scales with the losses, so rescaling a task changes nothing.
    scale = np.array([1e-3, 1.0, 1e4])
    rescaled, _, _ = run_steps(
        cg.stch, grads * scale[:, None], values * scale, static={"warmup_steps": 3}
    )
    assert rel_err(rescaled, updates) < 1e-5


def test_permuting_tasks_permutes_nothing_in_the_update():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, 3, 4, 5)
    order = np.array([2, 0, 3, 1])
    updates, _, _ = run_steps(cg.stch, grads, values, mu=0.3)
    permuted, _, _ = run_steps(cg.stch, grads[:, order], values[:, order], mu=0.3)
    assert rel_err(permuted, updates) < 1e-6


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1.0, 1e4, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(1)
    grads, values = random_problem(rng, 3, 3, 5)
    for static in ({}, {"warmup_steps": 1}):
        updates, _, _ = run_steps(cg.stch, grads * scale, values * scale, static=static)
        assert np.all(np.isfinite(updates))


def test_negative_losses_are_valid_on_the_losses():
    derivatives, _, _ = loss_derivatives(cg.stch, [[-2.0, -1.0]], mu=1.0)
    expected = numeric_gradient(
        lambda x: smooth_tchebycheff(x, 1.0, np.ones(2)), np.array([-2.0, -1.0])
    )
    np.testing.assert_allclose(derivatives[0], expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_non_positive_losses_with_warmup_poison_the_update_and_keep_the_state(bad):
    tx = cg.stch(warmup_steps=2, num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    updates, new_state = jax.jit(tx.update)(
        jnp.ones((2, 3)), state, params, value=jnp.array([1.0, bad])
    )
    assert np.all(np.isnan(updates))
    assert int(new_state.method_state.count) == 0
    np.testing.assert_array_equal(new_state.method_state.warmup_loss_sum, 0.0)


def test_non_finite_losses_poison_the_update():
    tx = cg.stch(num_tasks=2)
    params = jnp.zeros(3)
    updates, _ = jax.jit(tx.update)(
        jnp.ones((2, 3)), tx.init(params), params, value=jnp.array([1.0, jnp.inf])
    )
    assert np.all(np.isnan(updates))


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(2)
    grads, values = random_problem(rng, 2, 2, 6)
    updates, states, _ = run_steps(cg.stch, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.warmup_loss_sum.dtype == jnp.float32
    g = np.asarray(jnp.asarray(grads, jnp.bfloat16), float)
    v = np.asarray(jnp.asarray(values, jnp.bfloat16), float)
    weights = np.exp(v - v.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    assert rel_err(updates, np.einsum("tk,tkd->td", weights, g)) < 1e-2


def test_shared_mask_limits_the_weights_to_shared_leaves():
    tx = cg.stch(mu=1e-3, task_weights=[1.0, 2.0], shared_mask={"a": True, "b": False})
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.eye(2), "b": jnp.eye(2)}
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.array([1.0, 1.0]))
    np.testing.assert_allclose(updates["a"], [0.0, 2.0], atol=1e-6)  # task 2's λL is larger
    np.testing.assert_allclose(updates["b"], [1.0, 2.0])  # λ


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mu": 0.0}, ValueError, "`mu`"),
        ({"mu": -1.0}, ValueError, "mu = -1.0"),
        ({"mu": float("nan")}, ValueError, "`mu`"),
        ({"mu": "1"}, TypeError, "`mu`"),
        ({"warmup_steps": 0}, ValueError, "`warmup_steps`"),
        ({"warmup_steps": 1.5}, ValueError, "`warmup_steps`"),
        ({"warmup_steps": 2, "reference": 0.0}, ValueError, "`reference`"),
        ({"reference": float("nan")}, ValueError, "`reference`"),
        ({"reference": [[0.0]]}, ValueError, "`reference`"),
        ({"task_weights": [1.0, -1.0]}, ValueError, "`task_weights`"),
        ({"num_tasks": 0}, ValueError, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        cg.stch(**kwargs)


def test_reference_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="`reference` has 3 entries but K = 2"):
        cg.stch(reference=[0.0, 0.0, 0.0], num_tasks=2)
    tx = cg.stch(reference=[0.0, 0.0, 0.0])  # K unknown until the first update
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match="`reference` has 3 entries but K = 2"):
        tx.update(jnp.ones((2, 3)), tx.init(params), params, value=jnp.ones(2))
    tx = cg.stch(reference=[0.0, 1.0, 0.0])
    updates, _ = tx.update(jnp.eye(3), tx.init(params), params, value=jnp.ones(3))
    np.testing.assert_allclose(updates, [0.4223188, 0.1553624, 0.4223188], rtol=1e-6)


def test_missing_value_is_named():
    tx = cg.stch(num_tasks=2)
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), tx.init(params), params)
