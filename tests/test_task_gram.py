"""The exact task Gram in O(|params|) memory, and the low-memory update of Gram-based methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import camegrad_jax as cg


def make_problem(num_tasks, width=24, batch=16, seed=0, dtype=jnp.float32, spread=3.0):
    """A trunk shared by K heads, the tasks' losses scaled over 10^-spread..10^spread."""
    keys = jax.random.split(jax.random.key(seed), 4)
    params = {
        "trunk": (jax.random.normal(keys[0], (width, width)) / np.sqrt(width)).astype(dtype),
        "bias": jnp.zeros((width,), dtype),
        "heads": jax.random.normal(keys[1], (num_tasks, width)).astype(dtype),
    }
    x = jax.random.normal(keys[2], (batch, width)).astype(dtype)
    targets = jax.random.normal(keys[3], (batch, num_tasks)).astype(dtype)
    scales = jnp.asarray(np.logspace(-spread, spread, num_tasks), dtype)

    def losses(p, x):
        z = jnp.tanh(x @ p["trunk"] + p["bias"])
        return scales * jnp.mean((z @ p["heads"].T - targets) ** 2, axis=0)

    return params, x, losses


def stacked_gram(losses, params, x):
    """G from the stacked gradients, in float64 numpy (the reference)."""
    _, grads = cg.task_gradients(losses, params, x)
    rows = np.concatenate(
        [
            np.asarray(leaf, np.float64).reshape(leaf.shape[0], -1)
            for leaf in jax.tree.leaves(grads)
        ],
        axis=1,
    )
    return rows @ rows.T


@pytest.mark.parametrize("num_tasks", [2, 3, 8])
def test_task_gram_equals_stacked_gram_float32(num_tasks):
    params, x, losses = make_problem(num_tasks, seed=num_tasks)
    values, gram = jax.jit(lambda p: cg.task_gram(losses, p, x))(params)
    expected = stacked_gram(losses, params, x)
    np.testing.assert_allclose(values, losses(params, x), rtol=1e-6)
    assert gram.shape == (num_tasks, num_tasks) and gram.dtype == jnp.float32
    # Entry-wise round-off relative to each pair's scale sqrt(G_ii G_jj) (scales span 1e-6..1e6).
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.max(np.abs(np.asarray(gram, np.float64) - expected) / scale) < 1e-5
    np.testing.assert_array_equal(gram, gram.T)


def test_task_gram_equals_stacked_gram_float64():
    with jax.enable_x64(True):
        params, x, losses = make_problem(5, dtype=jnp.float64)
        values, gram, aux = cg.task_gram(
            lambda p, x: (losses(p, x), jnp.sum(x)), params, x, has_aux=True
        )
        assert gram.dtype == jnp.float64
        expected = stacked_gram(losses, params, x)
        scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        assert np.max(np.abs(np.asarray(gram) - expected) / scale) < 1e-13
        np.testing.assert_allclose(aux, np.sum(np.asarray(x)), rtol=1e-12)


def test_task_gram_rejects_a_scalar_loss():
    with pytest.raises(ValueError, match=r"vector of K task losses.*shape \(\)"):
        cg.task_gram(lambda p: jnp.sum(p**2), jnp.ones(3))


def low_memory_step(tx, losses, params, x, **kwargs):
    return jax.jit(
        lambda p: cg.gram_only_gradients(
            losses, p, x, transform=tx, state=tx.init(p), low_memory=True, **kwargs
        )
    )(params)


def stacked_step(tx, losses, params, x):
    values, grads = cg.task_gradients(losses, params, x)
    update, state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p, value=values))(grads, params)
    return values, update, state


METHODS = {
    "camegrad": lambda k: cg.camegrad(0.5, 1.5, 0.2, num_tasks=k),
    "camegrad_weighted": lambda k: cg.camegrad(0.8, 1.2, 0.4, task_weights=list(range(1, k + 1))),
    "mgda": lambda k: cg.mgda(num_tasks=k),
    "upgrad": lambda k: cg.upgrad(num_tasks=k),
    "imtl_g": lambda k: cg.imtl_g(num_tasks=k),
    "nash_mtl": lambda k: cg.nash_mtl(num_tasks=k),
}


def assert_trees_close(actual, expected, rtol, atol_fraction):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol_fraction * np.max(np.abs(e)) + 1e-30)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("num_tasks", [3])
def test_low_memory_update_equals_stacked_update(method, num_tasks):
    # Scales within a factor 10: G is then well conditioned, and float32 round-off of G (which
    # differs between the routes) moves the coefficients by round-off only.
    params, x, losses = make_problem(num_tasks, seed=10 + num_tasks, spread=0.5)
    tx = METHODS[method](num_tasks)
    values, update, state = low_memory_step(tx, losses, params, x)
    expected_values, expected_update, expected_state = stacked_step(tx, losses, params, x)
    np.testing.assert_allclose(values, expected_values, rtol=1e-6)
    assert_trees_close(update, expected_update, rtol=1e-3, atol_fraction=1e-4)
    np.testing.assert_allclose(
        state.coefficients, expected_state.coefficients, rtol=1e-3, atol=1e-5
    )
    # The diagnostics are read off G and β, so they are the stacked path's too.
    assert_trees_close(state.stats, expected_state.stats, rtol=1e-3, atol_fraction=1e-4)


