"""ExcessMTL against a NumPy transcription of the official weighting step, and its invariants:
λ and a common scale cancel from the weights, task order, a task that starts at zero, a
rejected non-finite step, the shared mask, bfloat16 and bad arguments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

import camegrad_jax as cg
from camegrad_jax._excess_mtl import excess_mtl

T, K, D = 8, 3, 8


class OfficialExcessMTL:
    """The official `ExcessMTL.backward`'s weight update, line by line, in float64."""

    def __init__(self, num_tasks, robust_step_size, eps=1e-7):
        self.loss_weight = np.ones(num_tasks)
        self.grad_sum = None
        self.first_epoch = True
        self.step_size, self.eps = robust_step_size, eps

    def step(self, grads):
        if self.grad_sum is None:
            self.grad_sum = np.zeros_like(grads)
        w = np.zeros(len(grads))
        for i in range(len(grads)):
            self.grad_sum[i] += grads[i] ** 2
            h_i = np.sqrt(self.grad_sum[i] + self.eps)
            w[i] = grads[i] * (1 / h_i) @ grads[i]
        if self.first_epoch:
            self.initial_w = w
            self.first_epoch = False
        else:
            w = w / self.initial_w
            self.loss_weight = self.loss_weight * np.exp(w * self.step_size)
            self.loss_weight = self.loss_weight / self.loss_weight.sum() * len(grads)
        return self.loss_weight.copy()


def official_weights(grads, robust_step_size, eps=1e-7):
    official = OfficialExcessMTL(grads.shape[1], robust_step_size, eps)
    return np.stack([official.step(g) for g in grads])


def run(grads, robust_step_size=0.5, task_weights=None, dtype=jnp.float32):
    weights = np.ones(grads.shape[1]) if task_weights is None else task_weights
    updates, states, _ = run_steps(
        excess_mtl,
        grads,
        dtype=dtype,
        robust_step_size=robust_step_size,
        task_weights=weights,
    )
    return np.asarray(updates, np.float64), states


def test_weights_follow_the_official_update():
    grads, _ = random_problem(np.random.default_rng(0), T, K, D)
    for step_size in (0.5, 2.0):
        updates, states = run(grads, step_size)
        omega = np.asarray(states.inner.method_state.loss_weights, np.float64)
        # The exact guard against the official 1e-7 one: equal where Σg² ≫ 1e-7.
        np.testing.assert_allclose(omega, official_weights(grads, step_size, eps=0.0), rtol=1e-5)
        np.testing.assert_allclose(omega, official_weights(grads, step_size), rtol=1e-4)
        assert np.ptp(omega[-1]) > 0.05  # the weights did move
        np.testing.assert_allclose(omega.sum(axis=1), K, rtol=1e-6)
        np.testing.assert_array_equal(omega[0], 1.0)  # the first step only records r(0)
        for t in range(T):
            assert rel_err(updates[t], omega[t] @ grads[t]) <= 1e-5
        np.testing.assert_allclose(np.asarray(states.coefficients), omega, rtol=1e-6)


def test_zero_step_size_is_linear_scalarization():
    grads, _ = random_problem(np.random.default_rng(1), T, K, D)
    updates, states = run(grads, 0.0)
    np.testing.assert_allclose(updates, grads.sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(states.inner.method_state.loss_weights), 1.0)


def test_task_weights_scale_and_order():
    rng = np.random.default_rng(2)
    grads, _ = random_problem(rng, T, K, D)
    _, states = run(grads)
    omega = np.asarray(states.inner.method_state.loss_weights, np.float64)
    # λ cancels from the ratios r_i / r_i(0): the coefficients are ω ⊙ λ with the same ω.
    task_weights = rng.uniform(0.5, 4.0, K)
    _, weighted = run(grads, task_weights=task_weights)
    np.testing.assert_allclose(np.asarray(weighted.coefficients), omega * task_weights, rtol=1e-5)
    # A common scale of every gradient leaves ω unchanged.
    for scale in (1e-10, 1e10):
        _, scaled = run(grads * scale)
        np.testing.assert_allclose(scaled.inner.method_state.loss_weights, omega, rtol=1e-5)
    # Permuting the tasks permutes ω.
    permutation = np.array([2, 0, 1])
    _, permuted = run(grads[:, permutation])
    np.testing.assert_allclose(
        permuted.inner.method_state.loss_weights, omega[:, permutation], rtol=1e-5
    )


