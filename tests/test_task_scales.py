"""float32 that holds across task scales, for every Gram-based method.

* A common scale from 1e-30 to 1e30 (2^±100) changes the update only by the method's own
  scaling law: the Gram matrix is formed from rescaled gradients where float32 would overflow or
  underflow, never silently collapsing to 0 or to a fallback.
* Task gradients whose norms are spread log-uniformly over six orders of magnitude (a token-level
  language-model loss beside a small auxiliary loss) give float32 updates within 1e-3 of an
  independent float64 reference; float64 holds 1e-6 up to a spread of 1e12.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.official_references import (
    modo_official_run as modo_run,
)
from helpers.official_references import (
    numpy_config,
    numpy_gradvac,
    numpy_imtl_g,
    numpy_krum,
    numpy_pcgrad,
    official_min_norm_of_two,
)
from helpers.official_references import (
    sdmgrad_official_run as sdmgrad_run,
)

import camegrad_jax as cg

# The degree p of each update in the gradients' common scale s: update(s·g) = s^p · update(g)
# (Nash-MTL normalises its update's length, FairGrad's depends on α). MoDo has no such law (its
# step size is in the units of G), nor PCD (its ε = 1e-8 is added to squared gradient norms).
SCALE_DEGREES = {
    "linear": 1,
    "camegrad": 1,
    "camegrad_apg": 1,
    "cagrad": 1,
    "pcgrad": 1,
    "mgda": 1,
    "mgda_l2": 1,
    "cr_mogm": 1,
    "imtl_g": 1,
    "nash_mtl": 0,
    "fairgrad": 1 / 3,  # s^((1 − α)/(1 + α))
    "sdmgrad": 1,
    "aligned_mtl": 1,
    "upgrad": 1,
    "dualproj": 1,
    "mmpareto": 1,
    "config": 1,
    "gradvac": 1,
    "krum": 1,
}


def _update(factory, grads):
    tx = factory()
    updates, state = tx.update(grads, tx.init(None))
    return np.asarray(updates, np.float64), state


def _conflicting(rng, num_tasks, dim=24):
    shared = rng.normal(size=dim)
    grads = rng.normal(size=(num_tasks, dim)) + rng.uniform(-0.5, 1.0) * shared
    return grads / np.linalg.norm(grads, axis=1, keepdims=True)


@functools.cache
def _compiled(name, dtype_name):
    """One compiled, vmapped update of a batch of problems (each from a fresh state), shared by
    the tests of a method (same batch size, K and dtype: one compilation)."""
    tx = SPREAD_METHODS[name][0]()
    return jax.jit(jax.vmap(lambda g: tx.update(g, tx.init(None))))


def _batched_updates(name, grads):
    updates, states = _compiled(name, grads.dtype.name)(grads)
    return np.asarray(updates, np.float64), states


# Both ends, and ±60 where the plain float32 Gram already underflows or overflows.
_EXPONENTS = (-100, -80, -60, -30, 30, 60, 100)


@pytest.mark.parametrize("name", SCALE_DEGREES)
def test_a_common_scale_from_1e_minus_30_to_1e30_changes_only_the_scale(name):
    num_tasks = _DEFAULT_TASKS[name]
    grads = _conflicting(np.random.default_rng(7), num_tasks).astype(np.float32)
    scales = np.array([1.0] + [2.0**e for e in _EXPONENTS])
    batch = grads[None] * scales[:, None, None].astype(np.float32)  # exact: powers of two
    updates, states = _batched_updates(name, jnp.asarray(batch))
    reference = updates[0]
    assert np.linalg.norm(reference) > 0
    for index, scale in enumerate(scales[1:], start=1):
        expected = reference * scale ** SCALE_DEGREES[name]
        assert np.all(np.isfinite(updates[index])), scale
        error = np.linalg.norm(updates[index] - expected) / np.linalg.norm(expected)
        assert error < 1e-4, (scale, error)
        if name == "linear":
            continue  # Linear scalarization forms no Gram matrix, hence no diagnostics.
        # The diagnostics carry the true scale too (angles and ratios do not change).
        norms = np.asarray(states.stats.task_norms[index], np.float64)
        true_norms = np.linalg.norm(grads.astype(np.float64), axis=1) * scale
        np.testing.assert_allclose(norms, true_norms, rtol=1e-5)


@pytest.mark.parametrize("name", ["camegrad", "pcgrad", "upgrad"])
def test_non_finite_gradients_still_poison_the_update_at_any_scale(name):
    factory = SPREAD_METHODS[name][0]
    grads = np.array([[1.0, 2.0, 3.0], [-2.0, 1.0, 0.5]], np.float32) * np.float32(1e-30)
    for bad in (np.nan, np.inf):
        poisoned = grads.copy()
        poisoned[1, 2] = bad
        updates, _ = _update(factory, jnp.asarray(poisoned))
        assert np.all(np.isnan(updates))


def _conflict_averse_direction_graded(h: np.ndarray, c: float) -> np.ndarray:
    """Stage 1 by enumeration of active sets, written for task norms far apart (float64).

    Independent of the library. On a support S, d = g0 + Σ_{i∈S} y_i u_i with unit vectors u_i,
    and <h_i, d> = t becomes <u_i, d> = t / ‖h_i‖: the systems involve only the cosine matrix,
    whatever the norms, and every test is relative to its own task's scale.
    """
    norms = np.linalg.norm(h, axis=1)
    units = h / norms[:, None]
    g0 = h.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    best, best_gain = None, -np.inf
    for size in range(1, len(h) + 1):
        for support in itertools.combinations(range(len(h)), size):
            us = units[list(support)]
            cosine = us @ us.T
            if np.linalg.cond(cosine) > 1e10:
                continue
            a = np.linalg.solve(cosine, 1.0 / norms[list(support)])
            e = np.linalg.solve(cosine, us @ g0)
            quad_a, quad_b, quad_c = a @ cosine @ a, a @ cosine @ e, e @ cosine @ e - radius**2
            discriminant = quad_b**2 - quad_a * quad_c
            if discriminant < 0:
                continue
            t = (quad_b + np.sqrt(discriminant)) / quad_a
            y = t * a - e
            if np.any(y < -1e-9 * np.abs(y).max()):
                continue
            d = g0 + us.T @ y
            if np.any(h @ d < t - 1e-9 * norms * np.linalg.norm(d)):
                continue
            if t > best_gain:
                best, best_gain = d, t
    assert best is not None
    return best


def _camegrad_reference(h, c=0.5, gamma=1.5, alpha=0.2):
    d = _conflict_averse_direction_graded(h, c)
    g_lin = h.sum(axis=0)
    return (1 - alpha) * gamma * np.linalg.norm(g_lin) * d / np.linalg.norm(
        d
    ) + alpha * gamma * g_lin


def _cagrad_reference(h, c=0.4):
    """The official rescaling d / (1 + c²), times K as the official trainers apply it."""
    return len(h) * _conflict_averse_direction_graded(h, c) / (1 + c**2)


def _min_norm_graded(h: np.ndarray) -> np.ndarray:
    """MGDA's min-norm weights by enumeration of supports, in units of each task's norm.

    On a support S the gains <h_i, d> are equal: G_SS w = ν𝟙, i.e. C_SS (D w) = ν D⁻¹𝟙 with the
    cosine matrix C; the optimality test <u_j, d> ≥ ‖d‖²/‖h_j‖ is relative to each task's scale.
    """
    norms = np.linalg.norm(h, axis=1)
    units = h / norms[:, None]
    best, best_norm = None, np.inf
    for size in range(1, len(h) + 1):
        for support in itertools.combinations(range(len(h)), size):
            s = list(support)
            cosine = units[s] @ units[s].T
            if np.linalg.cond(cosine) > 1e10:
                continue
            w = np.zeros(len(h))
            w[s] = np.linalg.solve(cosine, 1.0 / norms[s]) / norms[s]
            if np.any(w < 0):
                continue
            w /= w.sum()
            d = w @ h
            d_norm = np.linalg.norm(d)
            if np.all(units @ d >= d_norm**2 / norms - 1e-9 * d_norm) and d_norm < best_norm:
                best, best_norm = w, d_norm
    assert best is not None
    return best


def _project_onto_halfspaces(v, rows, bounds=None):
    """argmin ‖d − v‖ s.t. <a_j, d> ≥ b_j for unit rows a_j, by enumeration of active sets
    (d = v + Σ_{j∈S} ν_j a_j with ν ≥ 0 and the constraints of S tight)."""
    bounds = np.zeros(len(rows)) if bounds is None else bounds
    if np.all(rows @ v >= bounds - 1e-12 * np.linalg.norm(v)):
        return v
    best, best_distance = None, np.inf
    for size in range(1, len(rows) + 1):
        for support in itertools.combinations(range(len(rows)), size):
            s = list(support)
            cosine = rows[s] @ rows[s].T
            if np.linalg.cond(cosine) > 1e10:
                continue
            nu = np.linalg.solve(cosine, bounds[s] - rows[s] @ v)
            d = v + nu @ rows[s]
            scale = np.linalg.norm(v) + np.linalg.norm(d)
            feasible = np.all(rows @ d >= bounds - 1e-9 * scale)
            if np.all(nu >= 0) and feasible and np.linalg.norm(d - v) < best_distance:
                best, best_distance = d, np.linalg.norm(d - v)
    assert best is not None
    return best


def _dual_cone(h):
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def _upgrad_reference(h):
    return np.mean([_project_onto_halfspaces(g, _dual_cone(h)) for g in h], axis=0)


def _dualproj_reference(h):
    return _project_onto_halfspaces(h.mean(axis=0), _dual_cone(h))


def _equilibrated_root(h, right_hand_side, derivative, start):
    """Solves Cv = r(v), v > 0 (C the cosine matrix), by Newton steps halved until the residual
    falls and v stays positive; returns Σ v_i u_i."""
    units = _dual_cone(h)
    cosine = units @ units.T

    def residual(v):
        return cosine @ v - right_hand_side(v)

    v = start
    for _ in range(200):
        current = np.linalg.norm(residual(v))
        if current <= 1e-14 * np.linalg.norm(v):
            break
        step = np.linalg.solve(cosine - np.diag(derivative(v)), residual(v))
        size = 1.0
        while size > 1e-12 and (
            np.any(v - size * step <= 0)
            or np.linalg.norm(residual(v - size * step)) > (1 - 1e-4 * size) * current
        ):
            size /= 2
        v = v - size * step
    assert np.linalg.norm(residual(v)) <= 1e-13 * np.linalg.norm(v)
    return v @ units


def _nash_reference(h):
    """Gα = 1/α is Cβ = 1/β with β_i = ‖h_i‖α_i; the update Σ α_i h_i = Σ β_i u_i."""
    return _equilibrated_root(h, lambda v: 1.0 / v, lambda v: -1.0 / v**2, np.ones(len(h)))


def _fairgrad_reference(h, alpha=0.5):
    """Gw = w^(−1/α) is Cv = c ⊙ v^(−1/α) with v_i = ‖h_i‖w_i, c_i = ‖h_i‖^(1/α − 1); the
    update K Σ w_i h_i = K Σ v_i u_i."""
    norms = np.linalg.norm(h, axis=1)
    gains = norms ** (1 / alpha - 1)
    return len(h) * _equilibrated_root(
        h,
        lambda v: gains * v ** (-1 / alpha),
        lambda v: -gains / alpha * v ** (-1 / alpha - 1),
        gains ** (alpha / (alpha + 1)),  # the solution for orthogonal gradients
    )


def _jacobi_singular(x, sweeps=30):
    """Singular values and right singular vectors by one-sided Jacobi rotations (relatively
    accurate for a matrix whose columns are graded)."""
    x, v = x.copy(), np.eye(x.shape[1])
    for _ in range(sweeps):
        for p, q in itertools.combinations(range(x.shape[1]), 2):
            a, b, c = x[:, p] @ x[:, p], x[:, q] @ x[:, q], x[:, p] @ x[:, q]
            if c == 0:
                continue
            zeta = (b - a) / (2 * c)
            t = np.copysign(1.0, zeta) / (abs(zeta) + np.hypot(1.0, zeta))
            cos, sin = 1 / np.sqrt(1 + t * t), t / np.sqrt(1 + t * t)
            rotation = np.array([[cos, sin], [-sin, cos]])
            x[:, [p, q]] = x[:, [p, q]] @ rotation
            v[:, [p, q]] = v[:, [p, q]] @ rotation
    return np.linalg.norm(x, axis=0), v


def _aligned_mtl_reference(h):
    """σ_min·U Vᵀ𝟙 for H = [h_i] = U S Vᵀ (full rank here), S and V from Jacobi rotations on H
    itself (columns graded by the task norms)."""
    singular, right = _jacobi_singular(h.T.copy())
    return singular.min() * (h.T @ right / singular) @ right.T @ np.ones(len(h))


def _mmpareto_reference(h, gamma=1.5):
    """The official rule on one leaf; min-norm point of two tasks by the official closed form."""
    joint = h.sum(axis=0)
    gram = h @ h.T
    if np.all(gram[~np.eye(len(h), dtype=bool)] > 0):
        direction = joint
    elif len(h) == 2:
        v11, v12, v22 = gram[0, 0], gram[0, 1], gram[1, 1]
        weight = official_min_norm_of_two(v11, v12, v22)
        # The second weight as (v11 − v12) / spread: 1 − weight cancels when the norms are far
        # apart (the weight is then within ulps of 1).
        clipped = v12 >= v11 or v12 >= v22  # the official 0.999 / 0.001
        complement = 1 - weight if clipped else (v11 - v12) / (v11 + v22 - 2 * v12)
        direction = 2 * np.array([weight, complement]) @ h
    else:
        direction = len(h) * _min_norm_graded(h) @ h
    return gamma * max(np.linalg.norm(joint) / np.linalg.norm(direction), 1.0) * direction


def _pcd_reference(h, tau=0.02, eps=1e-8):
    """The first step of torchjd's PCD: gradients scaled by 1/sqrt(‖g_i‖² + ε), task 1 projected
    onto {d : <g̃_j, d> ≥ τ‖g̃_j‖²}, rescaled to ‖g_1‖."""
    scaled = h / np.sqrt(np.sum(h**2, axis=1, keepdims=True) + eps)
    rows = scaled[1:] / np.linalg.norm(scaled[1:], axis=1, keepdims=True)
    direction = _project_onto_halfspaces(scaled[0], rows, tau * np.linalg.norm(scaled[1:], axis=1))
    return direction * np.linalg.norm(h[0]) / np.linalg.norm(direction)


def _task_order(state):
    return np.asarray(state.method_state.task_order)


# Every Gram-based method of the registry: its factory, and its update by an independent
# float64 NumPy reference, from the gradients h (K, D) and the method's state after the update
# (PCGrad and GradVac draw the order in which the tasks meet).
SPREAD_METHODS = {
    "linear": (cg.linear_scalarization, lambda h, state: h.sum(axis=0)),
    "camegrad": (lambda: cg.camegrad(0.5, 1.5, 0.2), lambda h, state: _camegrad_reference(h)),
    "camegrad_apg": (
        lambda: cg.camegrad(0.4, 1.2, 0.3, solver="apg"),
        lambda h, state: _camegrad_reference(h, 0.4, 1.2, 0.3),
    ),
    "cagrad": (lambda: cg.cagrad(0.4), lambda h, state: _cagrad_reference(h)),
    "pcgrad": (cg.pcgrad, lambda h, state: numpy_pcgrad(h, _task_order(state))),
    "mgda": (cg.mgda, lambda h, state: _min_norm_graded(h) @ h),
    "mgda_l2": (
        lambda: cg.mgda(normalization="l2"),
        lambda h, state: _min_norm_graded(_dual_cone(h)) @ h,
    ),
    "cr_mogm": (cg.cr_mogm, lambda h, state: _min_norm_graded(h) @ h),  # first step: MGDA's
    "imtl_g": (cg.imtl_g, lambda h, state: numpy_imtl_g(h)),
    "nash_mtl": (lambda: cg.nash_mtl(max_norm=0.0), lambda h, state: _nash_reference(h)),
    "fairgrad": (lambda: cg.fairgrad(0.5), lambda h, state: _fairgrad_reference(h)),
    "sdmgrad": (
        cg.sdmgrad,
        lambda h, state: sdmgrad_run(h[None], 0.3, 20, learning_rate=None)[0][0],
    ),
    "modo": (cg.modo, lambda h, state: modo_run(h[None], 0.1, 0.0)[0][0]),
    "aligned_mtl": (cg.aligned_mtl, lambda h, state: _aligned_mtl_reference(h)),
    "upgrad": (cg.upgrad, lambda h, state: _upgrad_reference(h)),
    "dualproj": (cg.dualproj, lambda h, state: _dualproj_reference(h)),
    "mmpareto": (cg.mmpareto, lambda h, state: _mmpareto_reference(h)),
    "config": (cg.config, lambda h, state: numpy_config(h)),
    "gradvac": (
        cg.gradvac,
        lambda h, state: numpy_gradvac(
            h, [np.arange(h.shape[1])], np.zeros((1, len(h), len(h))), _task_order(state), 0.01
        )[0],
    ),
    "krum": (lambda: cg.krum(n_byzantine=0), lambda h, state: numpy_krum(h, 0, 1)),
    "pcd": (cg.pcd, lambda h, state: _pcd_reference(h)),
}


# The default run: 8 problems per method at one K, in one compiled batch that the common-scale
# test shares. K cycles over 2..8 (Krum needs 3) so that the suite meets every size; the slow
# run covers K = 2..8 for every method.
_DEFAULT_TASKS = {name: 2 + index % 7 for index, name in enumerate(SPREAD_METHODS)}
_DEFAULT_TASKS["krum"] = max(_DEFAULT_TASKS["krum"], 3)


def test_every_gram_based_method_of_the_registry_is_covered():
    # Variants of a row (CAME-Grad's ablations) run its Stage 1 and are covered by it.
    rows = cg.registered_methods(kinds=("gram",))
    assert {row.name for row in rows if row.variant_of is None} <= set(SPREAD_METHODS)


def _errors(name, problems, dtype):
    reference = SPREAD_METHODS[name][1]
    updates, states = _batched_updates(name, jnp.asarray(problems, dtype))
    errors = []
    for index, (h, update) in enumerate(zip(problems, updates, strict=True)):
        state = jax.tree.map(lambda x, index=index: x[index], states)
        expected = reference(h, state)
        errors.append(np.linalg.norm(update - expected) / np.linalg.norm(expected))
    return np.array(errors)


def _spread_batch(seed, count, num_tasks, spread_decades, dim=24):
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(count):
        decades = rng.uniform(0, spread_decades, size=num_tasks)
        decades[:2] = (0, spread_decades)  # the extremes are always there
        scales = 10.0 ** (decades - spread_decades / 2)
        problems.append(_conflicting(rng, num_tasks, dim) * scales[:, None])
    return np.stack(problems)


@pytest.mark.parametrize("name", SPREAD_METHODS)
def test_float32_within_1e_minus_3_of_float64_across_a_spread_of_1e6(name):
    num_tasks = _DEFAULT_TASKS[name]
    problems = _spread_batch(num_tasks, 8, num_tasks, spread_decades=6)
    errors = _errors(name, problems, jnp.float32)
    assert 0 < np.median(errors)  # float32 is compared, not the reference with itself
    assert errors.max() < 1e-3, (num_tasks, errors)


@pytest.mark.slow  # every K from 2 to 8, 6 problems each
@pytest.mark.parametrize("name", SPREAD_METHODS)
def test_float32_across_a_spread_of_1e6_for_every_number_of_tasks(name):
    for num_tasks in range(3 if name == "krum" else 2, 9):
        problems = _spread_batch(100 + num_tasks, 6, num_tasks, spread_decades=6)
        errors = _errors(name, problems, jnp.float32)
        assert errors.max() < 1e-3, (num_tasks, errors)


@pytest.mark.slow  # every K from 2 to 8, 3 problems each, in float64
@pytest.mark.parametrize("name", SPREAD_METHODS)
def test_float64_within_1e_minus_6_across_a_spread_of_1e12(name):
    with jax.enable_x64(True):
        for num_tasks in range(3 if name == "krum" else 2, 9):
            problems = _spread_batch(200 + num_tasks, 3, num_tasks, spread_decades=12)
            errors = _errors(name, problems, jnp.float64)
            assert errors.max() < 1e-6, (num_tasks, errors)
