r"""Stage 1's dual problem: the conflict-averse weights on the simplex.

Given the Gram matrix G of the (weighted) task gradients, the conflict-averse direction of
CAGrad (Liu et al., 2021) is found through the dual

.. math::

  w^\star = \arg\min_{w \in \Delta_K} \; w^\top G b + r \sqrt{w^\top G w},
  \qquad b = \tfrac{1}{K}\mathbb{1}, \quad r = c \, \|g_0\| = c \sqrt{b^\top G b}.

Every function here expects G already divided by its trace, so tolerances and the guard
:math:`\varepsilon` inside the square root do not depend on the gradients' scale. The gradient of
the dual objective is :math:`G\delta` with :math:`\delta = b + r w / \|g_w\|`: entry i is the
improvement :math:`\langle h_i, d\rangle` that the recovered direction d gives task i, which is
why the dual residual and the primal value can both be read off G.

Two iterative solvers and one loop-free solver are offered and must agree:

* ``"jaxopt"``: jaxopt's ``ProjectedGradient`` with ``projection_simplex`` (FISTA with a
  backtracking line search). jaxopt is unmaintained and warns on import; it is imported lazily
  with that warning silenced, so ``import camegrad_jax`` stays clean.
* ``"apg"``: our own accelerated projected gradient (FISTA with backtracking and adaptive
  restart) on ``optax.projections.projection_simplex``, with no jaxopt dependency.
* ``"enumerate"`` (K ≤ 8): the exact solve below on all 2^K − 1 supports at once, without any
  ``while`` loop (:mod:`camegrad_jax._enumerate_dual`), for accelerators, where a loop's
  predicate can cost a host round trip per iteration.

In float32 both stall about 1e-4 away from the optimum (the objective's differences fall below
float32 resolution long before the weights converge). A final *active-set polish* solves the
optimality conditions exactly on the support the iterations found, and is kept only when it
verifiably satisfies them. Everything runs inside ``jit`` and ``vmap``; there is no host callback.

The centre b is uniform for CAGrad. With ``centre = 0`` and ``r = 1`` the objective is
:math:`\sqrt{w^\top G w}`: the same solvers, polish and certificate then give MGDA's min-norm
weights (Sener & Koltun, 2018), the limit of CAGrad as c grows.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from optax.projections import projection_simplex

from camegrad_jax import _gram, _validation
from camegrad_jax._cone import MAX_TASKS_ALL_SUPPORTS, project_onto_dual_cone
from camegrad_jax._diagnostics import quadratic_norm

Solver = Literal["jaxopt", "apg", "enumerate"]
# Iterations between two attempts at the exact polish.
_ROUND = 10
SOLVERS: tuple[str, ...] = ("jaxopt", "apg", "enumerate")


class DualSolution(NamedTuple):
    """Result of Stage 1 on the trace-normalised Gram matrix."""

    weights: jax.Array  # (K,) dual weights w* on the simplex.
    direction_coefficients: jax.Array  # (K,) δ with d = Σ_i δ_i h_i.
    iterations: jax.Array  # () int32, iterations of the iterative solver.
    solver_error: jax.Array  # () the solver's residual (gradient-mapping norm; 0 once polished).
    duality_gap: jax.Array  # () dual objective − worst-case improvement of d; 0 at optimum.
    polished: jax.Array  # () bool, whether the active-set polish was accepted.


def check_solver_options(solver: Any, tol: Any, maxiter: Any) -> _validation.Verdict:
    """Validates a factory's `solver`, `solver_tol` and `solver_maxiter` arguments."""
    _validation.check_choice(solver, SOLVERS, "solver")
    tol_ok = True if tol is None else _validation.check_positive(tol, "solver_tol")
    return _validation.all_valid(tol_ok, _validation.check_positive_int(maxiter, "solver_maxiter"))


