"""The CPU Gram kernel (`camegrad_jax._native_gram`): built where a compiler exists, exact
against a float64 reference over many shapes and scales, NaN-propagating, differentiable and
vmappable, chosen by `_tree` for float32 leaves only, and replaceable by the XLA reductions with
the same update."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg
from camegrad_jax import _native_gram, _tree

ON_CPU = jax.default_backend() == "cpu"
needs_kernel = pytest.mark.skipif(not ON_CPU, reason="the kernel is for the CPU backend")


def reference(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return values @ values.T


def random_rows(num_tasks: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-3, 3, size=(num_tasks, 1))
    shared = rng.normal() * rng.normal(size=size)
    return (scales * (rng.normal(size=(num_tasks, size)) + shared)).astype(np.float32)


def assert_gram_close(got, rows, rtol=2e-6):
    """|G_ij − exact| ≤ rtol · ‖g_i‖‖g_j‖ entrywise (Cauchy–Schwarz sets each entry's scale)."""
    exact = reference(rows)
    norms = np.sqrt(np.diag(exact))
    np.testing.assert_array_less(
        np.abs(np.asarray(got, np.float64) - exact), rtol * np.outer(norms, norms) + 1e-30
    )


@needs_kernel
def test_kernel_is_built_wherever_a_compiler_is_found():
    status = cg.native_gram_status()
    if _native_gram._compiler() is None:
        assert status.startswith("not in use: no C++ compiler")
    else:
        assert _native_gram.available(), status
        assert status.startswith("in use: compiled with")


@needs_kernel
@pytest.mark.parametrize("num_tasks", [1, 2, 3, 4, 5, 7, 8, 9, 16])
def test_kernel_matches_float64_over_shapes_and_scales(num_tasks):
    # Sizes around every edge of the kernel: vector tails, cache blocks, parallel ranges.
    for size in (1, 7, 8, 9, 511, 512, 1000, 65536 + 5, 200_003):
        rows = random_rows(num_tasks, size, seed=num_tasks * 1000 + size)
        got = np.asarray(jax.jit(_native_gram.task_gram_f32)(jnp.asarray(rows)))
        assert got.shape == (num_tasks, num_tasks) and np.array_equal(got, got.T)
        assert_gram_close(got, rows)


@needs_kernel
def test_kernel_is_deterministic_and_zero_size_gives_zero():
    rows = jnp.asarray(random_rows(8, 300_001, seed=3))
    gram = jax.jit(_native_gram.task_gram_f32)
    assert np.array_equal(np.asarray(gram(rows)), np.asarray(gram(rows)))
    empty = np.asarray(gram(jnp.zeros((3, 0), jnp.float32)))
    assert np.array_equal(empty, np.zeros((3, 3)))


@needs_kernel
def test_non_finite_entries_reach_their_rows_and_columns_only():
    rows = random_rows(4, 10_000, seed=5)
    rows[1, 77] = np.nan
    rows[3, 9_000] = np.inf
    got = np.asarray(jax.jit(_native_gram.task_gram_f32)(jnp.asarray(rows)))
    assert np.all(np.isnan(got[1, :])) and np.all(np.isnan(got[:, 1]))
    assert got[3, 3] == np.inf
    clean = rows[[0, 2]]
    assert_gram_close(got[np.ix_([0, 2], [0, 2])], clean)


@needs_kernel
def test_jvp_grad_and_vmap_agree_with_xla():
    rows = jnp.asarray(random_rows(5, 3_000, seed=7))
    tangent = jnp.asarray(random_rows(5, 3_000, seed=8))

    def xla_gram(x):
        return jnp.einsum("kn,jn->kj", x, x)

    _, got = jax.jvp(_native_gram.task_gram_f32, (rows,), (tangent,))
    _, want = jax.jvp(xla_gram, (rows,), (tangent,))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    weights = jnp.arange(25.0).reshape(5, 5)
    got = jax.grad(lambda x: jnp.sum(weights * _native_gram.task_gram_f32(x)))(rows)
    want = jax.grad(lambda x: jnp.sum(weights * xla_gram(x)))(rows)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    batch = jnp.stack([rows, tangent, rows * 2])
    batched = np.asarray(jax.jit(jax.vmap(_native_gram.task_gram_f32))(batch))
    for one, stack in zip(batched, np.asarray(batch), strict=True):
        assert_gram_close(one, stack)


def _uses_kernel(leaf) -> bool:
    jaxpr = str(
        jax.make_jaxpr(lambda x: _tree.gram_matrix([x], _tree.accumulation_dtype([x])))(leaf)
    )
    return "ffi_call" in jaxpr


@needs_kernel
def test_tree_routes_float32_leaves_only():
    assert _uses_kernel(jnp.ones((4, 1000), jnp.float32)) == _native_gram.available()
    assert not _uses_kernel(jnp.ones((4, 1000), jnp.bfloat16))
    with jax.enable_x64(True):
        assert not _uses_kernel(jnp.ones((4, 1000), jnp.float64))


@needs_kernel
def test_camegrad_update_is_the_same_with_the_xla_reductions(monkeypatch):
    rng = np.random.default_rng(11)
    grads = {
        "conv": jnp.asarray(rng.normal(size=(8, 3, 3, 16, 32)), jnp.float32),
        "dense": jnp.asarray(random_rows(8, 70_001, seed=12)),
        "bias": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
    }
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:]), grads)

    def update():
        tx = cg.camegrad(0.5, 1.5, 0.2, num_tasks=8)
        updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
        return updates, np.asarray(state.coefficients)

    with_kernel = update()
    monkeypatch.setattr(_native_gram, "available", lambda: False)
    assert not _uses_kernel(grads["dense"])
    with_xla = update()
    np.testing.assert_allclose(with_kernel[1], with_xla[1], rtol=1e-4, atol=1e-6)
    for name in grads:
        scale = float(np.max(np.abs(with_xla[0][name])))
        np.testing.assert_allclose(with_kernel[0][name], with_xla[0][name], atol=1e-4 * scale)


