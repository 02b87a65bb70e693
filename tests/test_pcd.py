"""PCD against torchjd's fixed values, the closed form for two objectives (the paper's Corollary
4.6, as torchjd's tests write it), SciPy's SLSQP on the primal program, and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.gradient_method_checks import check_properties, property_batch, run
from helpers.loss_testing import rel_err, run_steps

from camegrad_jax._pcd import constraint_multipliers, pcd

DIM = 3
EPS = 1e-8


def one_step(grads, tau, eps=EPS, **static):
    """One update per problem; τ and ε always traced, so that the tests share compilations."""
    size = len(grads)
    hyper = {"tau": np.broadcast_to(tau, size), "eps": np.broadcast_to(eps, size)}
    return run(pcd, grads, hyper=hyper, **static)


def slsqp_direction(normalised, tau):
    """min ½‖d − g̃_1‖² s.t. g̃_jᵀd ≥ τ‖g̃_j‖² (j ≥ 2), by SciPy's SLSQP in float64."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    primary, secondary = normalised[0], normalised[1:]
    bounds = tau * np.sum(secondary**2, axis=1)
    result = scipy_optimize.minimize(
        lambda d: 0.5 * np.sum((d - primary) ** 2),
        primary,
        jac=lambda d: d - primary,
        method="SLSQP",
        constraints={
            "type": "ineq",
            "fun": lambda d: secondary @ d - bounds,
            "jac": lambda d: secondary,
        },
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert result.success, result.message
    return result.x


def reference(grads, tau, beta=0.999, eps=1e-8):
    """torchjd's `PCD` over the steps of `grads` (T, K, D), with the program solved by SLSQP."""
    average = np.zeros(grads.shape[1])
    updates = []
    for step, g in enumerate(grads, start=1):
        squared = np.sum(g**2, axis=1)
        average = beta * average + (1 - beta) * squared
        denominators = np.sqrt(average / (1 - beta**step) + eps)
        scales = np.where(denominators > 0, 1 / np.where(denominators > 0, denominators, 1), 0)
        direction = slsqp_direction(g * scales[:, None], tau)
        norm = np.linalg.norm(direction)
        updates.append(direction * np.sqrt(squared[0]) / norm if norm > 0 else direction * 0)
    return np.array(updates)


def two_objectives(g, tau, eps=1e-8):
    """torchjd's `_two_objectives_pcd`: μ = max((τ‖g̃_2‖² − g̃_1ᵀg̃_2) / ‖g̃_2‖², 0)."""
    scales = 1 / np.sqrt(np.sum(g**2, axis=1) + eps)
    g1, g2 = g[0] * scales[0], g[1] * scales[1]
    mu = max((tau * (g2 @ g2) - g1 @ g2) / (g2 @ g2), 0.0)
    direction = g1 + mu * g2
    return direction * np.linalg.norm(g[0]) / np.linalg.norm(direction)


def test_torchjd_fixed_values():
    def padded(rows):
        out = np.zeros((3, 3))
        rows = np.asarray(rows, float)
        out[: rows.shape[0], : rows.shape[1]] = rows
        return out

    rng = np.random.default_rng(0)
    cases = [  # (J, tau, eps, expected), from torchjd's tests/unit/aggregation/test_pcd.py
        ([[1, 0, 0], [1, 1, 0], [1, 0, 1]], 0.5, 1e-8, [1, 0, 0]),  # constraints hold
        ([[1, 1], [0, 1], [0, -2]], 0.02, 1e-8, [1, 1]),  # infeasible: the primary
        ([[1, 0], [-3, 0]], 0.02, 1e-8, [-1, 0]),  # only a step against the primary helps
        ([[1, 2], [0, 0], [3, -1]], 0.02, 0.0, [1, 2]),  # a zero secondary with eps = 0
        ([[0, 0, 0], *rng.normal(size=(2, 3))], 0.02, 1e-8, [0, 0, 0]),  # zero primary
    ]
    grads = np.stack([padded(j) for j, *_ in cases])
    updates, state = one_step(grads, [c[1] for c in cases], [c[2] for c in cases])
    expected = np.stack([np.pad(e, (0, 3 - len(e))) for *_, e in cases]).astype(float)
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.method_state.feasible, [True, False, True, True, True])


