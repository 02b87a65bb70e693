"""PCGrad against parameter-space references computed by hand and in NumPy, and its properties."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    rel_err,
    run,
)

from camegrad_jax._pcgrad import pcgrad

DIM = 16
SEED = {"seed": 0}


def numpy_pcgrad(h, order):
    """Algorithm 1 of the paper in parameter space, task i meeting the others in order[i]."""
    total = np.zeros(h.shape[1])
    for i in range(len(h)):
        g = h[i].copy()
        for j in order[i]:
            inner = g @ h[j]
            if j != i and inner < 0:
                g = g - inner / (h[j] @ h[j]) * h[j]
        total += g
    return total


@functools.cache
def two_tasks():
    """One compiled run for every K = 2 test: the property batch and 12 random problems."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 2, DIM)
    random = batch_of(rng, 12, 2, DIM)
    updates, _ = run(pcgrad, np.concatenate([properties.grads, random]), hyper=SEED)
    return properties, updates[: len(properties.names)], random, updates[len(properties.names) :]


def test_two_tasks_by_hand():
    _, _, random, updates = two_tasks()
    for (g1, g2), update in zip(random, updates, strict=True):
        inner = g1 @ g2
        expected = g1 + g2
        if inner < 0:  # each is projected onto the normal plane of the other
            expected = (g1 - inner / (g2 @ g2) * g2) + (g2 - inner / (g1 @ g1) * g1)
        assert rel_err(update, expected) <= 1e-5


def test_two_tasks_properties_and_non_conflict():
    properties, updates, _, _ = two_tasks()
    # With K = 2 no randomness is left: the order of the tasks does not matter, and the update
    # conflicts with neither task (<g1, g1^PC> = ‖g1‖² − <g1, g2>²/‖g2‖² ≥ 0).
    check_properties(updates, properties, permutation_invariant=True, non_conflicting=True)
    duplicate = properties.grads[properties.index("duplicate")]
    np.testing.assert_allclose(updates[properties.index("duplicate")], 2 * duplicate[0], rtol=1e-5)
    one_zero = properties.grads[properties.index("one_zero")]
    np.testing.assert_allclose(updates[properties.index("one_zero")], one_zero[0], rtol=1e-5)


def test_many_tasks_match_numpy_with_the_same_task_order():
    rng = np.random.default_rng(1)
    grads = batch_of(rng, 8, 4, DIM)
    weights = rng.uniform(0.5, 3.0, size=(8, 4))
    updates, state = run(pcgrad, grads, hyper=SEED, task_weights=weights)
    orders = np.asarray(state.method_state.task_order)
    for h, w, order, update in zip(grads, weights, orders, updates, strict=True):
        assert all(sorted(row) == [0, 1, 2, 3] for row in order)
        assert rel_err(update, numpy_pcgrad(w[:, None] * h, order)) <= 1e-5
    # The next step draws fresh orders from the advanced key; the same state draws the same.
    again, state2 = run(pcgrad, grads, hyper=SEED, task_weights=weights, state=state)
    assert not np.array_equal(np.asarray(state2.method_state.task_order), orders)
    repeat, _ = run(pcgrad, grads, hyper=SEED, task_weights=weights, state=state)
    np.testing.assert_array_equal(again, repeat)


def test_many_tasks_properties():
    rng = np.random.default_rng(2)
    properties = property_batch(rng, 4, DIM)
    # Every example starts from the same key: scaled copies meet the same task orders, so the
    # update is exactly scale-equivariant; permuting the tasks changes which order each meets.
    updates, state = run(pcgrad, properties.grads, hyper=SEED)
    check_properties(updates, properties, permutation_invariant=False)
    for name in ("duplicate", "one_zero", "permuted"):
        i = properties.index(name)
        order = np.asarray(state.method_state.task_order[i])
        assert rel_err(updates[i], numpy_pcgrad(properties.grads[i], order)) <= 1e-5


def test_seed_sets_the_draw():
    grads = batch_of(np.random.default_rng(3), 1, 4, DIM)
    orders = []
    for seed in (0, 0, 1):
        state = jax.tree.map(lambda x: x[None], pcgrad(seed=seed, num_tasks=4).init(None))
        _, state = run(pcgrad, grads, hyper={"seed": seed}, state=state)
        orders.append(np.asarray(state.method_state.task_order))
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


def test_integer_seed_survives_inject_hyperparams():
    # optax.inject_hyperparams passes `seed` and `num_tasks` as arrays, traced inside update.
    grads = batch_of(np.random.default_rng(5), 1, 4, DIM)
    params = jnp.zeros(DIM)
    injected = optax.inject_hyperparams(pcgrad)(seed=7, num_tasks=4)
    update, state = jax.jit(injected.update)(
        jnp.asarray(grads[0], jnp.float32), injected.init(params), params
    )
    expected, _ = run(pcgrad, grads, hyper={"seed": 7})
    np.testing.assert_allclose(update, expected[0], rtol=1e-6)
    assert int(state.hyperparams["seed"]) == 7


def test_bfloat16():
    check_bfloat16(pcgrad, batch_of(np.random.default_rng(4), 4, 2, DIM), hyper=SEED)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1.5}, "`seed`"),
        ({"seed": "zero"}, "`seed`"),
        ({"seed": True}, "`seed`"),
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pcgrad(**kwargs)
