"""FAMO against NumPy re-implementations of the official code, and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.loss_testing import random_problem, rel_err, run_steps

import camegrad_jax as cg
from camegrad_jax._famo import famo

T, K, D = 10, 3, 8
EPS = 1e-8


class TorchAdam:
    """torch.optim.Adam with (L2) weight_decay, as the official code steps the logits."""

    def __init__(self, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
        self.m = self.v = 0.0
        self.t = 0

    def step(self, param, grad):
        grad = grad + self.wd * param
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        denom = np.sqrt(self.v) / np.sqrt(1 - self.b2**self.t) + self.eps
        return param - self.lr / (1 - self.b1**self.t) * self.m / denom


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


class OfficialFamo:
    """The official `FAMO` class's formulas (get_weighted_loss / update) in NumPy."""

    def __init__(self, k, lr, weight_decay, min_losses=0.0):
        self.w = np.zeros(k)
        self.opt = TorchAdam(lr, weight_decay)
        self.min_losses = min_losses

    def coefficients(self, losses):
        """∂/∂L of Σ z log(D) / c with c detached: the weights on the task gradients."""
        self.prev_loss = losses
        z = softmax(self.w)
        d = losses - self.min_losses + EPS
        c = np.sum(z / d)
        return z / d / c

    def update(self, curr_loss):
        delta = np.log(self.prev_loss - self.min_losses + EPS) - np.log(
            curr_loss - self.min_losses + EPS
        )
        z = softmax(self.w)
        grad = z * (delta - z @ delta)  # softmax's Jacobian (symmetric) times delta
        self.w = self.opt.step(self.w, grad)


def reference(grads, values, lr, weight_decay, task_weights, min_loss=0.0):
    """This library's schedule: step t's losses serve as step t-1's "after-step" losses."""
    official = OfficialFamo(grads.shape[1], lr, weight_decay, min_loss)
    updates, logits = [], []
    for t, (g, loss) in enumerate(zip(grads, values, strict=True)):
        weighted = task_weights * loss
        if t > 0:
            official.update(weighted)
        logits.append(official.w)
        updates.append((official.coefficients(weighted) * task_weights) @ g)
    return np.array(updates), np.array(logits)


@pytest.mark.parametrize("seed", range(3))
def test_matches_reference_over_steps(seed):
    rng = np.random.default_rng(seed)
    grads, values = random_problem(rng, T, K, D)
    lr, wd, weights = rng.uniform(0.01, 0.2), rng.uniform(0, 0.1), rng.uniform(0.5, 2, K)
    min_loss = rng.uniform(0, 0.2, K)
    updates, states, _ = run_steps(
        famo,
        grads,
        values,
        learning_rate=lr,
        weight_decay=wd,
        min_loss=min_loss,
        task_weights=weights,
    )
    expected_updates, expected_logits = reference(grads, values, lr, wd, weights, min_loss)
    assert rel_err(updates, expected_updates) < 1e-5
    np.testing.assert_allclose(states.method_state.logits, expected_logits, atol=1e-5)


def test_equals_the_official_loop_on_a_full_batch_problem():
    # With the whole data set in every batch, the official re-evaluation of the losses after the
    # step gives exactly the next step's losses: the two schedules coincide.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 20, 4))
    b = rng.normal(size=(2, 20)) * np.array([[1.0], [5.0]])
    a_j, b_j = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

    def losses(theta):
        return jnp.mean((jnp.einsum("knd,d->kn", a_j, theta) - b_j) ** 2, axis=1)

    tx = optax.chain(famo(learning_rate=0.1, num_tasks=2), optax.sgd(0.05))

    def step(carry, _):
        theta, state = carry
        values, grads = cg.task_gradients(losses, theta)
        updates, state = tx.update(grads, state, theta, value=values)
        return (optax.apply_updates(theta, updates), state), state[0].method_state.logits

    theta0 = jnp.zeros(4)
    (theta, _), logits = jax.jit(lambda: jax.lax.scan(step, (theta0, tx.init(theta0)), length=8))()

    official = OfficialFamo(2, 0.1, 1e-3)
    theta_ref = np.zeros(4)
    loss_fn = lambda th: np.mean((np.einsum("knd,d->kn", a, th) - b) ** 2, axis=1)  # noqa: E731
    grads_fn = lambda th: 2 * np.einsum("knd,kn->kd", a, np.einsum("knd,d->kn", a, th) - b) / 20  # noqa: E731
    for t in range(8):
        coefficients = official.coefficients(loss_fn(theta_ref))
        theta_ref = theta_ref - 0.05 * coefficients @ grads_fn(theta_ref)
        official.update(loss_fn(theta_ref))
        if t < 7:
            np.testing.assert_allclose(logits[t + 1], official.w, atol=1e-5)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-4, atol=1e-6)


