r"""The exact K × K Gram matrix of the task gradients without the K × P stack of gradients.

Every Gram-based method needs G and one weighted sum :math:`\sum_i \beta_i g_i`. The stacked route
(:func:`camegrad_jax.task_gradients`) holds all K gradients at once: K times the memory of an
ordinary gradient. Here G comes from products with the Jacobian J of the loss vector instead,
one task at a time:

.. math::

  g_i = J^\top e_i \ \text{(a VJP)}, \qquad G_{:, i} = J g_i \ \text{(a JVP)},

under ``lax.map``, so only one g_i exists at a time and the peak memory does not grow with K.
The forward pass runs once: ``jax.linearize`` keeps its residuals, the JVP is the linearized
function and the VJP its transpose, so both products share them. The cost is K backward and K
tangent passes, against K backward passes (batched by ``vmap``) for the stacked route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any


def linearize_losses(
    loss_fn: Callable[..., Any], params: PyTree, *args: Any, has_aux: bool = False
) -> tuple[jax.Array, Callable[[PyTree], jax.Array], Callable[[jax.Array], PyTree], Any]:
    """``(losses, jvp, vjp, aux)`` of ``loss_fn(params, *args)`` from one forward pass.

    ``jvp(v)`` is J v (a (K,) vector) and ``vjp(u)`` is Jᵀ u (shaped like ``params``).
    """

    def bound(p):
        return loss_fn(p, *args)

    if has_aux:
        losses, jvp, aux = jax.linearize(bound, params, has_aux=True)
    else:
        (losses, jvp), aux = jax.linearize(bound, params), None
    if jnp.ndim(losses) != 1:
        raise ValueError(
            "`loss_fn` must return a vector of K task losses (shape (K,)); it returned shape "
            f"{jnp.shape(losses)}."
        )
    transpose = jax.linear_transpose(jvp, params)
    return losses, jvp, lambda cotangent: transpose(cotangent)[0], aux


def gram_from_products(
    losses: jax.Array,
    jvp: Callable[[PyTree], jax.Array],
    vjp: Callable[[jax.Array], PyTree],
    mask: list[bool] | None = None,
) -> jax.Array:
    """G of the rows of J (restricted to the leaves where ``mask`` is True), one row at a time.

    ``losses`` gives K and the cotangents' dtype; G is in float32 or wider.

    With a mask, g_i keeps only the masked leaves before the JVP: then
    (J g_i^S)_j = <g_j, g_i^S> = <g_j^S, g_i^S>.
    """

    def column(cotangent):
        gradient = vjp(cotangent)
        if mask is not None:
            leaves, treedef = jax.tree.flatten(gradient)
            leaves = [
                leaf if keep else jnp.zeros_like(leaf)
                for leaf, keep in zip(leaves, mask, strict=True)
            ]
            gradient = jax.tree.unflatten(treedef, leaves)
        return jvp(gradient).astype(dtype)

    dtype = jnp.promote_types(losses.dtype, jnp.float32)
    columns = lax.map(column, jnp.eye(losses.shape[0], dtype=losses.dtype))
    # Column i is J g_i; G is symmetric, and averaging with its transpose removes the
    # asymmetry of round-off (each entry is computed twice, by different products).
    return 0.5 * (columns + columns.T)


def task_gram(
    loss_fn: Callable[..., Any], params: PyTree, *args: Any, has_aux: bool = False
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, Any]:
    r"""The K task losses and the exact Gram matrix of their gradients, in O(``|params|``) memory.

    .. math::

      G_{ij} = \langle \nabla_\theta L_i, \nabla_\theta L_j \rangle
             = \big(J\, J^\top\big)_{ij}, \qquad J = \partial L / \partial \theta ,

    computed column by column, :math:`G_{:,i} = J (J^\top e_i)`: one VJP and one JVP per task
    under ``lax.map``, from a single forward pass (``jax.linearize``). Only one task gradient
    exists at a time, so the peak memory does not grow with K, unlike the ``K × |params|`` stack of
    :func:`task_gradients`; the price is K extra tangent passes. The result equals the Gram
    matrix of the stacked gradients to round-off (in the parameters' precision, accumulated in at
    least float32).

    Use it with :func:`gram_only_gradients` (``low_memory=True``) to train any Gram-based method
    without the stack.

    Args:
      loss_fn: ``loss_fn(params, *args)`` returning the (K,) loss vector (with ``has_aux``, a
        pair ``(losses, aux)``).
      params: the pytree to differentiate with respect to.
      *args: passed to ``loss_fn``.
      has_aux: ``loss_fn`` returns ``(losses, aux)``.

    Returns:
      ``(losses, gram)``, or ``(losses, gram, aux)`` with ``has_aux``; ``gram`` is (K, K),
      symmetric, in float32 or the parameters' dtype if wider.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> def losses(p):
      ...     return jnp.stack([jnp.sum(p ** 2), jnp.sum(p)])
      >>> values, gram = cg.task_gram(losses, jnp.array([1.0, 2.0]))
      >>> gram  # gradients (2, 4) and (1, 1)
      Array([[20.,  6.],
             [ 6.,  2.]], dtype=float32)

    References:
      Quinton & Rey, Jacobian Descent for Multi-Objective Optimization (torchjd's "autogram"
      engine builds the same Gramian without the Jacobian), 2024.
      https://arxiv.org/abs/2406.16232
    """
    losses, jvp, vjp, aux = linearize_losses(loss_fn, params, *args, has_aux=has_aux)
    gram = gram_from_products(losses, jvp, vjp)
    return (losses, gram, aux) if has_aux else (losses, gram)
