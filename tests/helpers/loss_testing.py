"""Shared by the tests of the loss-based methods: run a transformation over several steps in one
compiled `lax.scan`, with float hyper-parameters traced, so that a test file compiles a handful
of functions whatever it sweeps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@functools.cache
def _compiled(factory: Callable, static_items: tuple, with_values: bool):
    static = dict(static_items)

    @jax.jit
    def run(grads, values, hyper):
        tx = factory(**static, **hyper)
        params = jnp.zeros(grads.shape[2:], grads.dtype)

        def body(state, step):
            extra = {"value": step[1]} if with_values else {}
            updates, state = tx.update(step[0], state, params, **extra)
            return state, (updates, state)

        final, (updates, states) = jax.lax.scan(body, tx.init(params), (grads, values))
        return updates, states, final

    return run


def run_steps(
    factory: Callable,
    grads: Any,
    values: Any = None,
    *,
    dtype: Any = jnp.float32,
    static: dict | None = None,
    **hyper: Any,
):
    """Runs `factory(**static, **hyper)` for T steps; grads (T, K, D), values (T, K) or None.

    `hyper` (numbers or arrays, e.g. learning rates and task weights) are traced; `static` (ints
    that size things, strings, bools, masks) are part of the compilation key.
    Returns (updates (T, D), stacked per-step states, final state).
    """
    grads = jnp.asarray(grads, dtype)
    # K sizes the state; task weights are always traced (ones by default): one compilation.
    static = {"num_tasks": grads.shape[1], **(static or {})}
    hyper.setdefault("task_weights", np.ones(grads.shape[1]))
    # Numeric hyper-parameters left at their defaults are traced too: same keys, one compilation.
    for name, parameter in inspect.signature(factory).parameters.items():
        default = parameter.default
        if (
            name not in static
            and isinstance(default, (int, float))
            and not isinstance(default, bool)
        ):
            hyper.setdefault(name, default)
    with_values = values is not None
    values = jnp.asarray(values if with_values else np.zeros(grads.shape[:2]), dtype)
    float_dtype = jnp.promote_types(dtype, jnp.float32)
    traced = {
        name: jnp.asarray(
            v, float_dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else None
        )
        for name, v in hyper.items()
    }
    static_items = tuple(sorted(static.items()))
    return _compiled(factory, static_items, with_values)(grads, values, traced)


def random_problem(rng: np.random.Generator, steps: int, num_tasks: int, dim: int):
    """T steps of conflicting task gradients with spread-out norms, and positive losses."""
    shared = rng.normal(size=(steps, 1, dim))
    grads = rng.normal(size=(steps, num_tasks, dim)) + rng.uniform(-0.5, 1.0) * shared
    grads *= np.exp(rng.uniform(-1.0, 1.0, size=(1, num_tasks, 1)))
    values = np.exp(rng.normal(size=(steps, num_tasks)) * 0.5) * rng.uniform(0.5, 5, num_tasks)
    return grads, values


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)
