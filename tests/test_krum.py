"""Krum and Multi-Krum against the paper's rule in parameter space, torchjd's fixed values, and
their properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    run,
)
from helpers.official_references import numpy_krum

import camegrad_jax as cg
from camegrad_jax._krum import krum, krum_coefficients

DIM = 16
K = 5
# torchjd's tests/unit/aggregation/test_values.py: Krum(n_byzantine=1, n_selected=4) on J_Krum.
J_KRUM = np.array(
    [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0], [1.0, 2.0, 3.0], [2.0, 0.0, 1.0]]
)
TORCHJD_OUTPUT = np.array([1.25, 0.75, 1.5])
TORCHJD_WEIGHTS = np.array([0.25, 0.25, 0.0, 0.25, 0.25])


@functools.cache
def five_tasks():
    """One compiled run: the property batch (f = 1, m = 2), and random problems with task
    weights, an outlier task and a sweep of (f, m), traced."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, K, DIM)
    n = len(properties.names)
    random = batch_of(rng, 12, K, DIM)
    random[::3, 1] *= 1e3  # an adversarial task in every third problem
    grads = np.concatenate([properties.grads, random])
    weights = np.concatenate([np.ones((n, K)), rng.uniform(0.5, 4, (12, K))])
    byzantine = np.concatenate([np.ones(n, int), rng.integers(0, 3, 12)])
    selected = np.concatenate([np.full(n, 2), rng.integers(1, 4, 12)])
    hyper = {"n_byzantine": byzantine, "n_selected": selected}
    updates, state = run(krum, grads, hyper=hyper, task_weights=weights)
    return properties, updates, state.coefficients, grads, weights, byzantine, selected, n


def test_matches_paper_rule():
    _, updates, coefficients, grads, weights, byzantine, selected, n = five_tasks()
    for i in range(n, len(grads)):
        h = weights[i][:, None] * grads[i]
        expected = numpy_krum(h, byzantine[i], selected[i])
        np.testing.assert_allclose(updates[i], expected, rtol=1e-5, atol=1e-6 * np.abs(h).max())
        chosen = np.asarray(coefficients[i]) > 0
        np.testing.assert_allclose(
            np.asarray(coefficients[i])[chosen], weights[i][chosen] / selected[i]
        )
        if (i - n) % 3 == 0:
            assert not chosen[1], "the outlier was selected"


def test_properties():
    properties, updates, *_ = five_tasks()
    n = len(properties.names)
    check_properties(updates[:n], properties)


def test_torchjd_values():
    gram = jnp.asarray(J_KRUM @ J_KRUM.T, jnp.float32)
    np.testing.assert_allclose(krum_coefficients(gram, 1, 4), TORCHJD_WEIGHTS)
    # Zero-padded to the dimension of `five_tasks`, whose compilation this reuses.
    padded = np.pad(J_KRUM, ((0, 0), (0, DIM - 3)))[None]
    updates, _ = run(krum, padded, hyper={"n_byzantine": 1, "n_selected": 4})
    np.testing.assert_allclose(updates[0, :3], TORCHJD_OUTPUT, atol=1e-6)


def test_traced_out_of_range_gives_nan():
    # Under inject_hyperparams the integers are traced: m > K or K < f + 3 make the update NaN.
    grads = batch_of(np.random.default_rng(1), 2, K, DIM)
    hyper = {"n_byzantine": np.array([1, 3]), "n_selected": np.array([K + 1, 1])}
    updates, _ = run(krum, grads, hyper=hyper)
    assert np.all(np.isnan(updates))


def test_bfloat16():
    grads = batch_of(np.random.default_rng(2), 4, K, DIM)
    check_bfloat16(krum, grads, hyper={"n_byzantine": 1, "n_selected": 2})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n_byzantine": -1}, ValueError, "`n_byzantine`"),
        ({"n_byzantine": 1.5}, ValueError, "`n_byzantine`"),
        ({"n_byzantine": "1"}, TypeError, "`n_byzantine`"),
        ({"n_byzantine": 1, "n_selected": 0}, ValueError, "`n_selected`"),
        ({"n_byzantine": 1, "task_weights": [1.0, 0.0, 1.0, 1.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        krum(**kwargs)


@pytest.mark.parametrize(
    ("n_byzantine", "n_selected", "num_tasks", "message"),
    [(1, 1, 3, "n_byzantine \\+ 3 = 4"), (1, 5, 4, "n_selected = 5")],
)
def test_too_few_tasks_raise_at_update(n_byzantine, n_selected, num_tasks, message):
    tx = krum(n_byzantine, n_selected)
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match=message):
        tx.update(jnp.ones((num_tasks, 3)), tx.init(params), params)


def three_task_problem(dtype=jnp.float32):
    """A shared vector pulled towards three different targets."""
    params = {"w": jnp.array([0.5, -1.0, 2.0], dtype), "b": jnp.array(0.3, dtype)}
    targets = jnp.array([[1.0, 1.0, -1.0], [-1.0, 0.5, 1.0], [0.5, -1.0, 0.0]], dtype)

    def losses(p):
        return jnp.sum((p["w"][None, :] + p["b"] - targets) ** 2, axis=1)

    return params, losses


def test_interop_with_three_tasks():
    # The interoperability suite's checks (tests/test_interop.py runs two-task problems, where
    # Krum is undefined), at K = 3: first in a chain, the integers traced by inject_hyperparams,
    # apply_if_finite and MultiSteps downstream, one compilation, a rejected NaN step that
    # leaves the state finite, convergence; lax.scan equal to the loop; bfloat16 kept.
    params, losses = three_task_problem()
    injected = optax.inject_hyperparams(krum, static_args=("num_tasks",))(
        n_byzantine=0, n_selected=2, num_tasks=3
    )
    downstream = optax.apply_if_finite(
        optax.MultiSteps(optax.sgd(0.05), every_k_schedule=2).gradient_transformation(), 3
    )
    tx = optax.chain(injected, downstream)

    @jax.jit
    def step(params, state, poison):
        values, grads = cg.task_gradients(losses, params)
        grads = jax.tree.map(lambda g: jnp.where(poison, g.at[0].set(jnp.nan), g), grads)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, values

    state = tx.init(params)
    params, state, first = step(params, state, True)
    assert int(state[1].notfinite_count) == 1
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
    for _ in range(200):
        params, state, values = step(params, state, False)
    assert step._cache_size() == 1
    assert float(jnp.sum(values)) < 0.6 * float(jnp.sum(first))

    plain = optax.chain(krum(0, 2, num_tasks=3), optax.sgd(0.01))

    def scan_step(carry, _):
        params, state = carry
        _, grads = cg.task_gradients(losses, params)
        updates, state = plain.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), updates

    start = (params, plain.init(params))
    _, scanned = jax.lax.scan(scan_step, start, length=3)
    carry = start
    for index in range(3):
        carry, looped = scan_step(carry, None)
        for one, stacked in zip(jax.tree.leaves(looped), jax.tree.leaves(scanned), strict=True):
            np.testing.assert_allclose(one, stacked[index], rtol=1e-5, atol=1e-6)

    low_params, low_losses = three_task_problem(jnp.bfloat16)
    _, grads = cg.task_gradients(low_losses, low_params)
    updates, _ = jax.jit(plain.update)(grads, plain.init(low_params), low_params)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(updates))