def test_coefficients_are_the_gradient_of_the_normalised_log_loss():
    rng = np.random.default_rng(4)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run_steps(famo, grads, values, learning_rate=0.3)
    z = jax.nn.softmax(states.method_state.logits[-1])
    c = np.sum(z / (values[-1] + EPS))
    autodiff = jax.grad(lambda loss: jnp.sum(z * jnp.log(loss + EPS)) / c)(jnp.asarray(values[-1]))
    np.testing.assert_allclose(states.coefficients[-1], autodiff, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_coefficients_lie_on_the_simplex(seed):
    rng = np.random.default_rng(10 + seed)
    grads, values = random_problem(rng, T, K, D)
    _, states, _ = run_steps(famo, grads, values, learning_rate=rng.uniform(0.01, 1))
    coefficients = np.asarray(states.coefficients)
    assert np.all(coefficients >= 0)
    np.testing.assert_allclose(coefficients.sum(1), 1.0, rtol=1e-5)


def test_first_update_only_records_the_losses():
    tx = famo(num_tasks=2)
    params = jnp.zeros(2)
    _, state = jax.jit(tx.update)(jnp.eye(2), tx.init(params), params, value=jnp.array([2.0, 3.0]))
    np.testing.assert_array_equal(state.method_state.logits, 0.0)
    np.testing.assert_allclose(state.method_state.previous_losses, [2.0, 3.0])
    assert int(state.method_state.logits_optimizer[1][0].count) == 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6])
def test_rescaling_every_loss_changes_nothing(scale):
    rng = np.random.default_rng(5)
    grads, values = random_problem(rng, T, K, D)
    base, base_states, _ = run_steps(famo, grads, values)
    scaled, states, _ = run_steps(famo, grads, values * scale)
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(states.method_state.logits, base_states.method_state.logits, 1e-4)


def test_static_task_weights_keep_the_direction():
    rng = np.random.default_rng(6)
    grads, values = random_problem(rng, T, K, D)
    base, _, _ = run_steps(famo, grads, values)
    weighted, _, _ = run_steps(famo, grads, values, task_weights=np.array([1.0, 4.0, 0.5]))
    cosine = np.sum(base * weighted, 1) / np.linalg.norm(base, axis=1)
    cosine /= np.linalg.norm(weighted, axis=1)
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-10, 1e10])
def test_extreme_scales_stay_finite(scale):
    rng = np.random.default_rng(7)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(famo, grads * scale, values * scale)
    assert np.all(np.isfinite(updates))
    assert np.all(np.isfinite(states.method_state.logits))


def test_zero_losses_and_gradients():
    values = np.zeros((T, K))
    values[:, 0] = 1.0
    updates, states, _ = run_steps(famo, np.zeros((T, K, D)), values)
    np.testing.assert_array_equal(updates, 0.0)
    assert np.all(np.isfinite(states.method_state.logits))
    # A task at its minimum takes (almost) all the weight: its log-loss gradient is 1/ε.
    assert float(states.coefficients[0, 0]) < 1e-6


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(8)
    grads, values = random_problem(rng, T, K, D)
    updates, states, _ = run_steps(famo, grads, values, dtype=jnp.bfloat16)
    assert updates.dtype == jnp.bfloat16
    assert states.method_state.logits.dtype == jnp.float32
    expected, _ = reference(
        np.asarray(jnp.asarray(grads, jnp.bfloat16), float),
        np.asarray(jnp.asarray(values, jnp.bfloat16), float),
        0.025,
        1e-3,
        np.ones(K),
    )
    assert rel_err(updates, expected) < 1e-2


def test_non_finite_losses_keep_state_and_poison_update():
    tx = famo(num_tasks=2)
    params = jnp.zeros(2)
    update = jax.jit(tx.update)
    _, state = update(jnp.eye(2), tx.init(params), params, value=jnp.array([1.0, 2.0]))
    updates, new_state = update(jnp.eye(2), state, params, value=jnp.array([jnp.nan, 2.0]))
    assert np.all(np.isnan(updates))
    jax.tree.map(np.testing.assert_array_equal, new_state.method_state, state.method_state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"weight_decay": -1e-3}, "`weight_decay`"),
        ({"min_loss": float("nan")}, "`min_loss`"),
        ({"min_loss": [[0.0, 1.0]]}, "`min_loss`"),
        ({"num_tasks": -1}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        famo(**kwargs)


def test_min_loss_length_checked_against_the_tasks():
    with pytest.raises(ValueError, match="`min_loss` has 3 entries"):
        famo(min_loss=[0.0, 0.0, 0.0], num_tasks=2)
    # Without num_tasks, K (and the check) comes with the first update.
    tx = famo(min_loss=[0.0, 0.5])
    params = jnp.zeros(2)
    updates, _ = tx.update(jnp.eye(2), tx.init(params), params, value=jnp.array([1.0, 1.5]))
    np.testing.assert_allclose(updates, [0.5, 0.5], rtol=1e-6)  # equal distances to the floor
    tx = famo(min_loss=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="`min_loss` has 3 entries but K = 2"):
        tx.update(jnp.eye(2), tx.init(params), params, value=jnp.ones(2))


def test_missing_or_misshapen_value():
    tx = famo(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`value=losses`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match=r"`value` with shape \(1,\)"):
        tx.update(jnp.ones((2, 3)), state, params, value=jnp.ones(1))
