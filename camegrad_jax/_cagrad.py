r"""CAGrad: Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

CAGrad's direction is the conflict-averse direction of `_conflict_averse` (which CAME-Grad's
Stage 1 also calls: one solver, one polish, one warm start for both), followed by the official
code's rescaling. :func:`cagrad_weights` is its weighting of the Gram matrix.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camegrad_jax import _dual, _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._conflict_averse import conflict_averse_direction
from camegrad_jax._diagnostics import quadratic_norm

RESCALES: tuple[int, ...] = (0, 1, 2)


class CAGradState(NamedTuple):
    """CAGrad's own state (``MultiTaskState.method_state``)."""

    dual_weights: jax.Array  # (K,) float32, w* of the last step; warm start of the next solve.
    direction_norm: jax.Array  # () float32, ‖d‖ before rescaling.
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () float32, the iterative solver's residual.
    duality_gap: jax.Array  # () float32, certified sub-optimality (relative to tr G).


def _check_rescale(rescale: Any) -> None:
    if _validation.is_traced(rescale):
        return
    if np.ndim(rescale) != 0:
        raise ValueError(f"Parameter `rescale` should be one of {RESCALES}. Found `{rescale!r}`.")
    _validation.check_choice(rescale, RESCALES, "rescale")


def _rescale_divisor(rescale: Any, c: jax.Array) -> jax.Array:
    # `rescale` may arrive as a traced integer (optax.inject_hyperparams): select, do not branch.
    rescale = jnp.asarray(rescale)
    return jnp.where(rescale == 0, 1.0, jnp.where(rescale == 1, 1.0 + c**2, 1.0 + c))


class CAGradWeights(NamedTuple):
    """CAGrad's K × K part: everything but the pass over the gradients."""

    coefficients: jax.Array  # (K,) on the raw gradients: the update is Σ_i coefficients_i g_i.
    dual_weights: jax.Array  # (K,) w* on the simplex.
    direction_norm: jax.Array  # () ‖d‖ before rescaling.
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () the iterative solver's residual.
    duality_gap: jax.Array  # () certified sub-optimality on the trace-normalised scale.


