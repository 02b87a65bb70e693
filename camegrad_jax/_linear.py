"""Linear scalarization: the baseline every multi-task method is compared against."""

from __future__ import annotations

from typing import Any

import optax

from camegrad_jax import _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


def linear_weighting() -> Weighting:
    """Linear scalarization's :class:`~camegrad_jax.Weighting` (see
    :func:`linear_scalarization`): the task weights themselves, whatever the Gram matrix."""

    def weighting(gram, method_state, weights, **extra_args):
        del gram, extra_args
        return WeightingResult(weights, method_state)

    return Weighting(lambda k: optax.EmptyState(), weighting)


def linear_scalarization(
    task_weights: Any = None,
    *,
    num_tasks: int | None = None,
    diagnostics: bool = False,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The weighted sum of the task gradients, as a transformation over stacked gradients.

    .. math::

      g = \sum_i \lambda_i \, g_i

    This is the gradient of :math:`\sum_i \lambda_i L_i`, taken from the same stacked per-task
    gradients that :func:`camegrad` consumes, so that the two are compared like with like.

    Args:
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K; needed only with ``diagnostics=True`` unless ``task_weights`` gives it.
      diagnostics: also form the Gram matrix and keep the gradient statistics of
        :class:`GradientStats` (cosines, conflicts, magnitude collapse) in the state. This costs
        one more pass over the stacked gradients.
      shared_mask: with diagnostics, the leaves the statistics are computed on.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` that must come first in a chain;
      ``update`` takes leaves of shape ``(K, *param_shape)`` and returns params-shaped updates.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.linear_scalarization([1.0, 4.0])
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
      >>> updates, _ = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]
      Array([1., 4.], dtype=float32)

    References:
      Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018
      (linear scalarization as the baseline). https://arxiv.org/abs/1810.04650
    """
    _validation.check_task_weights(task_weights)
    if diagnostics:
        return stacked_gradient_transformation(
            linear_weighting(),
            name="linear_scalarization",
            num_tasks=num_tasks,
            task_weights=task_weights,
            shared_mask=shared_mask,
        )

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(task_updates, state, params=None, **extra_args):
        del extra_args
        k = _tree.task_axis_size(task_updates)
        if params is not None:
            _tree.check_stacked_against_params(task_updates, params, k)
        leaves, treedef = _tree.flatten(task_updates)
        weights = _validation.weights_vector(task_weights, k, _tree.accumulation_dtype(leaves))
        return treedef.unflatten(_tree.combine(leaves, weights)), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
