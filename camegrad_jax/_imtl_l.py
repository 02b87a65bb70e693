r"""IMTL-L: the loss-balancing half of Impartial Multi-Task Learning.

Liu et al. (ICLR 2021) give each task a learnable log-scale :math:`s_i` and minimise

.. math::

  \mathcal{L}(\theta, s) = \sum_i e^{s_i} L_i(\theta) - s_i ,

so the parameters move along :math:`\sum_i e^{s_i} \nabla L_i` and each :math:`s_i` along
:math:`\partial \mathcal{L} / \partial s_i = e^{s_i} L_i - 1`, whose fixed point
:math:`s_i = -\log L_i` makes every scaled loss :math:`e^{s_i} L_i` equal to 1. The objective is
uncertainty weighting's :math:`\sum_i e^{-v_i} L_i + v_i` with :math:`v = -s`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "imtl_l"


class IMTLLState(NamedTuple):
    """IMTL-L's own state (``MultiTaskState.method_state``)."""

    log_scales: jax.Array  # (K,) float32, the learned log-scales s_i.


def imtl_l_weighting(*, learning_rate: float = 0.01, init_log_scale: float = 0.0) -> LossWeighting:
    """IMTL-L's :class:`~camegrad_jax.LossWeighting` (see :func:`imtl_l`, which checks
    the hyper-parameters): from the raw task losses, the method's state and the task weights
    to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> IMTLLState:
        return IMTLLState(log_scales=jnp.full((k,), init_log_scale, jnp.float32))

    def weighting(losses, state: IMTLLState, weights):
        dtype = weights.dtype
        losses = weights * losses
        log_scales = state.log_scales.astype(dtype)
        scales = jnp.exp(log_scales)
        stepped = log_scales - jnp.asarray(learning_rate, dtype) * (scales * losses - 1.0)
        finite = _loss_values.all_finite(losses, scales, stepped)
        coefficients = jnp.where(finite, weights * scales, jnp.nan)
        new_state = IMTLLState(log_scales=jnp.where(finite, stepped, log_scales))
        return WeightingResult(coefficients, new_state)

    return LossWeighting(init_method_state, weighting)


def imtl_l(
    *,
    learning_rate: float = 0.01,
    init_log_scale: float = 0.0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""IMTL-L as an optax transformation over stacked per-task gradients.

    At step t, with the task losses :math:`\ell_i = \lambda_i L_i` passed as ``value``:

    .. math::

      g &= \sum_i e^{s_i(t)} \lambda_i\, g_i \\
      s_i(t+1) &= s_i(t) - \eta_s \bigl(e^{s_i(t)} \ell_i - 1\bigr)

    i.e. the update is the gradient of :math:`\sum_i e^{s_i}\ell_i - s_i` with respect to the
    parameters, and the log-scales take one plain gradient-descent step (SGD, step size
    ``learning_rate``) on the same objective, whose gradient with respect to s is analytic.

    The objective is bounded below in :math:`s_i` only for a positive loss: where
    :math:`\ell_i \le 0`, :math:`s_i` rises by at least ``learning_rate`` per step, without a
    fixed point (torchjd's ``IMTLL`` does not refuse such losses either). A step with
    non-finite losses, or whose scales overflow, leaves s unchanged and returns a NaN update (so
    that a downstream ``optax.apply_if_finite`` rejects it).

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Deviations from the official code: the paper's code is not public; LibMTL's ``IMTL`` and
    torchjd's ``IMTLL`` keep s as a parameter of the model's own optimizer (often Adam). Here s
    takes its own SGD step, so that the method is a self-contained transformation.

    Args:
      learning_rate: step size of the gradient descent on the log-scales, > 0.
      init_log_scale: initial value of every :math:`s_i` (0, as in torchjd and LibMTL: all
        weights start at 1).
      task_weights: static positive weights λ; the method runs on the weighted losses
        :math:`\lambda_i L_i` (so s learns to absorb λ) and the coefficients on the raw
        gradients are :math:`\lambda_i e^{s_i}`.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the learned scales apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` whose ``method_state`` is an :class:`IMTLLState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.imtl_l(learning_rate=0.1)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([2.0, 0.5]))
      >>> updates  # e^0 = 1: the sum of the losses' gradients
      Array([1., 1.], dtype=float32)
      >>> state.method_state.log_scales  # s - 0.1 * (L - 1)
      Array([-0.1 ,  0.05], dtype=float32)

    References:
      Liu et al., Towards Impartial Multi-task Learning, ICLR 2021.
      https://openreview.net/forum?id=IMPnRXEWpvr
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_positive(learning_rate, "learning_rate"),
    )
    _loss_values.check_finite(init_log_scale, "init_log_scale")

    return loss_weighting_transformation(
        imtl_l_weighting(learning_rate=learning_rate, init_log_scale=init_log_scale),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
