"""PCGrad against parameter-space references computed by hand and in NumPy, and its properties."""

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
    initial_state,
    property_batch,
    rel_err,
    run,
)
from helpers.official_references import numpy_pcgrad

from camegrad_jax._pcgrad import pcgrad

DIM = 16
SEED = {"seed": 0}


def seeded_state(grads, seeds):
    """The initial state of each problem, problem b drawing its task orders from seeds[b]."""
    state = initial_state(pcgrad, grads, SEED)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    return state._replace(method_state=state.method_state._replace(key=keys))


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


def five_slot_run(grads, weights):
    """One update of each of FIVE_SLOTS (B, 5, DIM) problems, problem b with seed b: one
    compilation for every test of up to five tasks (an absent task is a zero gradient, which
    never conflicts, so it is never projected against and never moves)."""
    state = seeded_state(grads, np.arange(len(grads)))
    updates, state = run(pcgrad, grads, hyper=SEED, task_weights=weights, state=state)
    h = weights[..., None] * grads
    orders = np.asarray(state.method_state.task_order)
    scale = np.sum(np.linalg.norm(h, axis=-1), axis=-1)
    expected = numpy_pcgrad(h, orders)
    self_projected = numpy_pcgrad(h, orders, skip_self=False)
    error = np.linalg.norm(updates - expected, axis=-1) / scale
    apart = np.linalg.norm(self_projected - expected, axis=-1) / scale
    return orders, error, apart


FIVE_SLOTS = 1024


def test_a_task_turned_against_itself_is_not_projected_onto_itself():
    # Task 0 meets task 1, then task 2: (1, 0) becomes (0.5, 0.5) against (-1, 1), then
    # (-0.1, 0.3) against (-3, -1), which conflicts with task 0 itself. Algorithm 1 (j != i)
    # keeps it; projecting it against task 0 too would give (0, 0.3). In the other order it ends
    # at (-0.1, -0.1), turned as well. Every seed draws other orders for the same problem.
    grads = np.zeros((FIVE_SLOTS, 5, DIM))
    grads[:, :3, :2] = [[1.0, 0.0], [-1.0, 1.0], [-3.0, -1.0]]
    orders, error, apart = five_slot_run(grads, np.ones((FIVE_SLOTS, 5)))
    assert np.max(error) <= 1e-5
    position = np.argsort(orders[:, 0], axis=-1)  # position[b, j]: when task 0 meets task j
    last = (position[:, 0] > position[:, 1]) & (position[:, 0] > position[:, 2])
    assert np.sum(last) >= 100
    assert np.all(apart[last] > 0.01), np.min(apart[last])


def test_random_problems_match_algorithm_1():
    # 3 to 5 tasks, spanning 2, 3, 4 or all DIM coordinates: in few dimensions conflicts pile
    # up and a task's projected gradient can turn against its own, and each problem draws its
    # own task orders.
    rng = np.random.default_rng(10)
    present = rng.integers(3, 6, size=FIVE_SLOTS)
    span = rng.choice([2, 3, 4, DIM], size=FIVE_SLOTS)
    grads = batch_of(rng, FIVE_SLOTS, 5, DIM)
    grads = np.where(np.arange(DIM) < span[:, None, None], grads, 0.0)
    grads = np.where(np.arange(5)[:, None] < present[:, None, None], grads, 0.0)
    weights = rng.uniform(0.5, 3.0, size=(FIVE_SLOTS, 5))
    _, error, apart = five_slot_run(grads, weights)
    assert np.max(error) <= 1e-5
    # Enough of them tell Algorithm 1 from projecting a task against itself, at each K.
    for num_tasks in (3, 4, 5):
        assert np.sum(apart[present == num_tasks] > 1e-3) >= 3, num_tasks


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
