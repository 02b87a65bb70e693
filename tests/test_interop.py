"""The interoperability suite every stacked-gradient method passes (optax's `_common_test` idea).

Each entry of `METHODS` (the library's registry, see `helpers/method_registry.py`) builds a
transformation for K tasks; methods that need the loss values declare it, and receive them as
the `value` extra argument, as optax does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers.method_registry import FRAMEWORK_SAMPLE, METHODS, default_or_slow, is_variant
from helpers.two_task import LinenTwoHead, NNXTwoHead, extra_args, two_task_problem

import camegrad_jax as cg

IDS = lambda method: method.name  # noqa: E731

FRAMEWORK_METHODS = default_or_slow(METHODS, lambda m: m.name in FRAMEWORK_SAMPLE)
# Variants of a row (CAME-Grad's ablations and second solver, other options of a factory) share
# their row's state and dtype handling: by default they run the convergence check only, but for
# Setting B, whose noise is a wrapper of its own.
ROW_METHODS = default_or_slow(
    METHODS, lambda m: not is_variant(m) or m.name == "camegrad_setting_b"
)
INJECTABLE_METHODS = default_or_slow(
    [m for m in METHODS if m.injectable], lambda m: not is_variant(m)
)


# Compilation dominates this suite's time, so each test checks everything one compiled step
# can show.


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_first_in_chain_converges_without_recompiling(method):
    params, losses = two_task_problem()
    tx = optax.chain(method.build(2), optax.adam(0.05))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        values, grads = cg.task_gradients(losses, params)
        # Unknown extra arguments are tolerated, as by every optax chain member.
        updates, state = tx.update(
            grads, state, params, unknown_argument=3, **extra_args(method, values)
        )
        return optax.apply_updates(params, updates), state, values, updates

    first = None
    for _ in range(300):
        params, state, values, updates = step(params, state)
        first = values if first is None else first
    assert step._cache_size() == 1  # no recompilation after the first step
    # Updates come back shaped like the parameters, in their dtype.
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for update, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert update.shape == param.shape and update.dtype == param.dtype
    # Both tasks cannot reach 0 together; the sum must fall well below where it started.
    assert float(jnp.sum(values)) < 0.6 * float(jnp.sum(first))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


# Every row's state keeps its structure and dtypes (the first test's no-recompilation check);
# the scan itself runs on the sample by default.
@pytest.mark.parametrize("method", FRAMEWORK_METHODS, ids=IDS)
def test_state_is_stable_under_scan(method):
    params, losses = two_task_problem()
    tx = optax.chain(method.build(2), optax.sgd(0.01))

    def step(carry, _):
        params, state = carry
        values, grads = cg.task_gradients(losses, params)
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        return (optax.apply_updates(params, updates), state), (updates, state)

    start = (params, tx.init(params))
    _, scanned = jax.lax.scan(step, start, length=5)
    # Every step's updates and state are finite, and the same steps run eagerly in a Python loop
    # agree: the carry keeps the state's structure, dtypes and values.
    for leaf in jax.tree.leaves(scanned):
        assert not jnp.issubdtype(leaf.dtype, jnp.inexact) or bool(jnp.all(jnp.isfinite(leaf)))
    carry = start
    for index in range(5):
        carry, looped = step(carry, None)
        pairs = zip(jax.tree.leaves(looped), jax.tree.leaves(scanned), strict=True)
        for one, stacked in pairs:
            np.testing.assert_allclose(one, stacked[index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ROW_METHODS, ids=IDS)
def test_bfloat16_preserved(method):
    params, losses = two_task_problem(jnp.bfloat16)
    tx = method.build(2)
    values, grads = cg.task_gradients(losses, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params, **extra_args(method, values))
    for leaf, param in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert leaf.dtype == jnp.bfloat16
        assert leaf.shape == param.shape
        assert bool(jnp.all(jnp.isfinite(leaf)))


@pytest.mark.parametrize("method", INJECTABLE_METHODS, ids=IDS)
def test_inject_hyperparams_schedule(method):
    name, value = method.injectable
    params, losses = two_task_problem()
    schedule = optax.linear_schedule(value, value / 2, transition_steps=4)
    # `num_tasks` sizes the state: static, so that `init` also works inside `jit`.
    injected = optax.inject_hyperparams(method.partial(2), static_args=("num_tasks",))(
        **{name: schedule}
    )
    fixed = method.build(2, **{name: value})
    tx = optax.chain(injected, optax.sgd(0.01))

    @jax.jit
    def step(params, state):
        values, grads = cg.task_gradients(losses, params)
        # At the first step the schedule's value is `value`: same update as the fixed version.
        first, _ = injected.update(
            grads, injected.init(params), params, **extra_args(method, values)
        )
        same, _ = fixed.update(grads, fixed.init(params), params, **extra_args(method, values))
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        return optax.apply_updates(params, updates), state, first, same

    state = tx.init(params)
    seen = []
    for i in range(3):
        params, state, first, same = step(params, state)
        if i == 0:
            jax.tree.map(
                lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), first, same
            )
        seen.append(float(state[0].hyperparams[name]))
    np.testing.assert_allclose(seen, [value, value * 7 / 8, value * 6 / 8], rtol=1e-6)


@pytest.mark.parametrize("method", FRAMEWORK_METHODS, ids=IDS)
def test_with_apply_if_finite_and_multi_steps_downstream(method):
    params, losses = two_task_problem()
    downstream = optax.apply_if_finite(
        optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2).gradient_transformation(), 3
    )
    tx = optax.chain(method.build(2), downstream)

    @jax.jit
    def step(params, state, poison):
        values, grads = cg.task_gradients(losses, params)
        grads = jax.tree.map(lambda g: jnp.where(poison, g.at[0].set(jnp.nan), g), grads)
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        return optax.apply_updates(params, updates), state, updates

    def all_zero(tree):
        return all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(tree))

    state = tx.init(params)
    # A non-finite step is rejected (zero update) and counted...
    params, state, updates = step(params, state, True)
    assert all_zero(updates) and int(state[1].notfinite_count) == 1
    # ...without poisoning the method's state: the next steps are finite; MultiSteps first
    # accumulates (zero update), then applies.
    params, state, updates = step(params, state, False)
    assert all_zero(updates) and int(state[1].notfinite_count) == 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state[0]))
    params, state, updates = step(params, state, False)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    assert not all_zero(updates)
    assert step._cache_size() == 1


@pytest.mark.parametrize("method", FRAMEWORK_METHODS, ids=IDS)
def test_flax_nnx_optimizer(method):
    model = NNXTwoHead(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(method.build(2), optax.adam(1e-2)), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (32, 4))
    y_a, y_b = jnp.sin(x.sum(1)), -jnp.sin(x.sum(1)) + x[:, 0]

    @nnx.jit
    def train_step(model, optimizer):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def losses(params):
            a, b = nnx.merge(graphdef, params, rest)(x)
            return jnp.stack([jnp.mean((a - y_a) ** 2), jnp.mean((b - y_b) ** 2)])

        values, grads = cg.task_gradients(losses, params)
        optimizer.update(model, grads, **extra_args(method, values))
        return values

    first = train_step(model, optimizer)
    for _ in range(100):
        last = train_step(model, optimizer)
    assert float(jnp.sum(last)) < 0.7 * float(jnp.sum(first))


@pytest.mark.parametrize("method", FRAMEWORK_METHODS, ids=IDS)
def test_flax_linen_train_state(method):
    module = LinenTwoHead()
    x = jax.random.normal(jax.random.key(2), (32, 4))
    y_a, y_b = jnp.cos(x.sum(1)), -jnp.cos(x.sum(1))
    variables = module.init(jax.random.key(0), x)
    state = train_state.TrainState.create(
        apply_fn=module.apply,
        params=variables["params"],
        tx=optax.chain(method.build(2), optax.adam(1e-2)),
    )

    @jax.jit
    def train_step(state):
        def losses(params):
            a, b = state.apply_fn({"params": params}, x)
            return jnp.stack([jnp.mean((a - y_a) ** 2), jnp.mean((b - y_b) ** 2)])

        values, grads = cg.task_gradients(losses, state.params)
        if not method.needs_values:
            return state.apply_gradients(grads=grads), values
        # TrainState.apply_gradients takes its keyword arguments as fields to replace, so a
        # method that needs the losses is updated through tx.update directly.
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, value=values)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), values

    state, first = train_step(state)
    for _ in range(100):
        state, last = train_step(state)
    assert float(jnp.sum(last)) < 0.7 * float(jnp.sum(first))
