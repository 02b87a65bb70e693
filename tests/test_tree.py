"""The Gram reduction over stacked gradients (`camegrad_jax._tree`): each of its XLA strategies
against a float64 reference, and the choice between them. The compiled CPU kernel, which takes
float32 leaves on a CPU when it is available, is tested in test_native_gram.py; here it is off,
as where no compiler is found."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg
from camegrad_jax import _native_gram, _tree

CHUNK = _tree._GRAM_CHUNK
MIN_SIZE = _tree._CHUNKED_GRAM_MIN_CHUNKS * CHUNK
TWO_ROW_MIN = _tree._TWO_ROW_MIN_SIZE
ON_CPU = jax.default_backend() == "cpu"


@pytest.fixture(autouse=True)
def _xla_reductions_only(monkeypatch):
    monkeypatch.setattr(_native_gram, "available", lambda: False)


def reference_gram(flat) -> np.ndarray:
    values = np.asarray(jnp.asarray(flat, jnp.float32), np.float64)
    return values @ values.T


def random_stack(num_tasks: int, size: int, seed: int, dtype=jnp.float32) -> jax.Array:
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=size)
    scales = 10.0 ** rng.uniform(-3, 3, size=(num_tasks, 1))
    values = scales * (rng.normal(size=(num_tasks, size)) + rng.normal() * shared)
    return jnp.asarray(values, dtype)


def strategy(fn, *args) -> str:
    jaxpr = str(jax.make_jaxpr(fn)(*args))
    if "ffi_call" in jaxpr:
        return "native"
    if "while" in jaxpr or "scan" in jaxpr:  # a fori_loop with static bounds traces to a scan
        return "chunked"
    return "two_row" if "reduce_prod" in jaxpr else "fused"


def assert_close_to_reference(got, flat, rtol=1e-5):
    """Entry (i, j) within rtol of sqrt(G_ii G_jj), the bound of |G_ij|: entries span many orders
    of magnitude across tasks, so a plain relative test would be meaningless for small ones."""
    expected = reference_gram(flat)
    bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(np.asarray(got, np.float64) - expected) <= rtol * bound)


@pytest.mark.parametrize("num_tasks", [4, 8])
@pytest.mark.parametrize("size", [MIN_SIZE, MIN_SIZE + 777, 3 * MIN_SIZE + 1])
def test_chunked_gram_matches_float64(num_tasks, size):
    flat = random_stack(num_tasks, size, seed=num_tasks * 7 + size % 97)
    got = np.asarray(jax.jit(lambda x: _tree._chunked_leaf_gram(x, jnp.float32))(flat))
    assert_close_to_reference(got, flat)
    np.testing.assert_array_equal(got, got.T)


@pytest.mark.parametrize("size", [TWO_ROW_MIN, TWO_ROW_MIN + 777])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_row_gram_matches_float64(size, seed):
    flat = random_stack(2, size, seed=seed * 31 + size % 89)
    got = np.asarray(jax.jit(lambda x: _tree._two_row_leaf_gram(x, jnp.float32))(flat))
    assert_close_to_reference(got, flat)
    np.testing.assert_array_equal(got, got.T)


def test_two_row_gram_in_float64_matches_to_float64_round_off():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        values = rng.normal(size=(2, TWO_ROW_MIN + 3)) * np.array([[1e-4], [1e4]])
        got = jax.jit(lambda x: _tree.gram_matrix([x], jnp.float64))(jnp.asarray(values))
        assert got.dtype == jnp.float64
        expected = values @ values.T
        bound = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        assert np.all(np.abs(np.asarray(got) - expected) <= 1e-12 * bound)


@pytest.mark.parametrize(
    ("second_row", "expected"),
    [
        (lambda first: -first, lambda n: np.array([[n, -n], [-n, n]])),  # exactly opposite
        (lambda first: 0 * first, lambda n: np.array([[n, 0], [0, 0]])),  # one task at rest
        (lambda first: 1e-15 * first, lambda n: np.array([[n, 1e-15 * n], [1e-15 * n, 1e-30 * n]])),
    ],
)
def test_two_row_gram_of_degenerate_pairs(second_row, expected):
    first = jnp.ones((TWO_ROW_MIN,), jnp.float32)
    flat = jnp.stack([first, second_row(first)])
    got = np.asarray(jax.jit(lambda x: _tree._two_row_leaf_gram(x, jnp.float32))(flat))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected(float(TWO_ROW_MIN)), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("num_tasks", "size"), [(4, MIN_SIZE + 5), (2, TWO_ROW_MIN + 5)])
def test_gram_of_bfloat16_accumulates_in_float32(num_tasks, size):
    flat = random_stack(num_tasks, size, seed=3, dtype=jnp.bfloat16)
    got = jax.jit(lambda x: _tree.gram_matrix([x], jnp.float32))(flat)
    assert got.dtype == jnp.float32
    assert_close_to_reference(got, flat)


@pytest.mark.parametrize(
    ("num_tasks", "size", "cpu_strategy"),
    [
        (2, TWO_ROW_MIN - 1, "fused"),  # two tasks, small leaf: one kernel is cheaper
        (2, TWO_ROW_MIN, "two_row"),
        (2, TWO_ROW_MIN + 3, "two_row"),  # no block size divides it: no copy needed either
        (3, 4 * MIN_SIZE, "fused"),
        (4, MIN_SIZE - 1, "fused"),  # too short to amortise the loop
        (4, MIN_SIZE, "chunked"),
        (8, 2 * MIN_SIZE + 3, "chunked"),
    ],
)
def test_strategy_choice_and_agreement(num_tasks, size, cpu_strategy):
    flat = random_stack(num_tasks, size, seed=size % 101 + num_tasks)

    def gram(x):
        return _tree.gram_matrix([x], jnp.float32)

    # The strategies other than the fused reduction are for CPUs only (see `_tree._leaf_gram`).
    assert strategy(gram, flat) == (cpu_strategy if ON_CPU else "fused")
    assert_close_to_reference(jax.jit(gram)(flat), flat)
    assert_close_to_reference(jax.jit(lambda x: _tree._fused_leaf_gram(x, jnp.float32))(flat), flat)


@pytest.mark.parametrize(("num_tasks", "size"), [(4, MIN_SIZE + 9), (2, TWO_ROW_MIN + 9)])
def test_gram_under_vmap(num_tasks, size):
    stacks = jnp.stack([random_stack(num_tasks, size, seed=s) for s in range(3)])
    got = jax.jit(jax.vmap(lambda x: _tree.gram_matrix([x], jnp.float32)))(stacks)
    for one, stack in zip(np.asarray(got), stacks, strict=True):
        assert_close_to_reference(one, stack)


@pytest.mark.parametrize(("num_tasks", "size"), [(4, MIN_SIZE), (2, TWO_ROW_MIN)])
def test_zero_and_extreme_scale_leaves_stay_finite(num_tasks, size):
    flat = jnp.zeros((num_tasks, size), jnp.float32).at[-1].set(1e15).at[-2].set(1e-15)
    got = np.asarray(jax.jit(lambda x: _tree.gram_matrix([x], jnp.float32))(flat))
    assert np.all(np.isfinite(got))
    if num_tasks > 2:
        assert got[0, 0] == 0.0
    # A float32 sum of `size` terms in whatever order XLA:CPU's kernel takes (it can change
    # between runs, e.g. with the buffer's alignment): the recursive-summation bound size · u
    # (once measured 1.4e-5 over 8192 terms; garbage or a lost scale would be off by far more).
    rtol = size * float(np.finfo(np.float32).eps) / 2
    np.testing.assert_allclose(got[-2, -2], size * 1e-30, rtol=rtol)
    np.testing.assert_allclose(got[-1, -1], size * 1e30, rtol=rtol)
    np.testing.assert_allclose(got[-1, -2], size * 1.0, rtol=rtol)


def test_camegrad_update_does_not_depend_on_the_gram_strategy(monkeypatch):
    grads = {"w": random_stack(2, TWO_ROW_MIN + 11, seed=17).reshape(2, -1, 1)}
    params = {"w": jnp.zeros(grads["w"].shape[1:])}

    def update():
        tx = cg.camegrad(0.5, 1.5, 0.2, num_tasks=2)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        return np.asarray(updates["w"]), np.asarray(state.coefficients)

    def current_strategy():  # a new function each time: make_jaxpr caches traces per function
        return strategy(lambda x: _tree.gram_matrix([x], jnp.float32), grads["w"].reshape(2, -1))

    with_two_row = update()
    assert current_strategy() == ("two_row" if ON_CPU else "fused")
    monkeypatch.setattr(_tree, "_TWO_ROW_MIN_SIZE", 2**62)  # force the fused reduction
    with_fused = update()
    assert current_strategy() == "fused"
    np.testing.assert_allclose(with_two_row[1], with_fused[1], rtol=1e-5)
    scale = np.max(np.abs(with_fused[0]))
    np.testing.assert_allclose(with_two_row[0], with_fused[0], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("num_tasks", [2, 4, 8])
def test_gram_in_range_stores_no_copy_of_the_gradients(num_tasks):
    # Both branches of the range check are compiled; the rescaling one must fuse its division
    # into the reduction rather than store rescaled gradients (a whole extra stack in memory).
    # The two-row form (K = 2) stores one row's worth, the product of the two rows.
    flat = jnp.ones((num_tasks, 2 * MIN_SIZE + TWO_ROW_MIN), jnp.float32)
    compiled = jax.jit(lambda x: _tree.gram_in_range([x], jnp.float32)).lower(flat).compile()
    allowed = 1.01 * flat.nbytes / num_tasks if num_tasks == 2 else 0.05 * flat.nbytes
    assert compiled.memory_analysis().temp_size_in_bytes < allowed
