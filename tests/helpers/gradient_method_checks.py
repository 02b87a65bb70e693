"""What the tests of the gradient-based methods share: a compiled update, batched with `vmap` so
that a whole family of inputs costs one compilation, and the property checks every method
passes (finite output, zero and rank-deficient inputs, scales 1e-10..1e10, task order,
non-conflict where promised, bfloat16)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from helpers import references

SCALES = (1e-10, 1e-5, 1e5, 1e10)
# Batches are padded to a multiple of this size, so that every call with the same number of
# tasks, dimension, dtype and static configuration reuses one compilation.
BUCKET = 32


@functools.cache
def _compiled_update(factory, static_items, with_values):
    static = dict(static_items)

    def one(grads, hyper, task_weights, values, state):
        tx = factory(**hyper, task_weights=task_weights, **static)
        params = jnp.zeros(grads.shape[1:], grads.dtype)
        extra = {"value": values} if with_values else {}
        return tx.update(grads, state, params, **extra)

    return jax.jit(jax.vmap(one))


def initial_state(factory, grads, hyper=None, **static):
    """`init` of one transformation (hyper-parameters of the first example), repeated B times."""
    batch, num_tasks = grads.shape[:2]
    first = {name: np.asarray(value).reshape(-1)[0].item() for name, value in (hyper or {}).items()}
    tx = factory(**first, num_tasks=num_tasks, **static)
    state = tx.init(jnp.zeros(grads.shape[2:]))
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch, *jnp.shape(x))), state)


def run(
    factory,
    grads,
    *,
    dtype=jnp.float32,
    hyper: dict[str, Any] | None = None,
    task_weights=None,
    values=None,
    state=None,
    **static,
):
    """One update of `factory(**hyper, **static)` on each of B stacked problems.

    Args:
      grads: (B, K, D) task gradients (cast to `dtype`).
      hyper: numeric hyper-parameters, scalars or (B,) arrays; traced, so sweeping them does not
        recompile.
      task_weights: (K,) or (B, K), default ones.
      values: (K,) or (B, K) losses passed as `value`, or None.
      state: batched state (default: `initial_state`).

    Returns:
      (updates as float64 numpy (B, D), batched new state).
    """
    grads = np.asarray(grads)
    batch, num_tasks = grads.shape[:2]
    float_dtype = jnp.promote_types(dtype, jnp.float32)
    hyper = hyper or {}
    if state is None:
        state = initial_state(factory, grads, hyper, **static)
    padded = -(-batch // BUCKET) * BUCKET

    def pad(x):  # repeat the first example
        x = np.asarray(x)
        return np.concatenate([x, np.repeat(x[:1], padded - batch, axis=0)])

    def batched(x, shape, dtype):
        return jnp.asarray(pad(np.broadcast_to(np.asarray(x), (batch, *shape))), dtype)

    hyper_arrays = {
        name: batched(
            v, (), jnp.int32 if np.issubdtype(np.asarray(v).dtype, np.integer) else float_dtype
        )
        for name, v in hyper.items()
    }
    weights = batched(1.0 if task_weights is None else task_weights, (num_tasks,), float_dtype)
    losses = batched(1.0 if values is None else values, (num_tasks,), float_dtype)
    state = jax.tree.map(lambda x: jnp.asarray(pad(x)), state)
    update = _compiled_update(factory, tuple(sorted(static.items())), values is not None)
    updates, new_state = update(
        jnp.asarray(pad(grads), dtype), hyper_arrays, weights, losses, state
    )
    assert updates.dtype == dtype
    new_state = jax.tree.map(lambda x: x[:batch], new_state)
    return np.asarray(updates[:batch].astype(jnp.float32), np.float64), new_state


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)


def batch_of(rng, batch, num_tasks, dim):
    return np.stack([references.conflicting_gradients(rng, num_tasks, dim) for _ in range(batch)])


class PropertyBatch(NamedTuple):
    names: list[str]
    grads: np.ndarray  # (B, K, D)
    permutation: np.ndarray  # the task order of the "permuted" example

    def index(self, name: str) -> int:
        return self.names.index(name)


def property_batch(rng, num_tasks: int, dim: int) -> PropertyBatch:
    """One random conflicting problem and its variants: scaled, tasks permuted, a duplicated
    task (rank-deficient Gram matrix), one zero task, all zero."""
    base = references.conflicting_gradients(rng, num_tasks, dim)
    permutation = np.roll(np.arange(num_tasks), 1)
    duplicate = base.copy()
    duplicate[-1] = duplicate[0]
    one_zero = base.copy()
    one_zero[-1] = 0.0
    cases = {"base": base}
    cases.update({f"scale {s:g}": base * s for s in SCALES})
    cases.update(
        permuted=base[permutation],
        duplicate=duplicate,
        one_zero=one_zero,
        zero=np.zeros_like(base),
    )
    return PropertyBatch(list(cases), np.stack(list(cases.values())), permutation)


def check_properties(
    updates,
    batch: PropertyBatch,
    *,
    degree: int = 1,
    permutation_invariant: bool = True,
    non_conflicting: bool = False,
    rtol: float = 1e-4,
):
    """The properties every method is held to on a `property_batch`.

    degree: the update scales as s**degree when all gradients are scaled by s (1: equivariant,
    0: invariant).
    """
    assert np.all(np.isfinite(updates)), "non-finite update"
    base = updates[batch.index("base")]
    for scale in SCALES:
        scaled = updates[batch.index(f"scale {scale:g}")] / scale**degree
        assert rel_err(scaled, base) <= rtol, f"scale {scale:g}: {rel_err(scaled, base)}"
    if permutation_invariant:
        permuted = updates[batch.index("permuted")]
        assert rel_err(permuted, base) <= rtol, f"permutation: {rel_err(permuted, base)}"
    np.testing.assert_array_equal(updates[batch.index("zero")], 0.0)
    if non_conflicting:
        for name in ("base", "duplicate", "one_zero", "permuted"):
            grads, update = batch.grads[batch.index(name)], updates[batch.index(name)]
            scale = np.linalg.norm(grads, axis=1) * np.linalg.norm(update)
            assert np.all(grads @ update >= -1e-5 * scale), f"{name}: {grads @ update}"


def check_bfloat16(factory, grads, *, hyper=None, **static):
    """bfloat16 gradients give a bfloat16 update that only the final rounding separates from the
    float32 update of the same (rounded) gradients."""
    rounded = np.asarray(jnp.asarray(grads, jnp.bfloat16).astype(jnp.float32), np.float64)
    low, state = run(factory, rounded, dtype=jnp.bfloat16, hyper=hyper, **static)
    high, _ = run(factory, rounded, hyper=hyper, **static)
    floating = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(x.dtype == jnp.float32 for x in floating)
    assert np.all(np.isfinite(low))
    scale = np.max(np.abs(high), axis=1, keepdims=True)
    np.testing.assert_array_less(np.abs(low - high), 2.0**-8 * np.abs(high) + 1e-5 * scale + 1e-30)
