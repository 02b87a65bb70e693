"""GradVac against Algorithm 1 of the paper written in NumPy (LibMTL's loop over task pairs and
parameter groups, in parameter space), over several steps, and its properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    run,
)
from helpers.official_references import numpy_gradvac

import camegrad_jax as cg
from camegrad_jax._gradvac import gradvac

DIM = 16
K = 3
# torchjd's tests/unit/aggregation/test_values.py: PCGrad() on J_base, GradVac's first step.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
TORCHJD_PCGRAD = np.array([0.5848, 3.8012, 3.8012])


@functools.cache
def three_steps():
    """Three compiled steps of 8 problems (task weights, β swept, traced) with their states."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 4, (8, K))
    beta = np.linspace(0.05, 1.0, 8)
    state, steps = None, []
    for _ in range(3):
        grads = batch_of(rng, 8, K, DIM)
        updates, state = run(
            gradvac, grads, hyper={"beta": beta}, task_weights=weights, state=state
        )
        steps.append((grads, updates, state))
    return weights, beta, steps


def test_matches_algorithm_1_over_steps():
    weights, beta, steps = three_steps()
    for b in range(8):
        targets = np.zeros((1, K, K))
        for grads, updates, state in steps:
            h = weights[b][:, None] * grads[b]
            orders = np.asarray(state.method_state.task_order[b])
            expected, targets = numpy_gradvac(h, [np.arange(DIM)], targets, orders, beta[b])
            np.testing.assert_allclose(updates[b], expected, rtol=2e-5, atol=1e-5 * np.abs(h).max())
            np.testing.assert_allclose(state.method_state.targets[b], targets[0], atol=1e-5)
    # The targets moved away from 0: later steps are not PCGrad's.
    assert np.abs(np.asarray(steps[-1][2].method_state.targets)).max() > 0.05


@pytest.mark.parametrize(
    ("grouping", "groups"),
    [
        ("layer", [[0, 1, 2, 3, 4], [5, 6, 7, 8]]),
        # One group for the biases, one for the rest: a user grouping across layers (a
        # compilation of its own, kept out of the default run).
        pytest.param(
            lambda path: path[-1].key == "bias",
            [[0, 1], [2, 3, 4, 5, 6, 7, 8]],
            marks=pytest.mark.slow,
            id="callable",
        ),
    ],
    ids=["layer", "callable"],
)
def test_groups_over_steps(grouping, groups):
    # Flattened in key order: dense/bias (2), dense/kernel (3), head/kernel (4).
    shapes = {"dense": {"bias": (2,), "kernel": (3,)}, "head": {"kernel": (2, 2)}}
    params = jax.tree.map(jnp.zeros, shapes, is_leaf=lambda x: isinstance(x, tuple))
    tx = cg.gradvac(beta=0.4, grouping=grouping, seed=3)
    update = jax.jit(tx.update)
    state, targets = tx.init(params), np.zeros((len(groups), K, K))
    rng = np.random.default_rng(1)
    for _ in range(3):
        flat = batch_of(rng, 1, K, 9)[0]
        grads = jax.tree.unflatten(
            jax.tree.structure(params),
            [
                jnp.asarray(flat[:, :2]),
                jnp.asarray(flat[:, 2:5]),
                jnp.asarray(flat[:, 5:]).reshape(K, 2, 2),
            ],
        )
        updates, state = update(grads, state, params)
        orders = np.asarray(state.group_states[0].method_state.task_order)
        expected, targets = numpy_gradvac(flat, [np.array(g) for g in groups], targets, orders, 0.4)
        got = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(updates)])
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
        for g, group_state in enumerate(state.group_states):
            np.testing.assert_allclose(group_state.method_state.targets, targets[g], atol=1e-5)


def test_properties_and_first_step_is_pcgrad():
    rng = np.random.default_rng(2)
    properties = property_batch(rng, K, DIM)
    grads = np.concatenate([properties.grads, np.pad(J_BASE, ((0, K - 2), (0, DIM - 3)))[None]])
    updates, _ = run(gradvac, grads, hyper={"beta": 0.01})  # the compilation of three_steps
    # Task orders are random: the order of the tasks changes the update (as PCGrad's).
    check_properties(updates[:-1], properties, permutation_invariant=False)
    # A zero third task changes nothing: torchjd's PCGrad value on J_base.
    np.testing.assert_allclose(updates[-1, :3], TORCHJD_PCGRAD, atol=1e-4)


def test_bfloat16():
    grads = batch_of(np.random.default_rng(3), 4, K, DIM)
    check_bfloat16(gradvac, grads, hyper={"beta": 0.01})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"beta": 1.5}, ValueError, "`beta`"),
        ({"beta": "0.1"}, TypeError, "`beta`"),
        ({"grouping": "layers"}, ValueError, "`grouping`"),
        ({"seed": 0.5}, ValueError, "`seed`"),
        ({"task_weights": [1.0, 0.0]}, ValueError, "`task_weights`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        gradvac(**kwargs)
