r"""CR-MOGM: correlation-reduced multi-objective gradient manipulation (Zhou et al., 2022).

A stochastic MOO method computes its task weights :math:`\hat\lambda_t` from the same mini-batch
gradients it then combines, and that correlation biases the update. CR-MOGM smooths the weights
across steps with an exponential moving average, so that the weights applied at step t depend
only weakly on step t's batch:

.. math::

  \lambda_t = \alpha\,\lambda_{t-1} + (1 - \alpha)\,\hat\lambda_t, \qquad
  g_t = \sum_i \lambda_{t,i}\, h_i .

Here :math:`\hat\lambda_t` are MGDA's min-norm weights (:mod:`camegrad_jax._mgda`), the method
the paper analyses.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _dual, _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._mgda import NORMALIZATIONS, Normalization, mgda_weights

_NAME = "cr_mogm"


class CRMOGMState(NamedTuple):
    """CR-MOGM's own state (``MultiTaskState.method_state``)."""

    smoothed_weights: jax.Array  # (K,) float32, λ_t: the moving average of MGDA's weights.
    count: jax.Array  # () int32, accepted updates so far.
    mgda_weights: jax.Array  # (K,) float32, λ̂_t: MGDA's weights, the next solve's warm start.


def cr_mogm_weighting(
    *,
    alpha: float = 0.9,
    normalization: Normalization = "none",
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> Weighting:
    """CR-MOGM's :class:`~camegrad_jax.Weighting` (see :func:`cr_mogm`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> CRMOGMState:
        uniform = jnp.full((k,), 1.0 / k, jnp.float32)
        return CRMOGMState(
            smoothed_weights=uniform, count=jnp.zeros((), jnp.int32), mgda_weights=uniform
        )

    def weighting(gram, state: CRMOGMState, weights, **extra_args) -> WeightingResult:
        dtype = gram.dtype
        fresh = mgda_weights(
            gram,
            normalization=normalization,
            losses=extra_args.get("value"),
            task_weights=weights,
            init_weights=state.mgda_weights.astype(dtype),
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        ).dual_weights
        decay = jnp.asarray(alpha, dtype)
        previous = state.smoothed_weights.astype(dtype)
        smoothed = jnp.where(state.count > 0, decay * previous + (1 - decay) * fresh, fresh)
        new_state = CRMOGMState(
            smoothed_weights=smoothed,
            count=optax.safe_int32_increment(state.count),
            mgda_weights=fresh,
        )
        # Non-finite gradients poison the coefficients and leave the state as it was.
        coefficients, new_state = _gram.guard_non_finite(gram, smoothed * weights, new_state, state)
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def cr_mogm(
    *,
    alpha: float = 0.9,
    normalization: Normalization = "none",
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> optax.GradientTransformationExtraArgs:
    r"""CR-MOGM over MGDA as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` (λ the static ``task_weights``) and
    MGDA's min-norm weights :math:`\hat w_t = \arg\min_{w\in\Delta_K}\|\sum_i w_i \hat h_i\|^2`
    at step t (see :func:`camegrad_jax.mgda`, including its ``normalization``):

    .. math::

      w_1 = \hat w_1, \qquad w_t = \alpha\, w_{t-1} + (1 - \alpha)\, \hat w_t \ (t \ge 2),
      \qquad g_t = \sum_i w_{t,i}\, h_i .

    The smoothed weights stay on the simplex. ``alpha = 0`` is MGDA; ``alpha = 1`` keeps the
    first step's weights. The paper's Corollary 1 lets the weight of the past grow as the
    learning rate decays; under ``optax.inject_hyperparams`` ``alpha`` can follow a schedule
    such as ``1 - lr(t) / lr(0)``. A step with non-finite gradients leaves the state as it was
    and returns a NaN update (so that ``optax.apply_if_finite`` rejects it).

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Deviations from the official code: the paper publishes no code; this follows its update and
    torchjd's ``CRMOGMWeighting`` (0.17: ``alpha`` weighs the previous weights, default 0.9, and
    the first step's weights start the average). The inner weights are MGDA's, from
    :func:`camegrad_jax.mgda_weights` (exact active-set finish, not Frank-Wolfe).

    Args:
      alpha: α ∈ [0, 1], the weight of the previous smoothed weights (torchjd's convention).
      normalization: MGDA's gradient normalisation, ``"none"`` (default), ``"l2"``, ``"loss"``
        or ``"loss+"`` (the loss-based ones need ``value=losses``; see
        :func:`camegrad_jax.mgda`).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.
      solver: MGDA's simplex solver, ``"jaxopt"``, ``"apg"`` or ``"enumerate"`` (K ≤ 8).
      solver_tol: tolerance of the iterations (default by dtype).
      solver_maxiter: iteration cap of the iterations.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`CRMOGMState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.cr_mogm(alpha=0.5)
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> first = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # MGDA: w = (1/2, 1/2)
      >>> _, state = tx.update(first, state, params)
      >>> second = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}  # MGDA: w = (4/5, 1/5)
      >>> updates, state = tx.update(second, state, params)
      >>> state.method_state.smoothed_weights  # (1/2 + 4/5) / 2, (1/2 + 1/5) / 2
      Array([0.65, 0.35], dtype=float32)

    References:
      Zhou, Zhang, Jiang, Zhang, Zhu & Tan, On the Convergence of Stochastic Multi-Objective
      Gradient Manipulation and Beyond, NeurIPS 2022.
      https://proceedings.neurips.cc/paper_files/paper/2022/file/f91bd64a3620aad8e70a27ad9cb3ca57-Paper-Conference.pdf
      (torchjd: ``CRMOGMWeighting``, https://github.com/SimplexLab/TorchJD)
    """
    _validation.check_choice(normalization, NORMALIZATIONS, "normalization")
    hyperparams_valid = _validation.all_valid(
        _validation.check_unit_interval(alpha, "alpha"),
        _dual.check_solver_options(solver, solver_tol, solver_maxiter),
    )

    return stacked_gradient_transformation(
        cr_mogm_weighting(
            alpha=alpha,
            normalization=normalization,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        ),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
