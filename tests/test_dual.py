"""Stage 1's dual solvers: agreement, vmap, jit, accuracy against SciPy, a clean import."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import references

import camegrad_jax as cg


def normalised_problem(rng, num_tasks, c, dtype=jnp.float32):
    h = references.conflicting_gradients(rng, num_tasks, 40)
    gram = h @ h.T
    gram = gram / np.trace(gram)
    radius = c * np.sqrt(np.mean(gram))  # c·‖g0‖ with trace(G) = 1
    return jnp.asarray(gram, dtype), jnp.asarray(radius, dtype)


def uniform(k, dtype=jnp.float32):
    return jnp.full((k,), 1.0 / k, dtype)


@pytest.mark.parametrize("num_tasks", [2, 4, 8])
def test_solvers_agree_and_match_slsqp(num_tasks):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(num_tasks)
    for _ in range(4):
        gram, radius = normalised_problem(rng, num_tasks, float(rng.uniform(0.1, 2.0)))
        jaxopt_sol = cg.solve_dual(gram, radius, uniform(num_tasks), solver="jaxopt")
        apg_sol = cg.solve_dual(gram, radius, uniform(num_tasks), solver="apg")
        np.testing.assert_allclose(
            jaxopt_sol.direction_coefficients, apg_sol.direction_coefficients, rtol=1e-4, atol=1e-5
        )
        g, r = np.asarray(gram, np.float64), float(radius)

        def objective(w, g=g, r=r):
            return w @ g.mean(1) + r * np.sqrt(max(w @ g @ w, 0.0))

        slsqp = scipy_optimize.minimize(
            objective,
            np.full(num_tasks, 1 / num_tasks),
            method="SLSQP",
            bounds=[(0, 1)] * num_tasks,
            constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        ours = objective(np.asarray(jaxopt_sol.weights, np.float64))
        assert ours <= slsqp.fun + 1e-6 * abs(slsqp.fun) + 1e-9
        assert float(jaxopt_sol.duality_gap) <= 1e-6


def test_float64_duality_gap_is_tiny():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for solver in ("jaxopt", "apg"):
            gram, radius = normalised_problem(rng, 6, 0.7, jnp.float64)
            sol = cg.solve_dual(gram, radius, uniform(6, jnp.float64), solver=solver)
            assert sol.weights.dtype == jnp.float64
            assert bool(sol.polished)
            assert abs(float(sol.duality_gap)) <= 1e-14
            np.testing.assert_allclose(float(jnp.sum(sol.weights)), 1.0, rtol=1e-12)


@pytest.mark.parametrize("solver", ["jaxopt", "apg"])
def test_vmap_equals_loop(solver):
    rng = np.random.default_rng(3)
    problems = [normalised_problem(rng, 4, c) for c in (0.2, 0.6, 1.0, 3.0)]
    grams = jnp.stack([p[0] for p in problems])
    radii = jnp.stack([p[1] for p in problems])
    inits = jnp.tile(uniform(4), (4, 1))
    batched = jax.vmap(lambda g, r, w: cg.solve_dual(g, r, w, solver=solver))(grams, radii, inits)
    for i, (gram, radius) in enumerate(problems):
        single = cg.solve_dual(gram, radius, uniform(4), solver=solver)
        np.testing.assert_allclose(
            batched.direction_coefficients[i], single.direction_coefficients, rtol=1e-4, atol=1e-5
        )


def test_without_polish_first_order_solution_is_close():
    rng = np.random.default_rng(4)
    gram, radius = normalised_problem(rng, 4, 0.5)
    exact = cg.solve_dual(gram, radius, uniform(4))
    rough = cg.solve_dual(gram, radius, uniform(4), polish=False, maxiter=2000, tol=1e-6)
    assert not bool(rough.polished)
    np.testing.assert_allclose(
        rough.direction_coefficients, exact.direction_coefficients, rtol=1e-2, atol=1e-3
    )
    assert float(rough.duality_gap) >= float(exact.duality_gap) - 1e-7


def test_zero_radius_returns_the_centre_without_iterating():
    gram, _ = normalised_problem(np.random.default_rng(5), 3, 0.5)
    sol = cg.solve_dual(gram, 0.0, uniform(3))
    np.testing.assert_allclose(sol.direction_coefficients, uniform(3))
    assert int(sol.iterations) == 0


def test_bad_solver_name():
    with pytest.raises(ValueError, match="solver"):
        cg.solve_dual(jnp.eye(2) / 2, 0.1, uniform(2), solver="slsqp")


def test_importing_and_solving_emit_no_jaxopt_deprecation_warning():
    code = (
        "import warnings; warnings.simplefilter('error');"
        "import jax.numpy as jnp, camegrad_jax as cg;"
        "cg.solve_dual(jnp.eye(2) / 2, 0.3, jnp.full((2,), 0.5), solver='jaxopt')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_apg_terminates_under_vmap_on_a_near_tie():
    # Nearly opposite gradients: the backtracking test sits on a float32 tie. It used to be
    # recomputed in the loop condition, and under vmap the loop never ended.
    gram = jnp.array(
        [[0.04040906950831413, -0.03997686877846718], [-0.03997686877846718, 0.03956229239702225]],
        jnp.float32,
    )
    init = jnp.array([0.4910290539264679, 0.5089709162712097], jnp.float32)

    def coefficients(gram, init):
        return cg.camegrad_weights(
            gram, solver="apg", init_weights=init, enhance=False, fuse=False
        ).coefficients

    batched = jax.jit(jax.vmap(coefficients))(gram[None], init[None])
    np.testing.assert_allclose(batched[0], jax.jit(coefficients)(gram, init), rtol=1e-5)