def default_tolerance(dtype: jnp.dtype) -> float:
    # The polish finishes the job, so the iterations only need to find the active set.
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def _sqrt_guard(dtype: jnp.dtype) -> jax.Array:
    # ε inside the square root, relative to the trace-normalised scale (trace(G) = 1).
    return jnp.asarray(jnp.finfo(dtype).eps ** 2, dtype)


def _centre(gram: jax.Array, centre: jax.Array | None) -> jax.Array:
    """b, uniform unless given."""
    num_tasks = gram.shape[0]
    if centre is None:
        return jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype)
    return centre.astype(gram.dtype)


def _centre_gain(gram: jax.Array, centre: jax.Array | None) -> jax.Array:
    """G b: entry i is <h_i, g0>."""
    return jnp.mean(gram, axis=1) if centre is None else gram @ centre.astype(gram.dtype)


def dual_objective(
    weights: jax.Array, gram: jax.Array, radius: jax.Array, centre: jax.Array | None = None
) -> jax.Array:
    """wᵀGb + r·sqrt(wᵀGw + ε) for a trace-normalised Gram matrix (b uniform unless given)."""
    quadratic = weights @ gram @ weights
    return weights @ _centre_gain(gram, centre) + radius * jnp.sqrt(
        jnp.maximum(quadratic, 0) + _sqrt_guard(gram.dtype)
    )


def _project(x: jax.Array) -> jax.Array:
    # optax's projection can promote float32 to float64 when x64 is on; keep the input dtype.
    return projection_simplex(x).astype(x.dtype)


class _Iteration(NamedTuple):
    """An iterative solver as init/step, so that rounds of steps can alternate with the polish."""

    init: Callable[[jax.Array], Any]  # weights -> solver state
    step: Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # (weights, state) -> next
    error: Callable[[Any], jax.Array]  # state -> residual


def _jaxopt_iteration(
    gram: jax.Array, radius: jax.Array, tol: float, centre: jax.Array | None
) -> _Iteration:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt
    solver = jaxopt.ProjectedGradient(
        fun=dual_objective,
        projection=jaxopt.projection.projection_simplex,
        tol=tol,
        # Without acceleration: with FISTA's momentum jaxopt's stopping test ‖x_{k+1} − x_k‖ can
        # read exactly 0 at a vertex that is not optimal (seen here), and the run stops early.
        acceleration=False,
        implicit_diff=False,
    )

    def step(weights, state):
        weights, state = solver.update(weights, state, None, gram, radius, centre)
        return weights.astype(gram.dtype), state

    return _Iteration(
        init=lambda weights: solver.init_state(weights, None, gram, radius, centre),
        step=step,
        error=lambda state: state.error.astype(gram.dtype),
    )


class _APGState(NamedTuple):
    previous: jax.Array  # x_{k-1}
    extrapolated: jax.Array  # y_k
    momentum: jax.Array  # t_k
    lipschitz: jax.Array  # current curvature estimate (inverse step size)
    error: jax.Array  # gradient-mapping norm of the last step


