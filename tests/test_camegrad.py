"""CAME-Grad against independent references, its guarantees, and its numerics."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import references

import camegrad_jax as cg


@functools.cache
def _compiled_update(static_items):
    """A jitted update with c, gamma, alpha and task weights traced, so that tests sweeping
    them compile once per shape, dtype and static switch."""
    static = dict(static_items)

    @jax.jit
    def update(grads, c, gamma, alpha, task_weights):
        tx = cg.camegrad(c, gamma, alpha, task_weights=task_weights, **static)
        params = jnp.zeros(grads.shape[1:], grads.dtype)
        return tx.update(grads, tx.init(params), params)

    return update


def run_camegrad(
    grads, dtype=jnp.float32, jit=True, c=0.5, gamma=1.5, alpha=0.2, task_weights=None, **static
):
    """One update of camegrad on a single stacked leaf; returns (update, state)."""
    grads = jnp.asarray(grads, dtype)
    if task_weights is None:
        task_weights = np.ones(grads.shape[0])
    if not jit:
        tx = cg.camegrad(c, gamma, alpha, task_weights=list(task_weights), **static)
        params = jnp.zeros(grads.shape[1:], dtype)
        return tx.update(grads, tx.init(params), params)
    float_dtype = jnp.promote_types(dtype, jnp.float32)
    hyper = [jnp.asarray(v, float_dtype) for v in (c, gamma, alpha)]
    return _compiled_update(tuple(sorted(static.items())))(
        grads, *hyper, jnp.asarray(task_weights, float_dtype)
    )


def rel_err(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)


# ---------------------------------------------------------------------------------------------
# Independent reference: the Stage-1 primal solved another way, and the whole update.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_enumeration_reference_agrees_with_cone_program(num_tasks):
    cvxpy = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(num_tasks)
    for _ in range(3):
        h = references.conflicting_gradients(rng, num_tasks, 40)
        c = 0.7
        d_ref = references.conflict_averse_direction(h, c)
        g0 = h.mean(0)
        d = cvxpy.Variable(40)
        t = cvxpy.Variable()
        problem = cvxpy.Problem(
            cvxpy.Maximize(t), [h @ d >= t, cvxpy.norm(d - g0) <= c * np.linalg.norm(g0)]
        )
        problem.solve(solver=cvxpy.CLARABEL)
        assert references.worst_gain(h, d_ref) >= problem.value - 1e-7 * np.abs(problem.value)
        assert rel_err(d_ref, d.value) < 1e-4


def test_boundary_search_reference_agrees_with_enumeration():
    rng = np.random.default_rng(7)
    for _ in range(5):
        h = references.conflicting_gradients(rng, 2, 30)
        c = rng.uniform(0.05, 2.0)
        # The search resolves a smooth maximum only to ~sqrt(eps) in angle.
        assert (
            rel_err(
                references.conflict_averse_direction_search(h, c),
                references.conflict_averse_direction(h, c),
            )
            < 1e-7
        )


# Each task count compiles the update anew; the default run takes the ends and a middle count.
SOME_TASK_COUNTS = [2, 4, 8]


def task_counts(*more: int) -> list:
    return [*SOME_TASK_COUNTS, *(pytest.param(k, marks=pytest.mark.slow) for k in more)]


@pytest.mark.parametrize("solver", ["jaxopt", "apg"])
@pytest.mark.parametrize("num_tasks", task_counts(3, 6))
def test_stage1_matches_reference_float64(num_tasks, solver):
    rng = np.random.default_rng(100 + num_tasks)
    with jax.enable_x64(True):
        for _ in range(6):
            grads = references.conflicting_gradients(rng, num_tasks, 32)
            c = float(rng.choice([0.1, 0.5, 0.9, 2.0]))
            expected = references.camegrad_update(grads, c, 1.0, 0.0, enhance=False)
            update, state = run_camegrad(
                grads, jnp.float64, c=c, gamma=1.0, alpha=0.0, enhance=False, solver=solver
            )
            assert update.dtype == jnp.float64
            assert rel_err(update, expected) <= 1e-6
            # The search reference agrees too, where it applies.
            if num_tasks == 2:
                search = references.conflict_averse_direction_search(grads, c)
                assert rel_err(update, search) <= 1e-6


@pytest.mark.parametrize("solver", ["jaxopt", "apg"])
@pytest.mark.parametrize("num_tasks", task_counts(3))
def test_full_update_matches_reference_float32(num_tasks, solver):
    rng = np.random.default_rng(200 + num_tasks)
    for _ in range(6):
        grads = references.conflicting_gradients(rng, num_tasks, 32)
        c, gamma, alpha = float(rng.uniform(0.05, 1.5)), float(rng.uniform(0.5, 2)), 0.3
        weights = rng.uniform(0.5, 4.0, size=num_tasks)
        expected = references.camegrad_update(grads, c, gamma, alpha, task_weights=weights)
        update, _ = run_camegrad(
            grads, c=c, gamma=gamma, alpha=alpha, task_weights=list(weights), solver=solver
        )
        assert rel_err(update, expected) <= 1e-4


def test_full_update_matches_reference_float64_pytree():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        grads = references.conflicting_gradients(rng, 3, 12 + 20 + 1)
        tree = {"a": grads[:, :12].reshape(3, 3, 4), "b": {"c": grads[:, 12:32], "d": grads[:, 32]}}
        params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], jnp.float64), tree)
        tx = cg.camegrad(0.4, 1.3, 0.25, task_weights=[1.0, 2.0, 0.5])
        update, _ = jax.jit(tx.update)(jax.tree.map(jnp.asarray, tree), tx.init(params), params)
        flat = np.concatenate(
            [np.ravel(update["a"]), np.ravel(update["b"]["c"]), np.ravel(update["b"]["d"])]
        )
        expected = references.camegrad_update(grads, 0.4, 1.3, 0.25, task_weights=[1, 2, 0.5])
        assert rel_err(flat, expected) <= 1e-6


def test_stage1_maximises_worst_case_improvement_in_trust_region():
    rng = np.random.default_rng(11)
    with jax.enable_x64(True):
        for _ in range(10):
            grads = references.conflicting_gradients(rng, 4, 32)
            d, state = run_camegrad(grads, jnp.float64, c=0.6, gamma=1.0, alpha=0.0, enhance=False)
            d = np.asarray(d)
            g0 = grads.mean(0)
            assert np.linalg.norm(d - g0) <= 0.6 * np.linalg.norm(g0) * (1 + 1e-9)
            # No point of the trust region does better: sample many.
            directions = rng.normal(size=(5000, 32))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            radii = 0.6 * np.linalg.norm(g0) * rng.uniform(0, 1, size=(5000, 1)) ** (1 / 32)
            samples = g0 + radii * directions
            assert references.worst_gain(grads, d) >= np.max(np.min(samples @ grads.T, axis=1))
            assert float(state.method_state.duality_gap) <= 1e-12


# ---------------------------------------------------------------------------------------------
# Guarantees from algorithm.md, over many seeded random inputs.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_c_zero_gamma_one_is_linear_scalarization(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([2, 3, 4]))
    grads = references.conflicting_gradients(rng, k, 32)
    weights = rng.uniform(0.2, 5.0, size=k)
    alpha = float(rng.uniform(0, 1))
    update, state = run_camegrad(grads, c=0.0, gamma=1.0, alpha=alpha, task_weights=list(weights))
    np.testing.assert_allclose(update, weights @ grads, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.coefficients, weights, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_single_task_is_scaled_gradient(seed):
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(1, 32))
    weight, gamma = float(rng.uniform(0.1, 3)), float(rng.uniform(0, 3))
    for c, alpha in [(0.5, 0.2), (2.0, 0.9), (0.0, 0.0)]:
        update, _ = run_camegrad(grads, c=c, gamma=gamma, alpha=alpha, task_weights=[weight])
        np.testing.assert_allclose(update, gamma * weight * grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_permuting_tasks_leaves_update_unchanged(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([2, 3, 4]))
    grads = references.conflicting_gradients(rng, k, 32)
    weights = rng.uniform(0.5, 2, size=k)
    perm = rng.permutation(k)
    update, _ = run_camegrad(grads, task_weights=list(weights))
    permuted, _ = run_camegrad(grads[perm], task_weights=list(weights[perm]))
    np.testing.assert_allclose(update, permuted, rtol=1e-4, atol=1e-5 * np.abs(update).max())


@pytest.mark.parametrize("scale", [1e-10, 1e-6, 1e-3, 1.0, 1e3, 1e6, 1e10])
def test_scaling_all_gradients_scales_update(scale):
    rng = np.random.default_rng(5)
    grads = references.conflicting_gradients(rng, 4, 32)
    base, base_state = run_camegrad(grads, task_weights=[1.0, 4.0, 2.0, 1.0])
    scaled, state = run_camegrad(grads * scale, task_weights=[1.0, 4.0, 2.0, 1.0])
    assert np.all(np.isfinite(scaled))
    np.testing.assert_allclose(np.asarray(scaled) / scale, base, rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(
        state.method_state.dual_weights, base_state.method_state.dual_weights, atol=1e-4
    )


def test_reference_holds_at_extreme_scales():
    rng = np.random.default_rng(8)
    grads = references.conflicting_gradients(rng, 3, 32)
    expected = references.camegrad_update(grads, 0.5, 1.5, 0.2)
    for scale in [1e-10, 1e10]:
        update, _ = run_camegrad(grads * scale, c=0.5, gamma=1.5, alpha=0.2)
        assert rel_err(np.asarray(update) / scale, expected) <= 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_ablation_switches_match_reference(seed):
    rng = np.random.default_rng(seed)
    grads = references.conflicting_gradients(rng, 3, 32)
    weights = [1.0, 4.0, 2.0]
    for rectify, enhance, fuse in itertools.product([True, False], repeat=3):
        expected = references.camegrad_update(
            grads, 0.5, 1.5, 0.2, weights, rectify=rectify, enhance=enhance, fuse=fuse
        )
        update, _ = run_camegrad(
            grads,
            c=0.5,
            gamma=1.5,
            alpha=0.2,
            task_weights=weights,
            rectify=rectify,
            enhance=enhance,
            fuse=fuse,
        )
        assert rel_err(update, expected) <= 1e-4, (rectify, enhance, fuse)


def test_without_stage1_update_is_gamma_times_joint_gradient():
    rng = np.random.default_rng(1)
    grads = references.conflicting_gradients(rng, 3, 32)
    update, _ = run_camegrad(grads, c=0.9, gamma=1.7, alpha=0.3, rectify=False)
    np.testing.assert_allclose(update, 1.7 * grads.sum(0), rtol=1e-5)


def test_large_radius_approaches_min_norm_direction():
    rng = np.random.default_rng(2)
    grads = references.conflicting_gradients(rng, 3, 32)
    # MGDA's min-norm point of the convex hull, by brute force over a fine simplex grid.
    grid = np.array([(i, j, 400 - i - j) for i in range(401) for j in range(401 - i)]) / 400
    points = grid @ grads
    min_norm = points[np.argmin(np.linalg.norm(points, axis=1))]
    update, _ = run_camegrad(grads, c=1e4, gamma=1.0, alpha=0.0, enhance=False)
    cosine = float(np.dot(update, min_norm) / np.linalg.norm(update) / np.linalg.norm(min_norm))
    assert cosine > 1 - 1e-4


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_dtype_is_preserved_and_accurate(dtype):
    rng = np.random.default_rng(4)
    grads = np.asarray(jnp.asarray(references.conflicting_gradients(rng, 2, 256), dtype), float)
    update, state = run_camegrad(grads, dtype)
    assert update.dtype == dtype
    assert state.coefficients.dtype == jnp.float32
    expected = references.camegrad_update(grads, 0.5, 1.5, 0.2)
    # Only the final rounding to the input dtype separates us from the float64 reference.
    assert rel_err(update, expected) <= 2 * float(jnp.finfo(dtype).eps)


def test_float64_is_preserved():
    with jax.enable_x64(True):
        grads = references.conflicting_gradients(np.random.default_rng(0), 3, 10)
        update, _ = run_camegrad(grads, jnp.float64)
        assert update.dtype == jnp.float64


def test_jit_and_no_jit_agree():
    rng = np.random.default_rng(9)
    for _ in range(3):
        grads = references.conflicting_gradients(rng, 4, 32)
        jitted, s1 = run_camegrad(grads, jit=True)
        eager, s2 = run_camegrad(grads, jit=False)
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            s1.method_state.dual_weights, s2.method_state.dual_weights, atol=1e-5
        )


# ---------------------------------------------------------------------------------------------
# Valid but extreme inputs: finite and correct.
# ---------------------------------------------------------------------------------------------


def test_zero_gradients_give_zero_update():
    update, state = run_camegrad(np.zeros((3, 8)))
    np.testing.assert_array_equal(update, 0.0)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 4.0]])
@pytest.mark.parametrize("c", [0.5, 1.0, 3.0])
def test_exactly_opposite_gradients(weights, c):
    g = np.random.default_rng(0).normal(size=16)
    grads = np.stack([g, -g])
    update, state = run_camegrad(grads, c=c, gamma=1.5, alpha=0.2, task_weights=weights)
    assert np.all(np.isfinite(update))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
    h = np.asarray(weights)[:, None] * grads
    if weights[0] == weights[1]:
        np.testing.assert_allclose(update, 0.0, atol=1e-6)  # g_lin = 0 and g0 = 0
    elif c < 1:
        # The trust region excludes 0: the weaker task is improved as much as it can be.
        expected = references.camegrad_update(grads, c, 1.5, 0.2, weights)
        assert rel_err(update, expected) <= 1e-4
    else:
        # The region holds 0, the only direction conflicting with neither: d = 0, Stage 2
        # injects nothing and only the fused γ·g_lin remains.
        np.testing.assert_allclose(update, 0.2 * 1.5 * h.sum(0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_one_zero_task(c):
    # A task with zero gradient caps every direction's worst-case gain at 0: every d of the
    # trust region that conflicts with no task is optimal, and d is the one nearest g0.
    scipy_optimize = pytest.importorskip("scipy.optimize")
    g = np.random.default_rng(1).normal(size=(2, 12))
    g[1] -= 1.2 * g[0]  # make the two non-zero tasks conflict
    grads = np.concatenate([g, np.zeros((1, 12))])
    g0 = grads.mean(0)
    mu, _ = scipy_optimize.nnls(grads.T, -g0)  # nearest non-conflicting d = g0 + Σ μ_i g_i
    expected = g0 + grads.T @ mu
    assert np.all(grads @ expected >= -1e-12)
    assert np.linalg.norm(expected - g0) <= c * np.linalg.norm(g0)  # inside the trust region
    with jax.enable_x64(True):
        d64, state = run_camegrad(grads, jnp.float64, c=c, gamma=1.0, alpha=0.0, enhance=False)
    assert rel_err(d64, expected) <= 1e-6
    assert float(state.stats.cosine_similarity[0, 2]) == 0.0
    d32, _ = run_camegrad(grads, c=c, gamma=1.0, alpha=0.0, enhance=False)
    assert rel_err(d32, expected) <= 1e-4
    update, _ = run_camegrad(grads, c=c)  # the default Stages 2 and 3 stay finite
    assert np.all(np.isfinite(update))


def test_nan_gradients_propagate_instead_of_hiding():
    grads = np.ones((2, 4))
    grads[0, 1] = np.nan
    update, _ = run_camegrad(grads)
    assert np.all(np.isnan(update))


# ---------------------------------------------------------------------------------------------
# Diagnostics.
# ---------------------------------------------------------------------------------------------


def test_diagnostics_match_numpy():
    rng = np.random.default_rng(12)
    grads = references.conflicting_gradients(rng, 3, 32)
    weights = np.array([1.0, 4.0, 2.0])
    update, state = run_camegrad(grads, c=0.5, gamma=1.5, alpha=0.2, task_weights=list(weights))
    h = weights[:, None] * grads
    norms = np.linalg.norm(h, axis=1)
    cosine = (h @ h.T) / np.outer(norms, norms)
    stats = state.stats
    np.testing.assert_allclose(stats.cosine_similarity, cosine, atol=1e-5)
    assert bool(stats.any_conflict) == bool(np.any(cosine < 0))
    np.testing.assert_allclose(stats.task_norms, norms, rtol=1e-5)
    np.testing.assert_allclose(stats.joint_norm, np.linalg.norm(h.sum(0)), rtol=1e-5)
    np.testing.assert_allclose(stats.update_norm, np.linalg.norm(update), rtol=1e-5)
    np.testing.assert_allclose(
        stats.magnitude_collapse_ratio, np.linalg.norm(h.sum(0)) / norms.sum(), rtol=1e-5
    )
    d = references.conflict_averse_direction(h, 0.5)
    np.testing.assert_allclose(state.method_state.direction_norm, np.linalg.norm(d), rtol=1e-4)
    np.testing.assert_allclose(state.coefficients @ grads, update, rtol=1e-4, atol=1e-6)
    assert np.isclose(float(np.sum(state.method_state.dual_weights)), 1.0, atol=1e-6)
    # From the uniform cold start the solver iterates, and stops long before its cap (200) with
    # a certified optimum (the warm start below needs no iteration at all).
    assert 0 < int(state.method_state.solver_iterations) < 200
    assert float(state.method_state.duality_gap) <= 1e-6


def test_warm_start_reuses_previous_weights():
    rng = np.random.default_rng(13)
    grads = jnp.asarray(references.conflicting_gradients(rng, 6, 40), jnp.float32)
    tx = cg.camegrad(num_tasks=6)
    params = jnp.zeros(40)
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    _, state2 = update(grads, state, params)
    # Starting on the optimal support, the exact polish certifies the optimum without iterating.
    assert int(state2.method_state.solver_iterations) == 0
    np.testing.assert_allclose(
        state2.method_state.dual_weights, state.method_state.dual_weights, atol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Setting B, shared-parameter mask.
# ---------------------------------------------------------------------------------------------


def test_setting_b_noise_has_the_energy_stage2_would_inject():
    rng = np.random.default_rng(14)
    grads = references.conflicting_gradients(rng, 2, 20000)
    c, gamma, alpha = 0.5, 1.5, 0.2
    update, state = run_camegrad(grads, c=c, gamma=gamma, alpha=alpha, enhance="noise", seed=3)
    h = grads
    d = references.conflict_averse_direction(h, c)
    deterministic = (1 - alpha) * d + alpha * gamma * h.sum(0)
    noise = np.asarray(update, np.float64) - deterministic
    expected_norm = (1 - alpha) * max(gamma * np.linalg.norm(h.sum(0)) - np.linalg.norm(d), 0)
    assert abs(np.linalg.norm(noise) / expected_norm - 1) < 0.02
    assert abs(np.mean(noise)) < 4 * expected_norm / 20000  # zero-mean
    # Fresh noise at the next step.
    update2, _ = jax.jit(
        cg.camegrad(c=c, gamma=gamma, alpha=alpha, enhance="noise", seed=3, num_tasks=2).update
    )(jnp.asarray(grads, jnp.float32), state)
    assert not np.allclose(update2, update)


def test_setting_b_noise_is_isotropic_with_the_injected_energy_over_the_shared_leaves():
    # A second view of Setting B's noise: many draws in few dimensions rather than one in many.
    # The shared leaves (5 + 3 coordinates) receive zero-mean isotropic noise with
    # E‖noise‖² = σ²P = ((1 − α)·max(γ‖g_lin‖ − ‖d‖, 0))², for weighted tasks h_i = λ_i g_i;
    # the private leaf keeps the deterministic weighted sum.
    rng = np.random.default_rng(16)
    shared = references.conflicting_gradients(rng, 2, 8)
    head = rng.normal(size=(2, 4))
    weights, (c, gamma, alpha) = np.array([1.0, 3.0]), (0.5, 1.5, 0.2)
    tree = {"a": shared[:, :5], "b": shared[:, 5:], "head": head}
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), tree)
    tx = cg.camegrad(
        c,
        gamma,
        alpha,
        enhance="noise",
        seed=5,
        task_weights=list(weights),
        shared_mask={"a": True, "b": True, "head": False},
    )

    def step(state, _):
        update, state = tx.update(tree, state, params)
        return state, (jnp.concatenate([update["a"], update["b"]]), update["head"], state)

    _, (noisy, private, states) = jax.lax.scan(step, tx.init(params), length=2000)
    h = weights[:, None] * shared
    d = references.conflict_averse_direction(h, c)
    g_lin = h.sum(axis=0)
    deterministic = (1 - alpha) * d + alpha * gamma * g_lin
    energy = (1 - alpha) * max(gamma * np.linalg.norm(g_lin) - np.linalg.norm(d), 0.0)
    assert energy > 0.1 * np.linalg.norm(deterministic)  # the noise is not negligible here
    np.testing.assert_allclose(states.method_state.noise_norm, energy, rtol=1e-4)
    np.testing.assert_allclose(private, np.tile(head[0] + 3 * head[1], (2000, 1)), rtol=1e-5)
    noise = np.asarray(noisy, np.float64) - deterministic
    variance = energy**2 / 8
    # Standard errors over 2000 draws: 1.1% for the mean squared norm, 3.2% for each variance,
    # 2.2% of the variance for each covariance and for each mean (in units of σ).
    assert abs(np.mean(np.sum(noise**2, axis=1)) / energy**2 - 1) < 0.06
    covariance = np.cov(noise, rowvar=False)
    np.testing.assert_allclose(np.diag(covariance), variance, rtol=0.2)
    assert np.max(np.abs(covariance - np.diag(np.diag(covariance)))) < 0.15 * variance
    assert np.max(np.abs(noise.mean(axis=0))) < 0.15 * np.sqrt(variance)


def test_shared_mask_uses_shared_leaves_for_gram_and_linear_sum_elsewhere():
    rng = np.random.default_rng(15)
    shared = references.conflicting_gradients(rng, 2, 30)
    head = rng.normal(size=(2, 5))
    tree = {"encoder": jnp.asarray(shared, jnp.float32), "head": jnp.asarray(head, jnp.float32)}
    params = {"encoder": jnp.zeros(30), "head": jnp.zeros(5)}
    tx = cg.camegrad(
        0.5, 1.5, 0.2, task_weights=[1.0, 4.0], shared_mask={"encoder": True, "head": False}
    )
    update, state = jax.jit(tx.update)(tree, tx.init(params), params)
    expected = references.camegrad_update(shared, 0.5, 1.5, 0.2, [1.0, 4.0])
    assert rel_err(update["encoder"], expected) <= 1e-4
    np.testing.assert_allclose(update["head"], head[0] + 4 * head[1], rtol=1e-6)
    # Callable masks work like optax.masked's.
    tx2 = cg.camegrad(
        0.5,
        1.5,
        0.2,
        task_weights=[1.0, 4.0],
        shared_mask=lambda p: {"encoder": True, "head": False},
    )
    update2, _ = tx2.update(tree, tx2.init(params), params)
    np.testing.assert_allclose(update2["encoder"], update["encoder"], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: early, named errors.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"c": -0.1}, "`c`"),
        ({"c": float("nan")}, "`c`"),
        ({"gamma": -1.0}, "`gamma`"),
        ({"alpha": 1.5}, "`alpha`"),
        ({"alpha": -0.01}, "`alpha`"),
        ({"task_weights": [1.0, -2.0]}, "`task_weights`"),
        ({"task_weights": [1.0, 0.0]}, "`task_weights`"),
        ({"task_weights": [[1.0, 2.0]]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
        ({"num_tasks": 3, "task_weights": [1.0, 2.0]}, "num_tasks"),
        ({"enhance": "loud"}, "`enhance`"),
        ({"solver": "slsqp"}, "`solver`"),
        ({"solver_maxiter": 0}, "`solver_maxiter`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cg.camegrad(**kwargs)


def test_error_names_the_value():
    with pytest.raises(ValueError, match=r"c = -1"):
        cg.camegrad(c=-1)


def test_unknown_number_of_tasks_leaves_the_task_axis_empty_until_the_first_update():
    tx = cg.camegrad()
    state = tx.init({"w": jnp.zeros(3)})
    assert state.coefficients.shape == (0,)
    _, state = tx.update({"w": jnp.ones((4, 3))}, state)
    assert state.coefficients.shape == (4,) and state.method_state.dual_weights.shape == (4,)
    with pytest.raises(ValueError, match="K = 3 tasks, but camegrad's state was built for K = 4"):
        tx.update({"w": jnp.ones((3, 3))}, state)


def test_task_axis_mismatches_fail_loudly():
    tx = cg.camegrad(num_tasks=2)
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="disagree on the task axis"):
        tx.update({"a": jnp.zeros((2, 3)), "b": jnp.zeros((3, 2, 2))}, state, params)
    with pytest.raises(ValueError, match="K = 3"):
        tx.update({"a": jnp.zeros((3, 3)), "b": jnp.zeros((3, 2, 2))}, state, params)
    # Unstacked gradients (the transformation placed after another) are caught against params.
    with pytest.raises(ValueError, match=r"\['b'\].*expected \(2, 2, 2\)"):
        tx.update({"a": jnp.zeros((2, 3)), "b": jnp.zeros((2, 2))}, state, params)
    with pytest.raises(ValueError, match="tree structures"):
        tx.update({"a": jnp.zeros((2, 3))}, state, params)
    with pytest.raises(ValueError, match="scalar"):
        tx.update({"a": jnp.zeros(()), "b": jnp.zeros((2, 2, 2))}, state)


def test_task_weights_checked_against_task_axis_under_inject():
    tx = optax.inject_hyperparams(cg.camegrad)(c=0.5, task_weights=jnp.array([1.0, 2.0, 3.0]))
    params = jnp.zeros(4)
    with pytest.raises(ValueError, match="task_weights"):
        tx.update(jnp.zeros((2, 4)), tx.init(params), params)


def test_bad_shared_mask():
    tx = cg.camegrad(num_tasks=2, shared_mask={"a": False})
    params = {"a": jnp.zeros(3)}
    with pytest.raises(ValueError, match="shared_mask"):
        tx.update({"a": jnp.ones((2, 3))}, tx.init(params), params)
    tx = cg.camegrad(num_tasks=2, shared_mask={"x": True, "y": True})
    with pytest.raises(ValueError, match="shared_mask"):
        tx.update({"a": jnp.ones((2, 3))}, tx.init(params), params)
