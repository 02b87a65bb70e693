"""The design card's line, `optax.chain(camegrad(c, gamma, alpha), optax.adam(lr))`, as written.

No method needs the number of tasks: the state is sized by the first stacked gradients. Misuse
(a chain in the wrong order, integer or complex gradients, hyper-parameters of the wrong type or
pushed out of range by a schedule) fails loudly or poisons the step, never silently.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from helpers.method_registry import FRAMEWORK_SAMPLE, METHODS, Method, default_or_slow
from helpers.two_task import LinenTwoHead, NNXTwoHead, extra_args, two_task_problem

import camegrad_jax as cg

# The settings that each compile a step of their own run on one method of each kind: the card's
# (Gram-based, warm-started dual) and one that reads the losses and keeps their history; a
# Gram-based method that also reads the losses under -m slow. (CAGrad shares CAME-Grad's dual and
# state; every row runs in the interop suite.)
SAMPLE_ROWS = [m for m in METHODS if m.name in ("camegrad", "mgda_loss_plus", "famo")]
SAMPLE = default_or_slow(SAMPLE_ROWS, lambda m: m.name != "mgda_loss_plus")
INJECTABLE_SAMPLE = default_or_slow(
    [m for m in SAMPLE_ROWS if m.injectable], lambda m: m.name != "mgda_loss_plus"
)


def without_task_count(method: Method, **hyper):
    return method.factory(**method.fixed, **hyper)


def test_the_card_line_as_written():
    params, losses = two_task_problem()
    tx = optax.chain(cg.camegrad(0.5, 1.5, 0.2), optax.adam(1e-2))
    state = tx.init(params)
    first = losses(params)
    for _ in range(20):
        _, grads = cg.task_gradients(losses, params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.sum(losses(params))) < 0.9 * float(jnp.sum(first))
    assert state[0].coefficients.shape == (2,)
    assert state[0].method_state.dual_weights.shape == (2,)


# Eager, so each row costs seconds of op-by-op dispatch: one row of each kind of state by default
# (the interop suite's sample), every row under -m slow.
@pytest.mark.parametrize(
    "method",
    default_or_slow(METHODS, lambda m: m.name in FRAMEWORK_SAMPLE),
    ids=lambda m: m.name,
)
def test_every_method_sizes_its_state_from_the_first_update(method):
    params, losses = two_task_problem()
    tx = optax.chain(without_task_count(method), optax.adam(1e-2))
    state = tx.init(params)
    for _ in range(2):
        values, grads = cg.task_gradients(losses, params)
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        params = optax.apply_updates(params, updates)
    if hasattr(state[0], "coefficients"):  # Stateless linear scalarization keeps no state.
        assert state[0].coefficients.shape == (2,)
    assert all(
        bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state) if x.dtype.kind == "f"
    )


@pytest.mark.parametrize("method", SAMPLE, ids=lambda m: m.name)
def test_jitted_loop_without_task_count_compiles_at_most_twice(method):
    params, losses = two_task_problem()
    tx = optax.chain(without_task_count(method), optax.adam(1e-2))
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(None)
        values, grads = cg.task_gradients(losses, params)
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        return optax.apply_updates(params, updates), state, values

    state = tx.init(params)
    params, state, first = step(params, state)
    for _ in range(40):
        params, state, last = step(params, state)
    assert len(traces) == 2
    assert float(jnp.sum(last)) < float(jnp.sum(first))
    assert state[0].coefficients.shape == (2,)


@pytest.mark.parametrize("method", SAMPLE, ids=lambda m: m.name)
def test_nnx_optimizer_without_task_count_eager_and_jitted(method):
    x = jax.random.normal(jax.random.key(1), (32, 4))
    y_a, y_b = jnp.sin(x.sum(1)), -jnp.sin(x.sum(1)) + x[:, 0]

    def step(model, optimizer):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def losses(params):
            a, b = nnx.merge(graphdef, params, rest)(x)
            return jnp.stack([jnp.mean((a - y_a) ** 2), jnp.mean((b - y_b) ** 2)])

        values, grads = cg.task_gradients(losses, params)
        optimizer.update(model, grads, **extra_args(method, values))
        return values

    for jitted in (False, True):
        model = NNXTwoHead(nnx.Rngs(0))
        tx = optax.chain(without_task_count(method), optax.adam(1e-2))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        run = nnx.jit(step) if jitted else step
        first = run(model, optimizer)
        for _ in range(15 if jitted else 2):
            last = run(model, optimizer)
        assert float(jnp.sum(last)) < float(jnp.sum(first))


@pytest.mark.parametrize("method", SAMPLE, ids=lambda m: m.name)
def test_linen_train_state_without_task_count(method):
    module = LinenTwoHead()
    x = jax.random.normal(jax.random.key(2), (32, 4))
    y_a, y_b = jnp.cos(x.sum(1)), -jnp.cos(x.sum(1))
    tx = optax.chain(without_task_count(method), optax.adam(1e-2))
    state = train_state.TrainState.create(
        apply_fn=module.apply, params=module.init(jax.random.key(0), x)["params"], tx=tx
    )

    @jax.jit
    def step(state):
        def losses(params):
            a, b = state.apply_fn({"params": params}, x)
            return jnp.stack([jnp.mean((a - y_a) ** 2), jnp.mean((b - y_b) ** 2)])

        values, grads = cg.task_gradients(losses, state.params)
        updates, opt_state = state.tx.update(
            grads, state.opt_state, state.params, **extra_args(method, values)
        )
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), values

    state, first = step(state)
    for _ in range(30):
        state, last = step(state)
    assert float(jnp.sum(last)) < float(jnp.sum(first))


@pytest.mark.parametrize("method", INJECTABLE_SAMPLE, ids=lambda m: m.name)
def test_inject_hyperparams_without_static_args(method):
    name, value = method.injectable
    params, losses = two_task_problem()
    injected = optax.inject_hyperparams(method.factory)(**method.fixed, **{name: value})
    tx = optax.chain(injected, optax.sgd(0.01))
    state = jax.jit(tx.init)(params)  # A jitted init, which used to need static_args.

    @jax.jit
    def step(params, state):
        values, grads = cg.task_gradients(losses, params)
        updates, state = tx.update(grads, state, params, **extra_args(method, values))
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    assert float(state[0].hyperparams[name]) == pytest.approx(value)
    assert bool(jnp.all(jnp.isfinite(jax.tree.leaves(params)[0])))


def test_scan_without_task_count_fails_at_once_and_works_with_it():
    params, losses = two_task_problem()

    def run(tx):
        def body(carry, _):
            params, state = carry
            _, grads = cg.task_gradients(losses, params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(body, (params, tx.init(params)), None, length=5)[0]

    with pytest.raises(TypeError, match="carry"):
        run(optax.chain(cg.camegrad(0.5, 1.5, 0.2), optax.adam(1e-2)))
    final, state = run(optax.chain(cg.camegrad(0.5, 1.5, 0.2, num_tasks=2), optax.adam(1e-2)))
    assert state[0].coefficients.shape == (2,)
    assert float(jnp.sum(losses(final))) < float(jnp.sum(losses(params)))


@pytest.mark.parametrize("method", SAMPLE, ids=lambda m: m.name)
@pytest.mark.parametrize("jitted", [False, True])
def test_a_chain_in_the_wrong_order_fails_at_the_first_update(method, jitted):
    params, losses = two_task_problem()
    for tx in (
        optax.chain(optax.adam(1e-2), without_task_count(method)),
        optax.named_chain(("adam", optax.adam(1e-2)), ("mtl", without_task_count(method))),
        optax.chain(optax.adam(1e-2), optax.chain(without_task_count(method), optax.sgd(1.0))),
    ):
        state = tx.init(params)

        def step(params, state, tx=tx):
            values, grads = cg.task_gradients(losses, params)
            return tx.update(grads, state, params, **extra_args(method, values))

        with pytest.raises(ValueError, match="must come first in the optax chain"):
            (jax.jit(step) if jitted else step)(params, state)


def test_first_in_a_nested_chain_is_accepted():
    params, losses = two_task_problem()
    tx = optax.chain(optax.chain(cg.camegrad(), optax.adam(1e-2)), optax.identity())
    _, grads = cg.task_gradients(losses, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


@pytest.mark.parametrize("method", SAMPLE, ids=lambda m: m.name)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_integer_and_complex_gradients_are_refused_by_dtype(method, dtype):
    grads = {"w": jnp.asarray([[1, 2, 3], [0, 1, 2]], dtype)}
    tx = without_task_count(method)
    with pytest.raises(TypeError, match=rf"leaf \['w'\] has dtype {jnp.dtype(dtype).name}"):
        tx.update(grads, tx.init(None), **extra_args(method, jnp.ones(2)))


@pytest.mark.parametrize(
    "factory, argument",
    [
        (cg.camegrad, "c"),
        (cg.camegrad, "gamma"),
        (cg.camegrad, "alpha"),
        (cg.cagrad, "c"),
        (cg.nash_mtl, "max_norm"),
        (cg.famo, "learning_rate"),
        (lambda **kw: cg.dwa(epoch_length=1, **kw), "temperature"),
        (cg.mgda, "solver_maxiter"),
    ],
)
@pytest.mark.parametrize("bad", ["0.5", True, 1 + 2j, [0.5], None])
def test_hyperparameters_of_the_wrong_type_are_refused_by_name(factory, argument, bad):
    with pytest.raises(
        TypeError, match=rf"Parameter `{argument}` should be .* Found `{argument} ="
    ):
        factory(**{argument: bad})


def test_task_gradients_stacks_a_tuple_of_scalar_losses():
    params, losses = two_task_problem()
    expected_values, expected = cg.task_gradients(losses, params)
    as_tuple = lambda p: tuple(losses(p))  # noqa: E731
    as_list = lambda p: list(losses(p))  # noqa: E731
    for fn in (as_tuple, as_list):
        values, grads = cg.task_gradients(fn, params)
        np.testing.assert_allclose(values, expected_values, rtol=1e-6)
        for leaf, reference in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(leaf, reference, rtol=1e-6)
    (values, aux), _ = cg.task_gradients(lambda p: (as_tuple(p), "aux"), params, has_aux=True)
    assert aux == "aux" and values.shape == (2,)
    with pytest.raises(ValueError, match="scalar losses"):
        cg.task_gradients(lambda p: (p["w"], p["b"]), params)


@pytest.mark.parametrize(
    "factory, name, good, bad",
    [
        (cg.camegrad, "c", 0.5, -0.1),
        (cg.camegrad, "alpha", 0.2, 1.5),
        (cg.nash_mtl, "max_norm", 1.0, -1.0),
    ],
)
def test_a_schedule_out_of_range_poisons_the_step_and_keeps_the_state(factory, name, good, bad):
    params, losses = two_task_problem()
    schedule = lambda count: jnp.where(count < 2, good, bad)  # noqa: E731
    inner = optax.adam(1e-2)
    tx = optax.chain(
        optax.inject_hyperparams(factory)(**{name: schedule}), optax.apply_if_finite(inner, 5)
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(4):
        _, grads = cg.task_gradients(losses, params)
        if step == 2:
            # Run eagerly, the factory sees the concrete value and refuses it by name.
            with pytest.raises(ValueError, match=f"Parameter `{name}`"):
                tx.update(grads, state, params)
        updates, new_state = update(grads, state, params)
        finite = all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
        if step < 2:
            assert finite
        else:
            # apply_if_finite turns the poisoned update into zeros and counts it.
            assert all(not bool(jnp.any(u)) for u in jax.tree.leaves(updates))
            assert int(new_state[1].notfinite_count) == step - 1
            old_method, new_method = state[0].inner_state.method_state, new_state[0].inner_state
            for old, new in zip(
                jax.tree.leaves(old_method), jax.tree.leaves(new_method.method_state), strict=True
            ):
                np.testing.assert_array_equal(old, new)
            assert bool(jnp.all(jnp.isnan(new_method.coefficients)))
        params = optax.apply_updates(params, updates)
        state = new_state
