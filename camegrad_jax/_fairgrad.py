r"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji, ICML 2024).

FairGrad chooses the update :math:`d = \sum_i w_i h_i` whose per-task improvements
:math:`\langle h_i, d\rangle` are α-fair: with G the Gram matrix of the task gradients, the
weights solve

.. math::

  G w = w^{-1/\alpha}, \qquad w > 0 ,

which is the stationarity condition of the strictly convex

.. math::

  f(w) = \tfrac12 w^\top G w - \textstyle\sum_i \phi(w_i), \qquad
  \phi(w) = \frac{w^{1 - 1/\alpha} - 1}{1 - 1/\alpha}
  \quad (\phi(w) = \log w \text{ at } \alpha = 1),

since :math:`\phi'(w) = w^{-1/\alpha}` and :math:`-\phi'' > 0`. It is solved here by Newton steps
on the K × K problem with a backtracking line search (the official code calls SciPy's
``least_squares`` on the host). At α = 1 this is Nash-MTL's fixed point.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)

# Halvings of the Newton step tried at once by the line search (vectorised, no inner loop).
_LINE_SEARCH_STEPS = 30
_ARMIJO = 1e-4


class FairGradState(NamedTuple):
    """FairGrad's own state (``MultiTaskState.method_state``)."""

    weights: jax.Array  # (K,) float32, w of the last solve on the h_i (before the factor K).
    normalised_weights: jax.Array  # (K,) float32, w on G / tr G: the next solve's warm start.
    solver_iterations: jax.Array  # () int32, Newton steps of the last solve.
    residual: jax.Array  # () float32, relative residual of the last solve (see `solve_fairgrad`).


class FairGradSolution(NamedTuple):
    weights: jax.Array  # (K,) w on the trace-normalised Gram matrix; 0 for zero gradients.
    iterations: jax.Array  # () int32.
    residual: jax.Array  # () relative residual of Cv = c ⊙ v^(−1/α), the equilibrated system.


def _potential(w: jax.Array, alpha: jax.Array) -> jax.Array:
    """φ(w) with φ'(w) = w^(−1/α): a Box–Cox power of w, log w at α = 1 (continuous in α)."""
    exponent = 1.0 - 1.0 / alpha
    log_w = jnp.log(w)
    is_log = exponent == 0
    return jnp.where(is_log, log_w, jnp.expm1(exponent * log_w) / jnp.where(is_log, 1.0, exponent))


def _objective(v: jax.Array, system: jax.Array, alpha: jax.Array, gains: jax.Array) -> jax.Array:
    return 0.5 * v @ system @ v - gains @ _potential(v, alpha)


def _residual(v: jax.Array, system: jax.Array, alpha: jax.Array, gains: jax.Array) -> jax.Array:
    return jnp.linalg.norm(system @ v - gains * jnp.exp(-jnp.log(v) / alpha))