def _apg_iteration(
    gram: jax.Array,
    radius: jax.Array,
    tol: float,
    centre: jax.Array | None,
    max_backtracks: int = 30,
) -> _Iteration:
    """FISTA with backtracking (Beck & Teboulle, 2009) and gradient restart (O'Donoghue, 2015)."""
    del tol  # The caller tests the residual.
    dtype = gram.dtype
    value_and_grad = jax.value_and_grad(dual_objective)
    # Slack for float round-off in the sufficient-decrease test, or backtracking never ends.
    slack = 10 * jnp.finfo(dtype).eps

    def init(weights):
        return _APGState(
            previous=weights,
            extrapolated=weights,
            momentum=jnp.asarray(1.0, dtype),
            lipschitz=jnp.asarray(1.0, dtype),
            error=jnp.asarray(jnp.inf, dtype),
        )

    def step(weights, state: _APGState):
        y = state.extrapolated
        f_y, g_y = value_and_grad(y, gram, radius, centre)

        def try_step(lipschitz):
            candidate = _project(y - g_y / lipschitz)
            diff = candidate - y
            model = f_y + g_y @ diff + 0.5 * lipschitz * (diff @ diff)
            f_candidate = dual_objective(candidate, gram, radius, centre)
            return candidate, f_candidate > model + slack * jnp.abs(f_y)

        # The decrease test is computed once per candidate and carried: under `vmap`, a test
        # recomputed in the loop condition can disagree with its twin that selects the batch
        # elements to update (float round-off), and the loop then never ends.
        def keep_backtracking(carry):
            _, _, insufficient, count = carry
            return insufficient & (count < max_backtracks)

        def backtrack(carry):
            lipschitz, _, _, count = carry
            lipschitz = 2 * lipschitz
            return (lipschitz, *try_step(lipschitz), count + 1)

        lipschitz, x_new, _, _ = lax.while_loop(
            keep_backtracking,
            backtrack,
            (state.lipschitz, *try_step(state.lipschitz), jnp.asarray(0)),
        )
        error = lipschitz * jnp.linalg.norm(x_new - y)
        # Restart the momentum when it points uphill.
        restart = (y - x_new) @ (x_new - weights) > 0
        momentum = jnp.where(restart, 1.0, state.momentum).astype(dtype)
        next_momentum = 0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2))
        extrapolation = jnp.where(restart, 0.0, (momentum - 1) / next_momentum)
        return x_new, _APGState(
            previous=weights,
            extrapolated=(x_new + extrapolation * (x_new - weights)).astype(dtype),
            momentum=next_momentum.astype(dtype),
            # Let the step grow again: the curvature is highest near g_w = 0 and smaller elsewhere.
            lipschitz=(0.9 * lipschitz).astype(dtype),
            error=error.astype(dtype),
        )

    return _Iteration(init=init, step=step, error=lambda state: state.error)


def _closed_form_direction(weights, gram, radius, centre):
    """δ = b + r·w/‖g_w‖, the primal recovery (Eq. 10), with d = Σ_i δ_i h_i.

    Where g_w vanishes to round-off (trace(G) = 1), r/‖g_w‖ would only amplify noise: d = g0
    then, as in the reference CAGrad code, and `_prefer_nearest_non_conflicting` decides.
    """
    norm_sq = weights @ gram @ weights
    # ‖g_w‖² read off G carries round-off of about eps·(Σ_i w_i‖h_i‖)²: relative to that, not
    # to trace(G), so that a task whose gradient is 1e6 times smaller than another's still
    # counts when w rests on it alone.
    reach = weights @ jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    degenerate = norm_sq <= 64 * jnp.finfo(gram.dtype).eps * reach**2
    scale = jnp.where(degenerate, 0.0, radius / jnp.sqrt(jnp.where(degenerate, 1.0, norm_sq)))
    return _centre(gram, centre) + scale * weights


def _prefer_nearest_non_conflicting(direction, gram, radius, centre, support=None, project=None):
    """Picks one optimum, the one nearest g0, where Stage 1's optimum is not unique.

    If the best worst-case improvement is 0 (0 lies in the convex hull of the gradients: a task
    with zero gradient, exactly opposite gradients with c ≥ 1, a Pareto-stationary point), every
    d of the trust region that conflicts with no task is optimal, and which one the iterations
    land on is an accident of convergence. We then take g0 projected onto {d : <h_i, d> ≥ 0},
    which is optimal whenever it lies in the trust region. ``project(gram, coefficients)`` is the
    projection onto that cone (default :func:`project_onto_dual_cone`).

    ``support``: the active set S of a polished (exact) direction, whose gains on S all equal the
    optimal value t. t is then read on the task of S with the smallest gradient, where it is
    resolved best: on a task with a gradient orders of magnitude larger, a small positive t is
    below the round-off of its gain.
    """
    project = project_onto_dual_cone if project is None else project
    eps = jnp.finfo(gram.dtype).eps
    gains = gram @ direction
    # Each gain against its own round-off, eps·Σ_j |G_ij δ_j|: a task with a tiny gradient has a
    # tiny gain that is still clearly positive.
    at_zero = jnp.any(gains <= 64 * eps * (jnp.abs(gram) @ jnp.abs(direction)))
    if support is not None:
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        finest = jnp.argmin(jnp.where(support, norms, jnp.inf))
        resolution = 64 * eps * norms[finest] * quadratic_norm(direction, gram)
        at_zero = jnp.where(jnp.any(support), gains[finest] <= resolution, at_zero)

    def nearest(_):
        b = _centre(gram, centre)
        projected = project(gram, b)
        offset = jnp.sqrt(jnp.maximum((projected - b) @ gram @ (projected - b), 0.0))
        inside = offset <= radius * (1 + 1e-4) + 64 * eps
        # Round-off can leave the projection a hair outside the region: pull it back in.
        shrink = jnp.where(offset > radius, radius / jnp.where(offset > 0, offset, 1.0), 1.0)
        return jnp.where(inside, b + shrink * (projected - b), direction)

    return lax.cond(at_zero, nearest, lambda _: direction, None)


