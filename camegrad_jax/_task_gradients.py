"""Per-task gradients from one forward pass: the input every method in this package consumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _stacked_losses(losses: Any) -> Any:
    """A tuple or list of K scalar losses as the (K,) vector; anything else unchanged."""
    if not isinstance(losses, (tuple, list)):
        return losses
    shapes = [jnp.shape(loss) for loss in losses]
    if not losses or any(shape != () for shape in shapes):
        raise ValueError(
            "`loss_fn` returned a tuple or list; it must hold K scalar losses, but their shapes "
            f"are {shapes}. Return a (K,) vector, or pass `has_aux=True` for `(losses, aux)`."
        )
    return jnp.stack([jnp.asarray(loss) for loss in losses])


def task_gradients(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
    chunk_size: int | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    r"""The K task losses and their stacked gradients, from one forward pass.

    ``loss_fn(params, *args, **kwargs)`` returns a length-K vector of losses, or a tuple or list
    of K scalar losses, which are stacked (with ``has_aux``, a pair ``(losses, aux)``). The
    forward pass runs once; the Jacobian's K rows come from ``jax.vmap`` of the VJP over the K
    unit cotangents :math:`e_1 \dots e_K`:

    .. math::

      \text{grads}[i] = e_i^\top \frac{\partial L}{\partial \theta} = \nabla_\theta L_i .

    Args:
      loss_fn: function of ``params`` returning the (K,) loss vector.
      params: the pytree to differentiate with respect to (e.g. the ``nnx.Param`` state of a
        Flax NNX model after ``nnx.split``, or Linen ``variables['params']``).
      *args: passed to ``loss_fn``.
      **kwargs: passed to ``loss_fn``.
      has_aux: ``loss_fn`` returns ``(losses, aux)``.
      chunk_size: compute the K backward passes in chunks of this many tasks (``lax.map``),
        trading speed for memory when ``K × |params|`` does not fit; the result is the same.

    Returns:
      ``(losses, grads)``, or ``((losses, aux), grads)`` with ``has_aux`` — the same layout
      as ``jax.value_and_grad``. Every leaf of ``grads`` has shape ``(K, *leaf.shape)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> def losses(p):
      ...     return jnp.stack([jnp.sum(p ** 2), jnp.sum(p)])
      >>> values, grads = cg.task_gradients(losses, jnp.array([1.0, 2.0]))
      >>> grads
      Array([[2., 4.],
             [1., 1.]], dtype=float32)
    """

    def bound(p):
        out = loss_fn(p, *args, **kwargs)
        if has_aux:
            losses, aux = out
            return _stacked_losses(losses), aux
        return _stacked_losses(out)

    if has_aux:
        losses, pullback, aux = jax.vjp(bound, params, has_aux=True)
    else:
        losses, pullback = jax.vjp(bound, params)
    losses_shape = jnp.shape(losses)
    if len(losses_shape) != 1:
        raise ValueError(
            "`loss_fn` must return a vector of K task losses (shape (K,)); it returned shape "
            f"{losses_shape}."
        )
    num_tasks = losses_shape[0]
    cotangents = jnp.eye(num_tasks, dtype=jnp.result_type(losses))

    def row(cotangent):
        return pullback(cotangent)[0]

    if chunk_size is None or chunk_size >= num_tasks:
        grads = jax.vmap(row)(cotangents)
    else:
        if chunk_size < 1:
            raise ValueError(
                f"Parameter `chunk_size` should be ≥ 1. Found `chunk_size = {chunk_size}`."
            )
        grads = lax.map(row, cotangents, batch_size=chunk_size)
    return ((losses, aux), grads) if has_aux else (losses, grads)