def solve_fairgrad(
    gram: jax.Array, init: jax.Array, alpha: float | jax.Array, maxiter: int | jax.Array
) -> FairGradSolution:
    r"""Solves :math:`Gw = w^{-1/\alpha}`, w > 0, for a trace-normalised Gram matrix.

    Each Newton step on f (see the module docstring) is shortened so that no weight falls below
    half its value, then halved until f decreases by the Armijo fraction of the predicted
    decrease (or, at round-off where f no longer resolves the decrease, until the residual
    does). It stops when both the Newton decrement and the relative residual fall below √ε,
    when no step helps, or after ``maxiter`` steps. Tasks with a zero gradient (no solution:
    :math:`(Gw)_i = 0`) are left out and get w_i = 0. Where 0 lies in the convex hull of the
    gradients there is no solution either; w then grows and stays capped at 1/ε, so that
    everything remains finite. Weights are kept above ε^α (and above the square root of the
    smallest normal number), where w^(−1/α) and the Hessian stay in range. The Newton steps run
    on an equilibrated form of the system (see the comment in the code).

    Args:
      gram: (K, K) Gram matrix divided by its trace.
      init: (K,) positive warm start (ignored where the guess from the task norms is better).
      alpha: the fairness exponent α > 0 (may be traced).
      maxiter: cap on the Newton steps (may be traced).

    Returns:
      A :class:`FairGradSolution`; ``residual`` is measured on the returned weights.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._fairgrad import solve_fairgrad
      >>> orthogonal = jnp.diag(jnp.array([0.2, 0.8]))  # w_i = G_ii^(−α/(α+1))
      >>> solution = solve_fairgrad(orthogonal, jnp.ones(2), 2.0, 50)
      >>> [round(x, 4) for x in solution.weights.tolist()]
      [2.924, 1.1604]
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    eps = jnp.finfo(dtype).eps
    alpha = jnp.asarray(alpha, dtype)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    # A zero gradient, or one whose squared norm (trace G being 1) is below tiny/ε, where its
    # Gram entries lose precision to underflow; not relative to the largest norm (see below).
    active = norms > jnp.sqrt(jnp.finfo(dtype).tiny / eps)
    both = active[:, None] & active[None, :]
    safe_norms = jnp.where(active, norms, 1.0)
    # Equilibrated: with the cosine matrix C = D⁻¹GD⁻¹ (D = diag ‖h_i‖) and v = Dw, the system
    # Gw = w^(−1/α) is exactly Cv = c ⊙ v^(−1/α) with c_i = ‖h_i‖^(1/α − 1), the stationarity
    # condition of ½vᵀCv − Σ_i c_i φ(v_i). Newton steps on it do not lose the tasks whose
    # gradients are orders of magnitude smaller than the others' (on G they would be solved to
    # a relative accuracy of spread²·ε).
    inverse_norms = jnp.where(active, 1.0 / safe_norms, 0.0)
    cosine = gram * inverse_norms[:, None] * inverse_norms[None, :]
    # Inactive tasks get the decoupled equation v_i = v_i^(−1/α) (v_i = 1), zeroed at the end.
    system = jnp.where(both, cosine, jnp.eye(num_tasks, dtype=dtype))
    gains = jnp.where(active, safe_norms ** (1.0 / alpha - 1.0), 1.0)
    # w = v/‖h‖ stays where w^(−1/α) is below 1/ε and the Hessian within float range.
    lower = safe_norms * jnp.maximum(eps**alpha, jnp.sqrt(jnp.finfo(dtype).tiny))
    upper = safe_norms / eps
    # Orthogonal gradients give w_i = G_ii^(−α/(α+1)) exactly, i.e. v_i = ‖h_i‖^((1−α)/(1+α)).
    guess = jnp.where(active, safe_norms ** ((1.0 - alpha) / (1.0 + alpha)), 1.0)
    guess = jnp.clip(guess, lower, upper)
    init = jnp.where(active, init * norms, init)
    init = jnp.clip(jnp.where(jnp.isfinite(init) & (init > 0), init, guess), lower, upper)
    start = jnp.where(
        _objective(init, system, alpha, gains) < _objective(guess, system, alpha, gains),
        init,
        guess,
    )
    tol = jnp.sqrt(eps)
    halvings = 0.5 ** jnp.arange(_LINE_SEARCH_STEPS, dtype=dtype)

    def relative_residual(w):
        return _residual(w, system, alpha, gains) / jnp.linalg.norm(
            gains * jnp.exp(-jnp.log(w) / alpha)
        )

    def keep_going(carry):
        # A small decrement alone can hide a poorly met equation of a task whose weight is tiny
        # (its Hessian entry w^(−1/α) / (α w) is huge): the residual must be small too.
        w, iteration, decrement, moved = carry
        unresolved = (decrement > tol) | (relative_residual(w) > tol)
        return (iteration < maxiter) & unresolved & moved

    def newton_step(carry):
        w, iteration, _, _ = carry
        inverse_power = gains * jnp.exp(-jnp.log(w) / alpha)
        gradient = system @ w - inverse_power
        hessian = system + jnp.diag(inverse_power / (alpha * w))
        delta = -jnp.linalg.solve(hessian, gradient)
        slope = gradient @ delta
        decrement = jnp.sqrt(jnp.maximum(-slope, 0.0))
        # Fraction to the boundary: no weight loses more than half its value in one step.
        shrinking = delta < 0
        room = jnp.where(shrinking, -0.5 * w / jnp.where(shrinking, delta, -1.0), 1.0)
        steps = jnp.minimum(jnp.min(room), 1.0) * halvings
        candidates = jnp.clip(w + steps[:, None] * delta, lower, upper)
        values = jax.vmap(_objective, in_axes=(0, None, None, None))(
            candidates, system, alpha, gains
        )
        residuals = jax.vmap(_residual, in_axes=(0, None, None, None))(
            candidates, system, alpha, gains
        )
        decreases = (values <= _objective(w, system, alpha, gains) + _ARMIJO * steps * slope) | (
            residuals <= (1.0 - _ARMIJO * steps) * _residual(w, system, alpha, gains)
        )
        moved = jnp.any(decreases)
        w = jnp.where(moved, candidates[jnp.argmax(decreases)], w)
        return w, iteration + 1, decrement, moved

    weights, iterations, _, _ = lax.while_loop(
        keep_going,
        newton_step,
        (
            start.astype(dtype),
            jnp.asarray(0, jnp.int32),
            jnp.asarray(jnp.inf, dtype),
            jnp.asarray(True),
        ),
    )
    residual = relative_residual(weights)
    return FairGradSolution(weights * inverse_norms, iterations, residual)


def fairgrad_weighting(*, alpha: float = 1.0, solver_maxiter: int = 50) -> Weighting:
    """FairGrad's :class:`~camegrad_jax.Weighting` (see :func:`fairgrad`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> FairGradState:
        return FairGradState(
            weights=jnp.ones((k,), jnp.float32),
            normalised_weights=jnp.ones((k,), jnp.float32),
            solver_iterations=jnp.zeros((), jnp.int32),
            residual=jnp.zeros((), jnp.float32),
        )

    def weighting(gram, state: FairGradState, weights, **extra_args) -> WeightingResult:
        del extra_args
        dtype = gram.dtype
        num_tasks_ = gram.shape[0]
        alpha_ = jnp.asarray(alpha, dtype)
        normalised, trace = _gram.trace_normalise(_gram.weighted_gram(gram, weights))
        solution = solve_fairgrad(
            normalised, state.normalised_weights.astype(dtype), alpha_, solver_maxiter
        )
        # Gw = w^(−1/α) on tr(G)·Ĝ is solved by w = ŵ · tr(G)^(−α/(α+1)).
        trace = jnp.where(trace > 0, trace, 1.0)
        fair_weights = solution.weights * trace ** (-alpha_ / (alpha_ + 1.0))
        new_state = FairGradState(
            weights=fair_weights,
            normalised_weights=jnp.where(solution.weights > 0, solution.weights, 1.0),
            solver_iterations=solution.iterations,
            residual=solution.residual,
        )
        coefficients = num_tasks_ * fair_weights * weights
        coefficients, new_state = _gram.guard_non_finite(gram, coefficients, new_state, state)
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def fairgrad(
    alpha: float = 1.0,
    *,
    solver_maxiter: int = 50,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""FairGrad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` and their Gram matrix G, FairGrad's
    update is

    .. math::

      g = K \sum_i w_i h_i, \qquad G w = w^{-1/\alpha},\ w > 0
      \quad (\text{i.e. } \langle h_i, \textstyle\sum_j w_j h_j\rangle = w_i^{-1/\alpha}),

    the factor K (the number of tasks) being the official code's, "to match the sum loss". α
    sets the fairness: α → 0 approaches equal weights on unit improvements (utilitarian),
    α = 1 is proportional fairness (Nash-MTL's direction), and α → ∞ max-min fairness. When all
    gradients are scaled by s the update scales by :math:`s^{(1-\alpha)/(1+\alpha)}`; it does
    not depend on the order of the tasks. The weights themselves scale as
    :math:`s^{-2\alpha/(\alpha+1)}`, so in float32 (largest value ~2^128) gradient norms must stay
    above about :math:`2^{-64(\alpha+1)/\alpha}` (~1e-19 for large α) for w to be representable.

    Deviations from the official code (https://github.com/OptMN-Lab/fairgrad), each deliberate:

    * w solves :math:`Gw = w^{-1/\alpha}` to round-off inside ``jit`` by Newton steps with a
      line search on a strictly convex objective (see :func:`solve_fairgrad`), warm-started
      from the previous step's w, instead of SciPy's ``least_squares`` from w = 1/K on the
      host; the relative residual is kept in the state (``residual``).
    * A task with a zero gradient gets w_i = 0 (no positive solution exists; the official
      bounded least squares returns whatever it stopped at). Where 0 lies in the convex hull of
      the gradients (no solution) w stays finite.
    * The official ``backward`` clips the shared parameters' gradient norm (``max_norm = 1.0``);
      that belongs to the downstream optimizer here:
      ``optax.chain(fairgrad(alpha), optax.clip_by_global_norm(1.0), optax.adam(...))``.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      alpha: the fairness exponent α > 0 (official ``alpha``, default 1.0).
      solver_maxiter: cap on the Newton steps of one solve (a positive integer).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`FairGradState` as ``method_state``
      (``coefficients`` = K w ⊙ λ).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.fairgrad(alpha=2.0, num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # w_i = ‖h_i‖^(−4/3): improvements w_i^(−1/2) = 1 and 4^(2/3)
      Array([2.      , 1.259921], dtype=float32)

    References:
      Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024.
      https://arxiv.org/abs/2402.15638
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_positive(alpha, "alpha"),
        _validation.check_positive_int(solver_maxiter, "solver_maxiter"),
    )

    alpha_value = jnp.asarray(alpha) if _validation.is_traced(alpha) else float(alpha)
    return stacked_gradient_transformation(
        fairgrad_weighting(alpha=alpha, solver_maxiter=solver_maxiter),
        name="fairgrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
        gram_homogeneity=-alpha_value / (alpha_value + 1.0),  # Gw = w^(−1/α).
    )