def _polish(weights, gram, radius, centre):
    """Solves the optimality conditions exactly on the support of `weights`."""
    support = weights > jnp.finfo(gram.dtype).eps * jnp.max(weights)
    return polish_on_support(support, gram, radius, centre)


def polish_on_support(support, gram, radius, centre, tasks=None):
    """Solves the optimality conditions exactly on a given support S (a (K,) bool mask).

    On the support S, the improvements <h_i, d> equal a common value t and ‖d − g0‖ = r. With
    d = g0 + Σ z_i h_i: G_SS z_S = t𝟙 − (Gb)_S and zᵀGz = r², a quadratic in t. The result is
    accepted only if it is finite, z ≥ 0, no task outside S improves by less than t, and the
    linear system was actually solved (G_SS can be singular). ``tasks`` (a (K,) bool mask,
    default all) restricts the problem to a face of the simplex: the tasks outside it are left
    out of the test. Returns ``(valid, weights, direction)``.
    """
    dtype = gram.dtype
    eps = jnp.finfo(dtype).eps
    centre_gain = _centre_gain(gram, centre)  # (G b)_i = <h_i, g0>
    # Equilibrated: a task whose gradient is orders of magnitude smaller than the others' is
    # exactly the one Stage 1 must protect (see `_gram.restricted_pseudo_inverse`).
    pinv = _gram.restricted_pseudo_inverse(gram, support)
    ones = jnp.where(support, 1.0, 0.0).astype(dtype)
    a = pinv @ ones
    e = pinv @ jnp.where(support, centre_gain, 0.0)
    quad_a = ones @ a
    quad_b = ones @ e
    quad_c = e @ jnp.where(support, centre_gain, 0.0) - radius**2
    discriminant = quad_b**2 - quad_a * quad_c
    t = (quad_b + jnp.sqrt(jnp.maximum(discriminant, 0))) / jnp.where(quad_a > 0, quad_a, 1.0)
    z = jnp.where(support, t * a - e, 0.0)
    direction = _centre(gram, centre) + z
    gains = gram @ direction
    # Each task's own round-off: G_ij carries about eps·‖h_i‖‖h_j‖, so the gain (G δ)_i carries
    # eps·‖h_i‖·Σ_j ‖h_j‖|δ_j|, and z_j matters on the scale of ‖h_j‖. One tolerance for all
    # tasks (the largest) would let a wrong support pass for a task whose gradient is orders of
    # magnitude smaller than the others', which is exactly the one Stage 1 must protect.
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    reach = 64 * eps * (norms @ jnp.abs(direction))
    gain_tolerance = norms * reach
    considered = jnp.ones_like(support) if tasks is None else tasks
    residual = jnp.where(support, gains - t, 0.0)
    valid = (
        (quad_a > 0)
        & (discriminant >= 0)
        & jnp.all(jnp.isfinite(z))
        & jnp.all(z * norms >= -reach)
        & jnp.all(jnp.abs(residual) <= gain_tolerance)
        & jnp.all(jnp.where(support | ~considered, True, gains >= t - gain_tolerance))
        & (jnp.sum(z) > 0)
    )
    z = jnp.maximum(z, 0)
    polished_weights = z / jnp.where(jnp.sum(z) > 0, jnp.sum(z), 1.0)
    return valid, polished_weights, direction