def test_two_objectives_match_the_closed_form():
    rng = np.random.default_rng(1)
    taus = np.repeat([0.0, 0.02, 0.5, 1.0], 6)
    scales = np.tile([1e-3, 1.0, 1e3], 8)[:, None, None]
    grads = rng.normal(size=(len(taus), 2, DIM)) * scales
    # A third task with a zero gradient adds the constraint 0 ≥ 0: the same program.
    padded = np.concatenate([grads, np.zeros((len(taus), 1, DIM))], axis=1)
    updates, _ = one_step(padded, taus)
    expected = np.stack([two_objectives(g, t) for g, t in zip(grads, taus, strict=True)])
    for update, want, g in zip(updates, expected, grads, strict=True):
        np.testing.assert_allclose(update, want, rtol=1e-4, atol=1e-4 * np.linalg.norm(g[0]))


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_many_objectives_match_slsqp(num_tasks):
    rng = np.random.default_rng(num_tasks)
    taus = np.repeat([0.0, 0.02, 0.3], 4)
    # Enough dimensions that the secondary tasks' constraints can all hold.
    dim = DIM if num_tasks <= DIM else 2 * num_tasks
    grads = rng.normal(size=(len(taus), num_tasks, dim))
    grads[:, 0] -= 1.5 * grads[:, 1:].mean(1)  # a primary that the secondaries oppose
    updates, state = one_step(grads, taus)
    assert np.all(state.method_state.feasible)
    for update, g, tau in zip(updates, grads, taus, strict=True):
        assert rel_err(update, reference(g[None], tau)[0]) < 1e-4


def test_debiased_moving_average_over_steps_and_a_non_finite_step():
    rng = np.random.default_rng(7)
    grads = rng.normal(size=(6, 3, DIM)) * np.exp(rng.normal(size=(6, 3, 1)))
    updates, states, _ = run_steps(pcd, grads, tau=0.3, beta=0.9)
    assert rel_err(updates, reference(grads, 0.3, beta=0.9)) < 1e-4
    poisoned = grads.copy()
    poisoned[2, 1, 0] = np.nan
    updates, states, _ = run_steps(pcd, poisoned, tau=0.3, beta=0.9)
    assert np.all(np.isnan(updates[2]))
    for leaf in jax.tree.leaves(states.method_state):
        np.testing.assert_array_equal(leaf[2], leaf[1])
    kept = np.delete(np.arange(6), 2)
    assert rel_err(updates[kept], reference(grads[kept], 0.3, beta=0.9)) < 1e-4


def test_properties_with_eps_zero():
    # Scale-equivariant (ε = 0); the output has the primary gradient's norm; the order of the
    # secondary tasks does not matter, the primary's place does.
    batch = property_batch(np.random.default_rng(8), 3, DIM)
    order = np.array([0, 2, 1])
    row_scales = np.array([2.0, 0.1, 30.0])[:, None]
    base = batch.grads[batch.index("base")]
    grads = np.concatenate([batch.grads, [base[order], base * row_scales]])
    updates, _ = one_step(grads, 0.02, 0.0)
    check_properties(updates[:-2], batch, permutation_invariant=False)
    norms = np.linalg.norm(grads[:, 0], axis=1)
    live = norms > 0
    np.testing.assert_allclose(np.linalg.norm(updates[live], axis=1), norms[live], rtol=1e-4)
    base_update = updates[batch.index("base")]
    assert rel_err(updates[-2], base_update) < 1e-5
    assert rel_err(updates[-1], 2.0 * base_update) < 1e-5  # torchjd: invariant to row scaling


def test_one_tau_per_secondary_task():
    rng = np.random.default_rng(9)
    g = rng.normal(size=(3, DIM))
    g[0] -= 2 * g[1:].sum(0)
    taus = np.array([0.1, 0.6])
    multipliers, feasible = jax.jit(constraint_multipliers)(g @ g.T, taus)
    assert bool(feasible)
    # Unnormalised gradients: s_i = 1, the program as written.
    primary, secondary = g[0], g[1:]
    scipy_optimize = pytest.importorskip("scipy.optimize")
    result = scipy_optimize.minimize(
        lambda d: 0.5 * np.sum((d - primary) ** 2),
        primary,
        jac=lambda d: d - primary,
        method="SLSQP",
        constraints={
            "type": "ineq",
            "fun": lambda d: secondary @ d - taus * np.sum(secondary**2, axis=1),
            "jac": lambda d: secondary,
        },
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert rel_err(np.asarray(multipliers) @ g, result.x) < 1e-4
    tx = pcd(tau=[0.1, 0.2])
    with pytest.raises(ValueError, match="tau"):
        tx.update(jnp.ones((4, 2)), tx.init(jnp.zeros(2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": -0.1}, ValueError, "tau = -0.1"),
        ({"tau": 1.1}, ValueError, "tau"),
        ({"tau": float("nan")}, ValueError, "tau"),
        ({"tau": [[0.1, 0.2]]}, ValueError, "tau"),
        ({"beta": 1.0}, ValueError, "beta = 1.0"),
        ({"beta": -0.1}, ValueError, "beta"),
        ({"eps": -1e-9}, ValueError, "eps"),
        ({"eps": "0"}, TypeError, "eps"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        pcd(**kwargs)


def test_too_many_tasks():
    tx = pcd()
    with pytest.raises(ValueError, match="K ≤ 9"):
        tx.update(jnp.ones((10, 2)), tx.init(jnp.zeros(2)))
