"""The loop-free dual (solver="enumerate"): no while loop, and jaxopt's answer to round-off."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import references

import camegrad_jax as cg


@functools.cache
def compiled_update(solver, num_tasks, dim, dtype, enhance=True):
    """The jitted camegrad update with c, gamma, alpha and the task weights traced."""

    @jax.jit
    def update(grads, c, gamma, alpha, task_weights):
        tx = cg.camegrad(c, gamma, alpha, task_weights=task_weights, solver=solver, enhance=enhance)
        params = jnp.zeros((dim,), dtype)
        return tx.update(grads, tx.init(params), params)

    return update


DIM = 40


def both_solvers(grads, c=0.5, gamma=1.5, alpha=0.2, weights=None, dtype=jnp.float32, **kw):
    """(update, state) with solver="enumerate" and with solver="jaxopt" on the same input.

    The gradients are padded with zeros to DIM entries (G does not change), so that the tests
    share one compiled update per K.
    """
    grads = np.asarray(grads)
    grads = jnp.asarray(np.pad(grads, ((0, 0), (0, DIM - grads.shape[1]))), dtype)
    k, dim = grads.shape
    weights = np.ones(k) if weights is None else np.asarray(weights)
    args = [jnp.asarray(v, dtype) for v in (c, gamma, alpha)] + [jnp.asarray(weights, dtype)]
    return tuple(
        compiled_update(solver, k, dim, dtype, **kw)(grads, *args)
        for solver in ("enumerate", "jaxopt")
    )


def assert_same_update(results, rtol, atol_fraction):
    (ours, our_state), (theirs, their_state) = results
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert np.all(np.isfinite(ours))
    atol = atol_fraction * max(np.max(np.abs(theirs)), 1e-300)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        our_state.coefficients, their_state.coefficients, rtol=rtol, atol=atol_fraction
    )


@pytest.mark.parametrize(
    "num_tasks",
    [2, 8] + [pytest.param(k, marks=pytest.mark.slow) for k in (3, 4, 5, 6, 7)],
)
def test_random_problems_agree_with_jaxopt(num_tasks):
    rng = np.random.default_rng(100 + num_tasks)
    for _ in range(4):
        grads = references.conflicting_gradients(rng, num_tasks, DIM)
        c = float(rng.uniform(0.1, 2.0))
        weights = rng.uniform(0.5, 2.0, num_tasks)
        results = both_solvers(grads, c=c, weights=weights)
        assert_same_update(results, rtol=1e-4, atol_fraction=1e-5)
        assert bool(results[0][1].method_state.solver_error == 0)  # a face certified it


def test_dual_solutions_agree_in_float64():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        for num_tasks in (6,):
            h = references.conflicting_gradients(rng, num_tasks, 40)
            gram = h @ h.T / np.trace(h @ h.T)
            gram, radius = jnp.asarray(gram), jnp.asarray(0.7 * np.sqrt(np.mean(gram)))
            init = jnp.full((num_tasks,), 1.0 / num_tasks)
            ours = cg.solve_dual(gram, radius, init, solver="enumerate")
            theirs = cg.solve_dual(gram, radius, init, solver="jaxopt")
            assert ours.weights.dtype == jnp.float64 and bool(ours.polished)
            assert int(ours.iterations) == 0
            np.testing.assert_allclose(ours.weights, theirs.weights, atol=1e-12)
            np.testing.assert_allclose(
                ours.direction_coefficients, theirs.direction_coefficients, rtol=1e-11
            )
            assert abs(float(ours.duality_gap)) <= 1e-14


@pytest.mark.parametrize(
    "scale", [1e-10, 1e10] + [pytest.param(v, marks=pytest.mark.slow) for v in (1e-6, 1.0, 1e6)]
)
def test_scales_agree_with_jaxopt(scale):
    grads = references.conflicting_gradients(np.random.default_rng(5), 4, DIM) * scale
    results = both_solvers(grads, weights=[1.0, 4.0, 2.0, 1.0])
    assert_same_update(results, rtol=2e-4, atol_fraction=1e-5)


def degenerate_cases():
    """(name, gradients, options, whether to also run without Stage 2)."""
    rng = np.random.default_rng(0)
    g = rng.normal(size=16)
    yield "zeros", np.zeros((3, 16)), {}, False
    for c in (0.5, 1.0, 3.0):
        for weights in ([1.0, 1.0], [1.0, 4.0]):
            options = {"c": c, "weights": weights}
            yield f"opposite c={c} w={weights}", np.stack([g, -g]), options, True
    pair = rng.normal(size=(2, 12))
    pair[1] -= 1.2 * pair[0]
    for c in (0.5, 2.0):
        yield f"one zero task c={c}", np.concatenate([pair, np.zeros((1, 12))]), {"c": c}, True
    base = references.conflicting_gradients(rng, 3, 20)
    yield "duplicated task", np.concatenate([base, base[:1]]), {}, False
    yield "rank 3 with K = 8", rng.normal(size=(8, 3)) @ rng.normal(size=(3, 20)), {}, False
    yield "c = 0", base, {"c": 0.0}, False
    yield "aligned tasks", np.outer([1.0, 2.0, 0.5], g), {}, False


# Exactly opposite tasks at c = 0.5 with equal and with unequal weights by default; the other
# radii, and the second radius of the one-zero-task case, under -m slow.
_SLOW_DEGENERATE = ("opposite c=1.0", "opposite c=3.0", "one zero task c=2.0")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, marks=pytest.mark.slow) if case[0].startswith(_SLOW_DEGENERATE) else case
        for case in degenerate_cases()
    ],
    ids=lambda case: case[0],
)
def test_degenerate_inputs_agree_with_jaxopt(case):
    _, grads, kwargs, without_stage2 = case
    for enhance in (True, False) if without_stage2 else (True,):
        results = both_solvers(grads, enhance=enhance, **kwargs)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(results[0][1]))
        assert_same_update(results, rtol=1e-4, atol_fraction=1e-5)


def test_vmap_equals_one_by_one():
    rng = np.random.default_rng(3)
    grams, radii = [], []
    for c in (0.2, 1.0, 3.0):
        h = references.conflicting_gradients(rng, 5, 30)
        gram = h @ h.T / np.trace(h @ h.T)
        grams.append(gram)
        radii.append(c * np.sqrt(np.mean(gram)))
    grams, radii = jnp.asarray(np.stack(grams), jnp.float32), jnp.asarray(radii, jnp.float32)
    init = jnp.full((5,), 0.2)
    batched = jax.vmap(lambda g, r: cg.solve_dual(g, r, init, solver="enumerate"))(grams, radii)
    for i in range(3):
        single = cg.solve_dual(grams[i], radii[i], init, solver="enumerate")
        np.testing.assert_allclose(batched.weights[i], single.weights, atol=1e-6)


# A while op: `stablehlo.while(` when lowered, `while(` in compiled HLO (not a name in metadata).
WHILE_OP = re.compile(r"stablehlo\.while\(|(?<![\w.])while\(")


def while_loops(solver):
    """The number of `while` ops in the lowered and in the compiled camegrad update (K = 8)."""
    tx = cg.camegrad(num_tasks=8, solver=solver)
    grads = jnp.zeros((8, 64))
    jitted = jax.jit(lambda g, s: tx.update(g, s, jnp.zeros(64)))
    lowered = jitted.lower(grads, tx.init(jnp.zeros(64)))
    texts = lowered.as_text(), lowered.compile().as_text()
    return tuple(len(WHILE_OP.findall(text)) for text in texts)


def test_the_compiled_update_has_no_loop():
    assert while_loops("enumerate") == (0, 0)
    # The check can fail: the iterative solver's update does contain loops.
    lowered, compiled = while_loops("jaxopt")
    assert lowered > 0 and compiled > 0


def test_more_than_eight_tasks_is_refused_clearly():
    tx = cg.camegrad(num_tasks=9, solver="enumerate")
    with pytest.raises(ValueError, match=r'solver = "enumerate".*K ≤ 8.*K = 9'):
        tx.update(jnp.ones((9, 4)), tx.init(jnp.zeros(4)))


@pytest.mark.parametrize("factory", [cg.mgda, pytest.param(cg.cagrad, marks=pytest.mark.slow)])
def test_mgda_and_cagrad_accept_the_enumerating_solver(factory):
    grads = jnp.asarray(references.conflicting_gradients(np.random.default_rng(2), 5, 30))
    params = jnp.zeros(30)
    results = {}
    for solver in ("enumerate", "jaxopt", "apg"):
        tx = factory(num_tasks=5, solver=solver)
        results[solver] = tx.update(grads, tx.init(params))
    # On this problem jaxopt stops at its 200 iterations for MGDA (a gap of 1e-5): compare with
    # the better-converged of the two iterative solvers, and never do worse than either.
    gaps = {solver: float(state.method_state.duality_gap) for solver, (_, state) in results.items()}
    best = min(("jaxopt", "apg"), key=gaps.get)
    assert gaps["enumerate"] <= gaps[best] + 1e-7
    np.testing.assert_allclose(results["enumerate"][0], results[best][0], rtol=1e-4, atol=1e-5)
