"""The Gram reduction over stacked gradients (`camegrad_jax._tree`): both of its strategies
against a float64 reference, the choice between them, and the sharded fallback."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax import _tree

CHUNK = _tree._GRAM_CHUNK
MIN_SIZE = _tree._CHUNKED_GRAM_MIN_CHUNKS * CHUNK


def reference_gram(flat) -> np.ndarray:
    values = np.asarray(jnp.asarray(flat, jnp.float32), np.float64)
    return values @ values.T


def random_stack(num_tasks: int, size: int, seed: int, dtype=jnp.float32) -> jax.Array:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=size)
    scales = 10.0 ** rng.uniform(-3, 3, size=(num_tasks, 1))
    values = scales * (rng.normal(size=(num_tasks, size)) + rng.normal() * shared)
    return jnp.asarray(values, dtype)


def uses_loop(fn, *args) -> bool:
    jaxpr = str(jax.make_jaxpr(fn)(*args))  # a fori_loop with static bounds traces to a scan
    return "while" in jaxpr or "scan" in jaxpr


@pytest.mark.parametrize("num_tasks", [4, 8])
@pytest.mark.parametrize("size", [MIN_SIZE, MIN_SIZE + 777, 3 * MIN_SIZE + 1])
def test_chunked_gram_matches_float64(num_tasks, size):
    flat = random_stack(num_tasks, size, seed=num_tasks * 7 + size % 97)
    got = np.asarray(jax.jit(lambda x: _tree._chunked_leaf_gram(x, jnp.float32))(flat))
    expected = reference_gram(flat)
    # Relative to the Gram's scale (entries span 12 orders of magnitude across tasks, so each
    # entry is compared against sqrt(G_ii G_jj), the bound of |G_ij|).
    bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(got - expected) <= 1e-5 * bound)
    np.testing.assert_array_equal(got, got.T)


def test_chunked_gram_of_bfloat16_accumulates_in_float32():
    flat = random_stack(4, MIN_SIZE + 5, seed=3, dtype=jnp.bfloat16)
    got = jax.jit(lambda x: _tree.gram_matrix([x], jnp.float32))(flat)
    assert got.dtype == jnp.float32
    expected = reference_gram(flat)
    bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(np.asarray(got) - expected) <= 1e-5 * bound)


@pytest.mark.parametrize(
    ("num_tasks", "size", "chunked"),
    [
        (2, 4 * MIN_SIZE, False),  # two tasks: the fused reduce is faster
        (3, 4 * MIN_SIZE, False),
        (4, MIN_SIZE - 1, False),  # too short to amortise the loop
        (4, MIN_SIZE, True),
        (8, 2 * MIN_SIZE + 3, True),
    ],
)
def test_strategy_choice_and_agreement(num_tasks, size, chunked):
    flat = random_stack(num_tasks, size, seed=size % 101 + num_tasks)

    def gram(x):
        return _tree.gram_matrix([x], jnp.float32)

    # The chunk walk is for CPUs only (see `_tree._leaf_gram`).
    assert uses_loop(gram, flat) == (chunked and jax.default_backend() == "cpu")
    fused = jax.jit(lambda x: _tree._fused_leaf_gram(x, jnp.float32))(flat)
    expected = reference_gram(flat)
    bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(np.asarray(jax.jit(gram)(flat)) - expected) <= 1e-5 * bound)
    assert np.all(np.abs(np.asarray(fused) - expected) <= 1e-5 * bound)


def test_chunked_gram_under_vmap():
    stacks = jnp.stack([random_stack(4, MIN_SIZE + 9, seed=s) for s in range(3)])
    got = jax.jit(jax.vmap(lambda x: _tree.gram_matrix([x], jnp.float32)))(stacks)
    for one, stack in zip(np.asarray(got), stacks, strict=True):
        expected = reference_gram(stack)
        bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        assert np.all(np.abs(one - expected) <= 1e-5 * bound)


def test_zero_and_extreme_scale_leaves_stay_finite():
    flat = jnp.zeros((4, MIN_SIZE), jnp.float32).at[1].set(1e15).at[2].set(1e-15)
    got = np.asarray(jax.jit(lambda x: _tree.gram_matrix([x], jnp.float32))(flat))
    assert np.all(np.isfinite(got))
    assert got[0, 0] == 0.0
    np.testing.assert_allclose(got[2, 2], MIN_SIZE * 1e-30, rtol=1e-5)
