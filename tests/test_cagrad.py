"""CAGrad against its dual solved by SciPy's SLSQP and the official rescaling formulas applied in
parameter space, its guarantee, and its properties."""

from __future__ import annotations

import functools
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import references
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    rel_err,
    run,
)

import camegrad_jax as cg
from camegrad_jax._cagrad import cagrad

DIM = 16
NUM_TASKS = 3


def official_cagrad(h, c, rescale):
    """The official update (Cranial-XIX/CAGrad, `cagrad`), times K as its trainers apply it, with
    the dual solved by SLSQP to a tight tolerance and without the absolute 1e-8 guards."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    k = len(h)
    gram = h @ h.T
    g0 = h.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    b = np.full(k, 1 / k)

    def objective(w):
        return w @ gram @ b + radius * np.sqrt(max(w @ gram @ w, 0.0))

    result = scipy_optimize.minimize(
        objective,
        b,
        method="SLSQP",
        bounds=[(0, 1)] * k,
        constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    gw = result.x @ h
    d = g0 + radius / np.linalg.norm(gw) * gw if radius > 0 else g0
    return k * d / {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale]


@functools.cache
def three_tasks():
    """One compiled run: the property batch (c = 0.5, rescale = 1) and one random problem with
    random task weights for every (c, rescale)."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, NUM_TASKS, DIM)
    settings = list(itertools.product([0.0, 0.1, 0.5, 0.9, 2.0, 5.0], [0, 1, 2]))
    random = batch_of(rng, len(settings), NUM_TASKS, DIM)
    n = len(properties.names)
    c = np.array([0.5] * n + [c for c, _ in settings])
    rescale = np.array([1] * n + [r for _, r in settings], np.int32)
    weights = np.concatenate([np.ones((n, NUM_TASKS)), rng.uniform(0.5, 4, (len(settings), 3))])
    updates, state = run(
        cagrad,
        np.concatenate([properties.grads, random]),
        hyper={"c": c, "rescale": rescale},
        task_weights=weights,
    )
    return properties, updates[:n], settings, random, weights[n:], updates[n:], state


def test_matches_slsqp_dual_and_official_rescaling():
    *_, settings, random, weights, updates, state = three_tasks()
    for (c, rescale), grads, w, update in zip(settings, random, weights, updates, strict=True):
        h = w[:, None] * grads
        expected = official_cagrad(h, c, rescale)
        assert rel_err(update, expected) <= 1e-4, (c, rescale)
        # The exact enumeration of active sets (tests/helpers/references.py): the update agrees
        # with it to float32 round-off. SLSQP stops within its own tolerance of the optimum (seen
        # 1.6e-5 away with scipy 1.17), so it is held to 1e-4 only.
        divisor = {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale]
        exact = NUM_TASKS * references.conflict_averse_direction(h, c) / divisor
        assert rel_err(update, exact) <= 2e-6, (c, rescale)
        assert rel_err(expected, exact) <= 1e-4, (c, rescale)
    assert np.all(np.asarray(state.method_state.duality_gap) <= 1e-5)


def test_zero_radius_is_linear_scalarization():
    *_, settings, random, weights, updates, _ = three_tasks()
    for (c, _), grads, w, update in zip(settings, random, weights, updates, strict=True):
        if c == 0.0:
            assert rel_err(update, w @ grads) <= 1e-6


def test_conflict_averse_guarantee():
    # d lies in the ball ‖d − g0‖ ≤ c‖g0‖ and improves the worst task at least as much as g0.
    *_, settings, random, weights, updates, _ = three_tasks()
    for (c, rescale), grads, w, update in zip(settings, random, weights, updates, strict=True):
        h = w[:, None] * grads
        d = update * {0: 1.0, 1: 1 + c**2, 2: 1 + c}[rescale] / NUM_TASKS
        g0 = h.mean(axis=0)
        assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-5) + 1e-6
        scale = np.linalg.norm(h, axis=1) * np.linalg.norm(g0)
        assert np.min(h @ d) >= np.min(h @ g0) - 1e-5 * np.max(scale)


def test_properties():
    properties, updates, *_ = three_tasks()
    check_properties(updates, properties)
    i = properties.index("duplicate")
    expected = official_cagrad(properties.grads[i], 0.5, 1)
    assert rel_err(updates[i], expected) <= 1e-4


def test_bfloat16():
    grads = batch_of(np.random.default_rng(1), 4, NUM_TASKS, DIM)
    check_bfloat16(cagrad, grads, hyper={"c": 0.5, "rescale": np.int32(1)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c": -1.0}, r"`c = -1.0`"),
        ({"c": float("nan")}, "`c`"),
        ({"rescale": 3}, "`rescale`"),
        ({"rescale": True}, "`rescale`"),
        ({"rescale": 1.5}, "`rescale`"),
        ({"solver": "slsqp"}, "`solver`"),
        ({"solver_tol": 0.0}, "`solver_tol`"),
        ({"solver_maxiter": 0}, "`solver_maxiter`"),
        ({"task_weights": [1.0, -2.0]}, "`task_weights`"),
        ({"num_tasks": 3, "task_weights": [1.0, 2.0]}, "num_tasks"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cagrad(**kwargs)


def test_gram_level_weighting_matches_the_official_update():
    # `cagrad_weights` alone (no transformation): coefficients on the raw gradients whose sum is
    # the official update, from G only.
    rng = np.random.default_rng(7)
    for c, rescale in [(0.4, 1), (2.0, 2), (0.0, 0)]:
        grads = rng.normal(size=(NUM_TASKS, DIM))
        weights = rng.uniform(0.5, 2.0, NUM_TASKS)
        result = cg.cagrad_weights(
            jnp.asarray(grads @ grads.T, jnp.float32), c=c, rescale=rescale, task_weights=weights
        )
        update = np.asarray(result.coefficients, np.float64) @ grads
        assert rel_err(update, official_cagrad(weights[:, None] * grads, c, rescale)) <= 1e-4
    poisoned = cg.cagrad_weights(jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]]))
    assert np.all(np.isnan(np.asarray(poisoned.coefficients)))