def test_without_a_compiler_the_status_says_why_and_xla_serves(monkeypatch):
    monkeypatch.setattr(_native_gram, "_compiler", lambda: None)
    _native_gram._load.cache_clear()
    try:
        assert cg.native_gram_status() == (
            "not in use: no C++ compiler found ($CXX, c++, g++ or clang++)"
        )
        rows = random_rows(4, 9_000, seed=13)
        assert not _uses_kernel(jnp.asarray(rows))
        assert_gram_close(jax.jit(lambda x: _tree.gram_matrix([x], jnp.float32))(rows), rows)
    finally:
        monkeypatch.undo()
        _native_gram._load.cache_clear()


def test_environment_variable_turns_it_off():
    env = dict(os.environ, CAMEGRAD_JAX_NATIVE_GRAM="0")
    code = "import camegrad_jax as cg; print(cg.native_gram_status())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "not in use: turned off by CAMEGRAD_JAX_NATIVE_GRAM=0", out.stderr


@needs_kernel
def test_gram_in_range_with_the_kernel_stores_no_copy_of_the_gradients():
    flat = jnp.ones((8, 300_000), jnp.float32)
    compiled = jax.jit(lambda x: _tree.gram_in_range([x], jnp.float32)).lower(flat).compile()
    assert _native_gram.available() and "camegrad_jax_task_gram_f32" in compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes < 0.01 * flat.nbytes


def test_an_unusable_cache_folder_leaves_the_xla_reductions_in_use():
    env = dict(os.environ, CAMEGRAD_JAX_CACHE="/dev/null/camegrad_jax")
    code = (
        "import jax.numpy as jnp, camegrad_jax as cg; from camegrad_jax import _tree\n"
        "print(cg.native_gram_status())\n"
        "print(float(_tree.gram_matrix([jnp.ones((3, 10))], jnp.float32)[0, 1]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    status, value = out.stdout.strip().splitlines()
    if _native_gram._compiler() is not None:
        assert status.startswith("not in use: loading the kernel failed"), out.stderr
    assert value == "10.0"
