r"""CAGrad: Conflict-Averse Gradient descent (Liu et al., NeurIPS 2021).

CAGrad is CAME-Grad's Stage 1 on its own, followed by the official code's rescaling. Its dual is
solved by :func:`camegrad_jax.solve_dual` through :func:`camegrad_jax.camegrad_weights` with
Stages 2 and 3 switched off, so the two methods share one solver, one polish and one warm start.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camegrad_jax import _dual, _gram, _tree, _validation
from camegrad_jax._aggregation import WeightingResult, stacked_gradient_transformation
from camegrad_jax._camegrad import camegrad_weights

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
        # Stage 1 alone: with Stages 2 and 3 off, CAME-Grad's coefficients are d's, d = Σ δ_i h_i.
        stage1 = camegrad_weights(
            gram,
            c=c,
            task_weights=weights,
            enhance=False,
            fuse=False,
            init_weights=state.dual_weights,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        )
        num_tasks = gram.shape[0]
        divisor = _rescale_divisor(rescale, jnp.asarray(c, gram.dtype))
        new_state = CAGradState(
            dual_weights=stage1.dual_weights,
            direction_norm=stage1.direction_norm,
            solver_iterations=stage1.solver_iterations,
            solver_error=stage1.solver_error,
            duality_gap=stage1.duality_gap,
        )
        # camegrad_weights already poisons the coefficients; keep the warm start clean too.
        coefficients, new_state = _gram.guard_non_finite(
            gram, stage1.coefficients * (num_tasks / divisor), new_state, state
        )
        return WeightingResult(coefficients, new_state)

    return stacked_gradient_transformation(
        weighting,
        init_method_state,
        name="cagrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
