"""The contract of the loss-based methods, and the builder of their transformations.

A loss-based method (uncertainty weighting, DWA, FAMO, IMTL-L, ...) is a :class:`LossWeighting`:
a pure rule from the K task losses and the method's own state to K coefficients and the new
state. It reads no gradient geometry, so the Gram matrix is never formed. The conventions are
the Gram-based weightings' (`camegrad_jax._aggregation`): the losses are the raw ones, as passed
to ``update`` as ``value``; the static task weights λ are a separate input; the coefficients are
on the raw gradients, the update being Σ_i β_i g_i (so a method that weights the losses
λ_i L_i returns β_i = λ_i w_i). A non-finite loss makes the coefficients NaN (a downstream
``optax.apply_if_finite`` rejects the step) and leaves the state as it was.

:func:`loss_weighting_transformation` turns one into an optax transformation through the
shared builder, :func:`camegrad_jax.stacked_gradient_transformation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import Weighting, WeightingResult, stacked_gradient_transformation


class LossWeightingFn(Protocol):
    def __call__(
        self, losses: jax.Array, method_state: Any, task_weights: jax.Array
    ) -> WeightingResult: ...


class LossWeighting(NamedTuple):
    """A loss-based method apart from the gradients: its state and its rule for β.

    ``update(losses, method_state, task_weights)`` takes the (K,) raw task losses and the (K,)
    static weights λ, both in the gradients' accumulation dtype (≥ float32), and returns a
    :class:`~camegrad_jax.WeightingResult`: coefficients on the raw gradients and the new state.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> weighting = cg.scale_invariant_weighting()
      >>> losses = jnp.array([0.5, 4.0])
      >>> weighting.update(losses, weighting.init(2), jnp.ones(2)).coefficients  # 1 / L_i
      Array([2.  , 0.25], dtype=float32)
    """

    init: Callable[[int], Any]  # K -> the method's initial state.
    update: LossWeightingFn


def loss_weighting_transformation(
    weighting: LossWeighting,
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
    hyperparams_valid: _validation.Verdict = True,
) -> optax.GradientTransformationExtraArgs:
    """The optax transformation of a loss-based method; ``update`` needs ``value=losses``.

    Args:
      weighting: the method's :class:`LossWeighting`.
      name, num_tasks, task_weights, shared_mask, hyperparams_valid: as for
        :func:`camegrad_jax.stacked_gradient_transformation`.

    Returns:
      The builder's transformation, whose ``update(task_updates, state, params=None,
      value=losses)`` raises a ``ValueError`` naming the method when the losses are missing or
      not of shape (K,).
    """

    def update(gram, method_state, weights, **extra_args) -> WeightingResult:
        del gram  # Not formed: uses_gram=False.
        losses = _loss_values.task_losses(extra_args, weights.shape[0], name, weights.dtype)
        return weighting.update(losses, method_state, weights)

    return stacked_gradient_transformation(
        Weighting(weighting.init, update),
        name=name,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        uses_gram=False,
        hyperparams_valid=hyperparams_valid,
    )