def test_a_task_that_starts_at_zero_takes_its_first_nonzero_estimate():
    grads, _ = random_problem(np.random.default_rng(3), T, K, D)
    grads[:2, 2] = 0.0
    updates, states = run(grads)
    assert np.all(np.isfinite(updates))
    # r_i(t) = Σ_p g² / √(Σ_s g²), in NumPy (0 for the zero task).
    sums = np.cumsum(grads**2, axis=0)
    risks = np.sum(np.where(sums > 0, grads**2 / np.sqrt(np.where(sums > 0, sums, 1)), 0), -1)
    np.testing.assert_allclose(states.inner.method_state.excess_risks, risks, rtol=1e-5)
    initial = np.asarray(states.inner.method_state.initial_risks, np.float64)
    np.testing.assert_array_equal(initial[:2, 2], 0.0)
    np.testing.assert_allclose(initial[2:, 2], risks[2, 2], rtol=1e-6)
    # Its ratio is 0 until its first gradient (step 2), 1 there; ω follows the official rule.
    omega = np.ones(K)
    expected = [omega]
    for t in range(1, T):
        ratio = risks[t] / np.array([risks[0, 0], risks[0, 1], risks[2, 2]])
        ratio[2] = ratio[2] if t >= 2 else 0.0
        omega = omega * np.exp(0.5 * ratio)
        omega = K * omega / omega.sum()
        expected.append(omega)
    np.testing.assert_allclose(states.inner.method_state.loss_weights, expected, rtol=1e-5)


def test_a_non_finite_step_is_rejected_and_leaves_the_state():
    grads, _ = random_problem(np.random.default_rng(4), T, K, D)
    poisoned = grads.copy()
    poisoned[3, 1, 2] = np.nan
    updates, states = run(poisoned)
    assert np.all(np.isnan(updates[3]))
    np.testing.assert_array_equal(
        states.squared_gradient_sums[0][3], states.squared_gradient_sums[0][2]
    )
    np.testing.assert_array_equal(
        states.inner.method_state.loss_weights[3], states.inner.method_state.loss_weights[2]
    )
    # The following steps are those of the run without step 3.
    omega = official_weights(np.delete(grads, 3, axis=0), 0.5, eps=0.0)
    np.testing.assert_allclose(
        np.delete(np.asarray(states.inner.method_state.loss_weights), 3, axis=0), omega, rtol=1e-5
    )


def test_shared_mask_forms_the_estimates_on_the_shared_leaves_and_weights_every_leaf():
    rng = np.random.default_rng(5)
    grads, _ = random_problem(rng, 2, K, D)
    heads = rng.normal(size=(2, K, 3))
    params = {"shared": jnp.zeros(D), "heads": jnp.zeros(3)}
    tx = excess_mtl(1.0, shared_mask={"shared": True, "heads": False})
    state = tx.init(params)
    assert [x.shape for x in state.squared_gradient_sums] == [(0, D)]  # sized at the update
    update = jax.jit(tx.update)
    for t in range(2):
        stacked = {"shared": jnp.asarray(grads[t]), "heads": jnp.asarray(heads[t])}
        updates, state = update(stacked, state, params)
    assert [x.shape for x in state.squared_gradient_sums] == [(K, D)]
    omega = official_weights(grads, 1.0, eps=0.0)[-1]
    np.testing.assert_allclose(state.coefficients, omega, rtol=1e-5)
    np.testing.assert_allclose(updates["heads"], omega @ heads[1], rtol=1e-5)
    np.testing.assert_allclose(updates["shared"], omega @ grads[1], rtol=1e-5)


def test_bfloat16():
    grads, _ = random_problem(np.random.default_rng(6), 4, K, D)
    rounded = np.asarray(jnp.asarray(grads, jnp.bfloat16).astype(jnp.float32), np.float64)
    low, states = run(rounded, dtype=jnp.bfloat16)
    high, _ = run(rounded)
    assert states.squared_gradient_sums[0].dtype == jnp.float32
    assert np.all(np.isfinite(low))
    np.testing.assert_allclose(low, high, rtol=2.0**-7, atol=1e-2 * np.abs(high).max())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"robust_step_size": -0.1}, ValueError, "`robust_step_size`"),
        ({"robust_step_size": float("nan")}, ValueError, "`robust_step_size`"),
        ({"robust_step_size": "0.1"}, TypeError, "`robust_step_size`"),
        ({"task_weights": [1.0, -1.0]}, ValueError, "`task_weights`"),
        ({"num_tasks": 0}, ValueError, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        cg.excess_mtl(**kwargs)
