r"""IMTL-G: the gradient half of Impartial Multi-Task Learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _gram, _tree
from camegrad_jax._aggregation import (
    Weighting,
    stacked_gradient_transformation,
    stateless_weighting,
)


def imtl_g_coefficients(gram: jax.Array) -> jax.Array:
    r"""IMTL-G's α from the Gram matrix G of the (weighted) task gradients.

    :math:`\alpha = v / \mathbb{1}^\top v` with :math:`v = G^{+} \sqrt{\operatorname{diag} G}`;
    α = 0 where :math:`\mathbb{1}^\top v` vanishes (e.g. all gradients zero).
    """
    normalised, _ = _gram.trace_normalise(gram)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(normalised), 0.0))
    v = _gram.pseudo_inverse_psd(normalised) @ norms
    total = jnp.sum(v)
    resolvable = jnp.abs(total) > 64 * jnp.finfo(gram.dtype).eps * jnp.sum(jnp.abs(v))
    return jnp.where(resolvable, v / jnp.where(resolvable, total, 1.0), 0.0)


def imtl_g_weighting() -> Weighting:
    """IMTL-G's :class:`~camegrad_jax.Weighting` (see :func:`imtl_g`): stateless, from the Gram
    matrix of the raw task gradients and the task weights."""
    return stateless_weighting(imtl_g_coefficients)


def imtl_g(
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""IMTL-G as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` and unit vectors
    :math:`u_i = h_i / \|h_i\|`, IMTL-G finds the update :math:`g = \sum_i \alpha_i h_i` with
    :math:`\sum_i \alpha_i = 1` whose projections on every :math:`u_i` are equal:
    :math:`\langle g, u_i\rangle = \langle g, u_j\rangle`. The paper's closed form
    :math:`\alpha_{2:K} = g_1 U^\top (D U^\top)^{-1}`, :math:`\alpha_1 = 1 - \sum_{i\ge2}\alpha_i`
    (with :math:`D_i = g_1 - g_i`, :math:`U_i = u_1 - u_i`) is, from the Gram matrix G,

    .. math::

      \alpha = \frac{G^{+} d}{\mathbb{1}^\top G^{+} d}, \qquad d_i = \sqrt{G_{ii}} = \|h_i\| ,

    since :math:`G\alpha \propto d` states the equal projections. The pseudo-inverse extends it
    to linearly dependent gradients (duplicated tasks share the weight), as torchjd's IMTLG does;
    the update is 0 where :math:`\mathbb{1}^\top G^{+} d` vanishes. The loss half of IMTL
    (IMTL-L, learnable loss scales) is not part of this transformation.

    The update is scale-equivariant, invariant to the order of the tasks, and its common
    projection :math:`\langle g, u_i\rangle` may be negative: IMTL-G makes no promise of
    non-conflict.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` (``coefficients`` = α ⊙ λ; no method state).

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import imtl_g
      >>> tx = imtl_g(num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # equal projections on both task directions
      Array([0.75, 0.75], dtype=float32)

    References:
      Liu et al., Towards Impartial Multi-task Learning, ICLR 2021.
      https://openreview.net/forum?id=IMPnRXEWpvr
    """

    return stacked_gradient_transformation(
        imtl_g_weighting(),
        name="imtl_g",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