def cagrad_weights(
    gram: jax.Array,
    *,
    c: float | jax.Array = 0.5,
    rescale: int | jax.Array = 1,
    task_weights: Any = None,
    init_weights: jax.Array | None = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> CAGradWeights:
    r"""CAGrad's coefficients from the Gram matrix of the raw task gradients.

    The conflict-averse direction :math:`d = \sum_i \delta_i h_i` (see :func:`cagrad`) times
    K / (1 + c²) (``rescale=1``), K / (1 + c) (2) or K (0), in terms of the raw gradients.

    Args:
      gram: (K, K) matrix :math:`G_{ij} = \langle g_i, g_j\rangle` of the *unweighted* task
        gradients (the same convention as :func:`camegrad_weights`).
      c: the radius, ≥ 0.
      rescale: the official code's rescaling, 0, 1 or 2.
      task_weights: (K,) static weights λ (default all ones).
      init_weights: (K,) warm start for the dual (default uniform).
      solver, solver_tol, solver_maxiter: see :func:`camegrad_jax.solve_dual`.

    Returns:
      :class:`CAGradWeights`; a non-finite G gives NaN coefficients.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import cagrad_weights
      >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])
      >>> cagrad_weights(gram, c=0.0, rescale=0).coefficients  # c = 0: the sum of the gradients
      Array([1., 1.], dtype=float32)
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    weights = _validation.weights_vector(task_weights, num_tasks, dtype)
    # G / tr G: every tolerance is relative and the answer scale-equivariant.
    normalised, trace = _gram.trace_normalise(_gram.weighted_gram(gram, weights))
    scale = jnp.sqrt(jnp.where(trace > 0, trace, 0.0))
    c = jnp.asarray(c, dtype)
    if init_weights is None:
        init_weights = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    direction = conflict_averse_direction(
        normalised,
        c,
        init_weights,
        solver=solver,
        solver_tol=solver_tol,
        solver_maxiter=solver_maxiter,
    )
    # NaN or inf in G poisons the update, so that `optax.apply_if_finite` rejects the step.
    delta = jnp.where(jnp.all(jnp.isfinite(gram)), direction.coefficients, jnp.nan)
    return CAGradWeights(
        coefficients=delta * weights * (num_tasks / _rescale_divisor(rescale, c)),
        dual_weights=direction.dual_weights,
        direction_norm=quadratic_norm(direction.coefficients, normalised) * scale,
        solver_iterations=direction.solver_iterations,
        solver_error=direction.solver_error,
        duality_gap=direction.duality_gap,
    )


def cagrad_weighting(
    *,
    c: float = 0.5,
    rescale: int = 1,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> Weighting:
    """CAGrad's :class:`~camegrad_jax.Weighting` (see :func:`cagrad`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> CAGradState:
        return CAGradState(
            dual_weights=jnp.full((k,), 1.0 / k, jnp.float32),
            direction_norm=jnp.zeros((), jnp.float32),
            solver_iterations=jnp.zeros((), jnp.int32),
            solver_error=jnp.zeros((), jnp.float32),
            duality_gap=jnp.zeros((), jnp.float32),
        )

    def weighting(gram, state: CAGradState, weights, **extra_args) -> WeightingResult:
        del extra_args
        result = cagrad_weights(
            gram,
            c=c,
            rescale=rescale,
            task_weights=weights,
            init_weights=state.dual_weights,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        )
        new_state = CAGradState(
            dual_weights=result.dual_weights,
            direction_norm=result.direction_norm,
            solver_iterations=result.solver_iterations,
            solver_error=result.solver_error,
            duality_gap=result.duality_gap,
        )
        # The coefficients are already poisoned; keep the warm start clean too.
        coefficients, new_state = _gram.guard_non_finite(
            gram, result.coefficients, new_state, state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def cagrad(
    c: float = 0.5,
    *,
    rescale: int = 1,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> optax.GradientTransformationExtraArgs:
    r"""CAGrad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i`, their mean :math:`g_0` and Gram
    matrix G:

    .. math::

      w^\star &= \arg\min_{w\in\Delta_K} w^\top G b + c\|g_0\|\sqrt{w^\top G w},
        \quad b = \tfrac1K \mathbb{1} \\
      d &= g_0 + \frac{c\|g_0\|}{\|g_w\|} g_w, \quad g_w = \textstyle\sum_i w^\star_i h_i \\
      g &= K\, d / s, \qquad s = 1,\ 1 + c^2,\ 1 + c \text{ for rescale } = 0, 1, 2.

    d maximises the worst task improvement :math:`\min_i \langle h_i, d\rangle` over the ball
    :math:`\|d - g_0\| \le c\|g_0\|`.

    Deviations from the official code (https://github.com/Cranial-XIX/CAGrad), each deliberate:

    * The factor K: the official trainers multiply the rescaled direction by the number of tasks
      "to match the sum loss" before the optimizer step; g includes it, so that ``c = 0`` gives
      the linear-scalarization gradient :math:`\sum_i h_i` exactly.
    * The dual is solved to optimality on G / trace G with relative guards (the official SLSQP
      with absolute 1e-8 guards loses accuracy far from unit gradient scale), so g is
      scale-equivariant.
    * Where 0 lies in the convex hull of the gradients and :math:`g_w = 0`, every direction of
      the ball that conflicts with no task is optimal; d is the one nearest :math:`g_0` (the
      official code returns :math:`g_0`), as in :func:`camegrad_jax.camegrad`'s Stage 1.

    This transformation must be **first** in a chain (its input has a leading task axis that its
    output does not); see :func:`camegrad_jax.camegrad`.

    Args:
      c: radius of the ball, ≥ 0 (``alpha``/``calpha`` in the official and LibMTL code).
      rescale: 0, 1 or 2, the official code's rescaling of d (see above; default 1).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.
      solver: ``"jaxopt"``, ``"apg"`` or ``"enumerate"`` (K ≤ 8, loop-free; see
        :func:`camegrad_jax.solve_dual`).
      solver_tol: tolerance of the dual's iterations (default by dtype).
      solver_maxiter: iteration cap of the dual's iterations.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`CAGradState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import cagrad
      >>> tx = cagrad(0.5, num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-0.5, 1.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> bool(jnp.all(grads["w"] @ updates["w"] > 0))  # improves both tasks
      True

    References:
      Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021.
      https://arxiv.org/abs/2110.14048
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(c, "c"),
        _dual.check_solver_options(solver, solver_tol, solver_maxiter),
    )
    _check_rescale(rescale)

    return stacked_gradient_transformation(
        cagrad_weighting(
            c=c,
            rescale=rescale,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        ),
        name="cagrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
