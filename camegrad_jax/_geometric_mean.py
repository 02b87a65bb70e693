r"""Geometric mean of the task losses (GLS, the Geometric Loss Strategy).

Chennupati et al. (CVPR Workshops 2019, MultiNet++) minimise the geometric mean of the K task
losses instead of their sum:

.. math::

  \mathcal{L}(\theta) = \Bigl(\prod_i L_i(\theta)\Bigr)^{1/K}
  \quad\Longrightarrow\quad
  \nabla_\theta \mathcal{L} = \sum_i \frac{\mathcal{L}}{K\, L_i}\, \nabla L_i ,

so a task's weight is inversely proportional to its loss, and rescaling one task's loss only
rescales the whole step.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "geometric_mean"


def geometric_mean_weighting() -> LossWeighting:
    """Geometric-mean loss's :class:`~camegrad_jax.LossWeighting` (see
    :func:`geometric_mean`, which checks the hyper-parameters): from the raw task losses, the
    method's state and the task weights to coefficients on the raw gradients and the new state."""

    def weighting(losses, state, weights):
        k = weights.shape[0]
        losses = weights * losses
        valid = _loss_values.all_finite(losses) & jnp.all(losses > 0)
        log_losses = jnp.log(jnp.where(valid, losses, 1.0))
        ratios = jnp.exp(jnp.mean(log_losses) - log_losses)  # (Π ℓ)^{1/K} / ℓ_i
        coefficients = ratios * weights / k
        return WeightingResult(jnp.where(valid, coefficients, jnp.nan), state)

    return LossWeighting(lambda k: optax.EmptyState(), weighting)


def geometric_mean(
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GLS (geometric mean of the losses) as an optax transformation over stacked per-task
    gradients.

    With the (weighted) task losses :math:`\ell_i = \lambda_i L_i > 0` passed as ``value``, the
    update is the gradient of their geometric mean :math:`\bar\ell = (\prod_i \ell_i)^{1/K}`:

    .. math::

      g = \sum_i \frac{\bar\ell}{K\, \ell_i}\, \lambda_i\, g_i ,

    computed in log space (:math:`\bar\ell / \ell_i = \exp(\overline{\log \ell} - \log \ell_i)`),
    so that losses from 1e-30 to 1e30 neither overflow nor underflow the product. Since
    :math:`\lambda_i g_i / \ell_i = g_i / L_i`, the task weights only scale the whole step, by
    :math:`(\prod_i \lambda_i)^{1/K}`.

    The geometric mean is not differentiable where a loss is 0 and not defined below: a step
    whose losses are not all finite and positive returns a NaN update (so that a downstream
    ``optax.apply_if_finite`` rejects it); torchjd's ``GeometricMean`` raises on losses below
    1e-12 instead, which a jitted update cannot do.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Deviations from the official code: LibMTL's ``GLS`` (the paper has no public code) forms
    ``losses.prod() ** (1 / K)`` directly, which overflows or underflows in float32 for large
    K or extreme losses; the log-space form here has the same gradient where both are finite.

    Args:
      task_weights: static positive weights λ; the method runs on the weighted losses
        :math:`\lambda_i L_i` (which only scales the step, see above).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the GLS weights apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` (the method keeps no state of its own).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.geometric_mean()
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([4.0, 1.0]))
      >>> updates  # mean 2: (2 / (2 · 4), 2 / (2 · 1))
      Array([0.25, 1.  ], dtype=float32)

    References:
      Chennupati et al., MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
      Strategy for Multi-Task Learning, CVPR Workshops 2019.
      https://openaccess.thecvf.com/content_CVPRW_2019/papers/WAD/Chennupati_MultiNet_Multi-Stream_Feature_Aggregation_and_Geometric_Loss_Strategy_for_Multi-Task_CVPRW_2019_paper.pdf
    """

    return loss_weighting_transformation(
        geometric_mean_weighting(),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
