"""Krum and Multi-Krum against the paper's rule in parameter space, torchjd's fixed values, and
their properties."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from gradient_method_checks import batch_of, check_bfloat16, check_properties, property_batch, run

from camegrad_jax._krum import krum, krum_coefficients

DIM = 16
K = 5
# torchjd's tests/unit/aggregation/test_values.py: Krum(n_byzantine=1, n_selected=4) on J_Krum.
J_KRUM = np.array(
    [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23.0], [1.0, 2.0, 3.0], [2.0, 0.0, 1.0]]
)
TORCHJD_OUTPUT = np.array([1.25, 0.75, 1.5])
TORCHJD_WEIGHTS = np.array([0.25, 0.25, 0.0, 0.25, 0.25])


def numpy_krum(h, n_byzantine, n_selected):
    """Definition 1 of the paper (Multi-Krum: the mean of the m best-scored), with squared
    distances to the K − f − 2 nearest other proposals."""
    scores = []
    for i, v in enumerate(h):
        others = [np.sum((v - w) ** 2) for j, w in enumerate(h) if j != i]
        scores.append(sum(sorted(others)[: len(h) - n_byzantine - 2]))
    chosen = np.argsort(scores, kind="stable")[:n_selected]
    return h[chosen].mean(axis=0)


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
    updates, _ = run(krum, J_KRUM[None], n_byzantine=1, n_selected=4)
    np.testing.assert_allclose(updates[0], TORCHJD_OUTPUT, atol=1e-6)


def test_traced_out_of_range_gives_nan():
    # Under inject_hyperparams the integers are traced: m > K or K < f + 3 make the update NaN.
    grads = batch_of(np.random.default_rng(1), 2, K, DIM)
    hyper = {"n_byzantine": np.array([1, 3]), "n_selected": np.array([K + 1, 1])}
    updates, _ = run(krum, grads, hyper=hyper)
    assert np.all(np.isnan(updates))


def test_bfloat16():
    check_bfloat16(krum, batch_of(np.random.default_rng(2), 4, K, DIM), n_byzantine=1)


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
