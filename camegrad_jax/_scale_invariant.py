r"""Scale-invariant scalarization: descend the sum of the log task losses.

Navon et al. (ICML 2022, the Nash-MTL paper) use it as the baseline "SI", Kurin et al. (NeurIPS
2022) as a loss-balancing reference point: minimising

.. math::

  \mathcal{L}(\theta) = \sum_i \lambda_i \log L_i(\theta)
  \quad\Longrightarrow\quad
  \nabla_\theta \mathcal{L} = \sum_i \frac{\lambda_i}{L_i}\, \nabla L_i ,

so multiplying one task's loss by a constant changes nothing: each task is weighted by the
inverse of its current loss.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "scale_invariant"


def scale_invariant_weighting() -> LossWeighting:
    """Scale-invariant loss's :class:`~camegrad_jax.LossWeighting` (see
    :func:`scale_invariant`, which checks the hyper-parameters): from the raw task losses, the
    method's state and the task weights to coefficients on the raw gradients and the new state."""

    def weighting(losses, state, weights):
        valid = _loss_values.all_finite(losses) & jnp.all(losses > 0)
        coefficients = weights / jnp.where(valid, losses, 1.0)
        return WeightingResult(jnp.where(valid, coefficients, jnp.nan), state)

    return LossWeighting(lambda k: optax.EmptyState(), weighting)


def scale_invariant(
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale-invariant scalarization as an optax transformation over stacked per-task gradients.

    With the task losses :math:`L_i > 0` passed as ``value``, the update is the gradient of
    :math:`\sum_i \lambda_i \log L_i`:

    .. math::

      g = \sum_i \frac{\lambda_i}{L_i}\, g_i .

    The logarithm needs positive losses: a step whose losses are not all finite and positive
    returns a NaN update (so that a downstream ``optax.apply_if_finite`` rejects it) instead of
    a step towards an undefined objective. A loss that nears 0 receives a weight that grows
    without bound, as in the official code (``torch.log(losses)``, no guard).

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Deviations from the official code: none in the update; the official ``get_weighted_loss``
    returns the scalar :math:`\sum_i \lambda_i \log L_i` for autograd, whose gradient is formed
    here from the task gradients directly.

    Args:
      task_weights: static positive weights λ, the exponents of the weighted geometric
        objective :math:`\prod_i L_i^{\lambda_i}` (official ``task_weights``, default 1).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the loss-scaled weights apply to (default all, as in the paper); the
        other leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` (the method keeps no state of its own).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.scale_invariant()
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([2.0, 0.5]))
      >>> updates  # 1 / L
      Array([0.5, 2. ], dtype=float32)

    References:
      Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022.
      https://arxiv.org/abs/2202.01017 (official code: https://github.com/AvivNavon/nash-mtl)

      Kurin et al., In Defense of the Unitary Scalarization for Deep Multi-Task Learning,
      NeurIPS 2022. https://arxiv.org/abs/2201.04122
    """

    return loss_weighting_transformation(
        scale_invariant_weighting(),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