def every_support(num_tasks: int, with_empty: bool = False) -> jax.Array:
    """(2^K − 1, K) bool: every non-empty subset of the K tasks (and the empty one if asked)."""
    codes = np.arange(0 if with_empty else 1, 2**num_tasks)
    return jnp.asarray((codes[:, None] >> np.arange(num_tasks)) & 1, bool)


def _polish_every_support(gram, radius, centre):
    """The polish on all 2^K − 1 supports at once; of the verified ones, the best worst gain.

    The iterations can miss the optimal support when the tasks' gradient norms differ by orders
    of magnitude (the dual is then badly conditioned in w), while the equilibrated polish of
    the right support is exact: a verified support satisfies the optimality conditions, so any
    one of them is optimal, and the best worst-case gain only arbitrates round-off.
    """
    valid, weights, directions = jax.vmap(
        lambda support: polish_on_support(support, gram, radius, centre)
    )(every_support(gram.shape[0]))
    worst_gains = jnp.min(directions @ gram, axis=1)
    best = jnp.argmax(jnp.where(valid, worst_gains, -jnp.inf))
    return valid[best], weights[best], directions[best]


def _duality_gap(weights, direction, gram, radius, centre):
    worst_gain = jnp.min(gram @ direction)
    return dual_objective(weights, gram, radius, centre) - worst_gain