def test_low_memory_camegrad_float64_with_masks_equals_stacked():
    with jax.enable_x64(True):
        params, x, losses = make_problem(3, dtype=jnp.float64, spread=0.5)
        shared = {"trunk": True, "bias": True, "heads": False}
        tx = cg.camegrad(0.5, 1.5, 0.2, task_weights=[1.0, 2.0, 0.5], shared_mask=shared)
        expected_values, expected_update, expected_state = stacked_step(tx, losses, params, x)
        # The transformation sees only G; the shared mask is applied by the caller.
        bare = cg.camegrad(0.5, 1.5, 0.2, task_weights=[1.0, 2.0, 0.5])
        values, update, state = low_memory_step(
            bare,
            losses,
            params,
            x,
            gram_mask=shared,
            shared_mask=shared,
            task_weights=[1.0, 2.0, 0.5],
        )
        # β reaches the weighted backward pass through the state, which stores it in float32
        # (as in every Gram-only mode): the update is exact to float32 round-off of β.
        assert_trees_close(update, expected_update, rtol=1e-6, atol_fraction=1e-7)
        np.testing.assert_allclose(state.coefficients, expected_state.coefficients, rtol=1e-6)
        assert_trees_close(state.stats, expected_state.stats, rtol=1e-6, atol_fraction=1e-7)


def test_low_memory_trains_like_the_stacked_route():
    params, x, losses = make_problem(3, seed=3)
    tx = cg.camegrad(num_tasks=3)
    adam = optax.adam(1e-2)

    @jax.jit
    def low(p, s, o):
        _, g, s = cg.gram_only_gradients(losses, p, x, transform=tx, state=s, low_memory=True)
        u, o = adam.update(g, o, p)
        return optax.apply_updates(p, u), s, o

    @jax.jit
    def stacked(p, s, o):
        _, grads = cg.task_gradients(losses, p, x)
        g, s = tx.update(grads, s, p)
        u, o = adam.update(g, o, p)
        return optax.apply_updates(p, u), s, o

    a = (params, tx.init(params), adam.init(params))
    b = a
    for _ in range(5):
        a, b = low(*a), stacked(*b)
    assert_trees_close(a[0], b[0], rtol=1e-4, atol_fraction=1e-5)
    assert float(jnp.sum(losses(a[0], x))) < float(jnp.sum(losses(params, x)))


def test_gram_factor_reproduces_mixed_scale_and_singular_grams():
    rng = np.random.default_rng(0)
    for rank in (5, 2):
        rows = rng.normal(size=(5, rank)) @ rng.normal(size=(rank, 30))
        rows *= np.logspace(-4, 4, 5)[:, None]
        rows[2] = 0.0  # a task with no gradient
        gram = rows @ rows.T
        factor = np.asarray(cg._gram_only.gram_factor(jnp.asarray(gram, jnp.float32)), np.float64)
        scale = np.sqrt(np.outer(np.diag(gram), np.diag(gram))) + 1e-300
        assert np.max(np.abs(factor @ factor.T - gram) / scale) < 1e-5


def test_low_memory_rejects_a_representation():
    params, x, losses = make_problem(2)
    tx = cg.camegrad(num_tasks=2)
    with pytest.raises(ValueError, match="low_memory"):
        cg.gram_only_gradients(
            None,
            params,
            x,
            transform=tx,
            state=tx.init(params),
            low_memory=True,
            representation=(lambda p, x: x, lambda p, z, x: losses(p, x)),
        )


def wide_model(num_tasks, width=1024):
    """≥ 1M shared parameters and K small heads."""
    params = {
        "w": jnp.zeros((width, width), jnp.float32),
        "heads": jnp.zeros((num_tasks, width), jnp.float32),
    }
    x = jnp.zeros((16, width), jnp.float32)

    def losses(p, x):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["heads"].T - 1.0) ** 2, axis=0)

    return params, x, losses


def peak_bytes(fn, *args):
    """Temporaries plus outputs of the compiled program (XLA's memory analysis)."""
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def test_peak_memory_does_not_grow_with_the_number_of_tasks():
    peaks = {}
    for k in (2, 8):
        params, x, losses = wide_model(k)
        tx = cg.camegrad(num_tasks=k)
        state = tx.init(params)
        peaks["gram", k] = peak_bytes(lambda p, x, fn=losses: cg.task_gram(fn, p, x), params, x)
        peaks["low", k] = peak_bytes(
            lambda p, s, x, fn=losses, t=tx: cg.gram_only_gradients(
                fn, p, x, transform=t, state=s, low_memory=True
            ),
            params,
            state,
            x,
        )
        peaks["stacked", k] = peak_bytes(
            lambda p, s, x, fn=losses, t=tx: t.update(cg.task_gradients(fn, p, x)[1], s, p),
            params,
            state,
            x,
        )
    shared_bytes = 1024 * 1024 * 4
    head_bytes = 6 * 1024 * 4  # the per-task parameters added from K = 2 to K = 8
    for route in ("gram", "low"):
        # Flat in K: what grows is the heads' own size (their gradient, output and temporaries),
        # never a multiple of the shared parameters.
        assert peaks[route, 8] - peaks[route, 2] <= 4 * head_bytes, peaks
        assert peaks[route, 8] < 2.5 * shared_bytes, peaks
    # The stacked route holds the K × P stack: its peak does grow (a control for the analysis).
    assert peaks["stacked", 8] - peaks["stacked", 2] > 4 * shared_bytes, peaks
