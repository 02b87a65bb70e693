r"""Uncertainty weighting (UW): task weights from learned homoscedastic uncertainties.

Kendall, Gal & Cipolla (2018) weight each task loss by a learned precision. With log-variances
:math:`s_i = \log \sigma_i^2` the joint objective is

.. math::

  \mathcal{L}(\theta, s) = \sum_i e^{-s_i} L_i(\theta) + s_i ,

so the parameters move along :math:`\sum_i e^{-s_i} \nabla L_i` and each :math:`s_i` along
:math:`\partial \mathcal{L} / \partial s_i = 1 - e^{-s_i} L_i`, whose fixed point is
:math:`s_i = \log L_i`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "uncertainty_weighting"


class UncertaintyWeightingState(NamedTuple):
    """UW's own state (``MultiTaskState.method_state``)."""

    log_vars: jax.Array  # (K,) float32, the learned log-variances s_i.


def uncertainty_weighting_weighting(
    *, learning_rate: float = 0.01, init_log_var: float = 0.0
) -> LossWeighting:
    """Uncertainty weighting's :class:`~camegrad_jax.LossWeighting` (see
    :func:`uncertainty_weighting`, which checks the hyper-parameters): from the raw task losses, the
    method's state and the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> UncertaintyWeightingState:
        return UncertaintyWeightingState(log_vars=jnp.full((k,), init_log_var, jnp.float32))

    def weighting(losses, state: UncertaintyWeightingState, weights):
        dtype = weights.dtype
        losses = weights * losses
        log_vars = state.log_vars.astype(dtype)
        precision = jnp.exp(-log_vars)
        stepped = log_vars - jnp.asarray(learning_rate, dtype) * (1.0 - precision * losses)
        finite = _loss_values.all_finite(losses, stepped)
        coefficients = jnp.where(finite, weights * precision, jnp.nan)
        new_state = UncertaintyWeightingState(log_vars=jnp.where(finite, stepped, log_vars))
        return WeightingResult(coefficients, new_state)

    return LossWeighting(init_method_state, weighting)


def uncertainty_weighting(
    *,
    learning_rate: float = 0.01,
    init_log_var: float = 0.0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Uncertainty weighting as an optax transformation over stacked per-task gradients.

    At step t, with the task losses :math:`\ell_i = \lambda_i L_i` passed as ``value``:

    .. math::

      g &= \sum_i e^{-s_i(t)} \lambda_i\, g_i \\
      s_i(t+1) &= s_i(t) - \eta_s \bigl(1 - e^{-s_i(t)} \ell_i\bigr)

    i.e. the update is the gradient of :math:`\sum_i e^{-s_i}\ell_i + s_i` with respect to the
    parameters, and the log-variances take one plain gradient-descent step (SGD, step size
    ``learning_rate``) on the same objective. The gradient with respect to s is analytic, so no
    extra backward pass is needed.

    Notes on the reference implementations: Kendall et al.'s regression form is
    :math:`\tfrac{1}{2\sigma^2} L + \log\sigma`, i.e. half of the objective above; LibMTL's ``UW``
    and the Nash-MTL/FAMO code bases minimise that half (coefficients :math:`\tfrac12 e^{-s}`),
    which is this method with the parameters' and the log-variances' step sizes halved. They also
    update s with the model's own optimizer (often Adam); here s has its own SGD step so that
    the method is a self-contained transformation.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      learning_rate: step size of the gradient descent on the log-variances, > 0.
      init_log_var: initial value of every :math:`s_i` (0: all weights start at 1).
      task_weights: static positive weights λ; the method runs on the weighted losses
        :math:`\lambda_i L_i` (so s learns to absorb λ) and the coefficients on the raw
        gradients are :math:`\lambda_i e^{-s_i}`.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the learned weights apply to (default all, as in the paper); the
        other leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` whose ``method_state`` is an
      :class:`UncertaintyWeightingState`. A step with non-finite losses leaves s unchanged and
      returns a NaN update (so that a downstream ``optax.apply_if_finite`` rejects it).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> from camegrad_jax import uncertainty_weighting
      >>> tx = uncertainty_weighting(learning_rate=0.1, num_tasks=2)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([2.0, 0.5]))
      >>> updates
      Array([1., 1.], dtype=float32)
      >>> state.method_state.log_vars  # s - 0.1 * (1 - L)
      Array([ 0.1 , -0.05], dtype=float32)

    References:
      Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
      Geometry and Semantics, CVPR 2018. https://arxiv.org/abs/1705.07115
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_positive(learning_rate, "learning_rate"),
    )
    _loss_values.check_finite(init_log_var, "init_log_var")

    return loss_weighting_transformation(
        uncertainty_weighting_weighting(learning_rate=learning_rate, init_log_var=init_log_var),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