@functools.partial(jax.jit, static_argnames=("solver", "polish"))
def solve_dual(
    gram: jax.Array,
    radius: jax.Array,
    init: jax.Array,
    *,
    solver: Solver = "jaxopt",
    tol: float | jax.Array | None = None,
    maxiter: int | jax.Array = 200,
    polish: bool = True,
    centre: jax.Array | None = None,
) -> DualSolution:
    """Solves Stage 1's dual for a trace-normalised Gram matrix.

    Args:
      gram: (K, K) Gram matrix of the weighted task gradients divided by its trace.
      radius: r = c·‖g0‖ on the same normalised scale.
      init: (K,) starting weights on the simplex (the previous step's w* for a warm start).
      solver: ``"jaxopt"`` (jaxopt ``ProjectedGradient``), ``"apg"`` (jaxopt-free FISTA) or
        ``"enumerate"`` (loop-free, K ≤ 8: every support's exact solve in one batch; ``tol``,
        ``maxiter``, ``polish`` and ``init`` then play no part, see
        :func:`camegrad_jax._enumerate_dual.solve_by_enumeration`).
      tol: stopping tolerance on the gradient-mapping norm; default by dtype.
      maxiter: iteration cap of the iterative solver.
      polish: finish with the exact active-set solve when it verifiably holds.
      centre: (K,) the centre b, on the simplex or 0 (default uniform, CAGrad's g0). With
        ``centre = 0`` and ``radius = 1`` the weights are MGDA's min-norm weights and the
        direction is the min-norm point divided by its norm.

    Returns:
      A :class:`DualSolution`.

    Examples:
      MGDA's min-norm point of h_1 = (1, 0) and h_2 = (0, 3) weighs them 9 : 1:

      >>> import jax.numpy as jnp
      >>> from camegrad_jax import solve_dual
      >>> gram = jnp.diag(jnp.array([1.0, 9.0])) / 10.0
      >>> solution = solve_dual(gram, 1.0, jnp.full(2, 0.5), solver="apg", centre=jnp.zeros(2))
      >>> [round(w, 4) for w in solution.weights.tolist()], bool(solution.polished)
      ([0.9, 0.1], True)
    """
    _validation.check_choice(solver, SOLVERS, "solver")
    if solver == "enumerate":
        from camegrad_jax import _enumerate_dual  # It builds on this module's polish.

        return _enumerate_dual.solve_by_enumeration(gram, radius, init, centre)
    dtype = gram.dtype
    # tol and maxiter may be traced (optax.inject_hyperparams passes numbers as arrays).
    tol = jnp.asarray(default_tolerance(dtype) if tol is None else tol, dtype)
    maxiter = jnp.asarray(maxiter, jnp.int32)
    init = _project(init.astype(dtype))
    radius = jnp.asarray(radius, dtype)
    make_iteration = _jaxopt_iteration if solver == "jaxopt" else _apg_iteration

    def rectify(_):
        iteration = make_iteration(gram, radius, tol, centre)

        def run_steps(weights, state, iterations, budget):
            def keep_going(carry):
                _, state, count = carry
                return (count < budget) & (iteration.error(state) > tol)

            def one_step(carry):
                weights, state, count = carry
                return (*iteration.step(weights, state), count + 1)

            weights, state, count = lax.while_loop(
                keep_going, one_step, (weights, state, jnp.asarray(0, jnp.int32))
            )
            return weights, state, iterations + count

        if not polish:
            weights, state, iterations = run_steps(
                init, iteration.init(init), jnp.asarray(0, jnp.int32), maxiter
            )
            direction = _closed_form_direction(weights, gram, radius, centre)
            direction = _prefer_nearest_non_conflicting(direction, gram, radius, centre)
            return weights, direction, iterations, iteration.error(state), jnp.asarray(False)

        # Iterate in rounds and try the exact polish after each: once the iterates sit on the
        # optimal support the polish certifies the optimum, usually long before the iterative
        # residual reaches `tol`. The first round takes no step, so a warm start on the last
        # step's support often needs no iteration at all (and the polish is compiled once).
        def another_round(carry):
            _, state, iterations, valid, _, _, started = carry
            more = (iteration.error(state) > tol) & (iterations < maxiter)
            return ~valid & (~started | more)

        def round_(carry):
            weights, state, iterations, _, _, _, started = carry
            budget = jnp.where(started, jnp.minimum(_ROUND, maxiter - iterations), 0)
            weights, state, iterations = run_steps(weights, state, iterations, budget)
            return (weights, state, iterations, *_polish(weights, gram, radius, centre), True)

        start = (
            init,
            iteration.init(init),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(False),
            init,
            _centre(gram, centre),
            jnp.asarray(False),
        )
        weights, state, iterations, valid, exact_weights, exact_direction, _ = lax.while_loop(
            another_round, round_, start
        )
        if gram.shape[0] <= MAX_TASKS_ALL_SUPPORTS:
            valid, exact_weights, exact_direction = lax.cond(
                valid,
                lambda _: (valid, exact_weights, exact_direction),
                lambda _: _polish_every_support(gram, radius, centre),
                None,
            )
        weights = jnp.where(valid, exact_weights, weights)
        direction = jnp.where(
            valid, exact_direction, _closed_form_direction(weights, gram, radius, centre)
        )
        support = valid & (weights > 0)
        direction = _prefer_nearest_non_conflicting(direction, gram, radius, centre, support)
        error = jnp.where(valid, 0.0, iteration.error(state)).astype(dtype)
        return weights, direction, iterations, error, valid

    def centre_only(_):
        # r = 0: the trust region is the single point g0, so d = g0 whatever w is.
        return (
            init,
            _centre(gram, centre),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(0.0, dtype),
            jnp.asarray(False),
        )

    weights, direction, iterations, error, polished = lax.cond(
        radius > 0, rectify, centre_only, None
    )
    gap = jnp.where(radius > 0, _duality_gap(weights, direction, gram, radius, centre), 0.0)
    return DualSolution(
        weights=weights,
        direction_coefficients=direction,
        iterations=iterations,
        solver_error=error,
        duality_gap=gap.astype(dtype),
        polished=polished,
    )
