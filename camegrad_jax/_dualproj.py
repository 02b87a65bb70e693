r"""DualProj: the mean gradient projected onto the dual cone of the task gradients (GEM's
projection, Lopez-Paz & Ranzato, NeurIPS 2017, as torchjd's ``DualProj`` applies it)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree
from camegrad_jax._aggregation import (
    Weighting,
    stacked_gradient_transformation,
    stateless_weighting,
)
from camegrad_jax._cone import project_onto_dual_cone


def dualproj_coefficients(gram: jax.Array) -> jax.Array:
    r"""Coefficients of :math:`\Pi(\tfrac1K \sum_i h_i)` in terms of the :math:`h_i`, from their
    Gram matrix (:math:`\Pi`: the projection onto the dual cone).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> h = jnp.array([[1.0, 0.0], [-2.0, 1.0]])
      >>> cg.dualproj_coefficients(h @ h.T)  # the mean's (1/2, 1/2) become (1, 1/2)
      Array([1. , 0.5], dtype=float32)
    """
    num_tasks = gram.shape[0]
    return project_onto_dual_cone(gram, jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype))


def dualproj_weighting() -> Weighting:
    """DualProj's :class:`~camegrad_jax.Weighting` (see :func:`dualproj`): stateless, from the Gram
    matrix of the raw task gradients and the task weights."""
    return stateless_weighting(dualproj_coefficients)


def dualproj(
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""DualProj as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i`, the mean gradient is projected onto
    the dual cone of the task gradients, the set of directions that conflict with none of them:

    .. math::

      g = \Pi\Big(\frac1K \sum_i h_i\Big), \qquad
      \Pi(v) = \arg\min_{d:\ \langle h_j, d\rangle \ge 0\ \forall j} \|d - v\| .

    This is Equation 11 of GEM (there with the current task's gradient and the memories' ones),
    applied as torchjd does to the mean of all task gradients. :math:`\Pi(v) = v + \sum_j \mu_j
    h_j` with μ ≥ 0 from a K-variable non-negative least-squares problem on the Gram matrix
    (:func:`camegrad_jax._cone.project_onto_dual_cone`, the projection UPGrad applies to each
    gradient). g conflicts with no task, is scale-equivariant, invariant to the order of the
    tasks, and equals the mean when the mean conflicts with no task. With task weights λ this
    is torchjd's ``DualProj(pref_vector=λ / K)``: the dual cone does not change when gradients
    are scaled by positive weights.

    Deviations from the official code (torchjd's ``DualProj``; GEM's own code projects one
    gradient against the memories with ``quadprog``): the Gram matrix is neither normalised with
    an absolute ``norm_eps`` nor regularised with ``reg_eps`` (1e-4 on the diagonal) before the
    projection, and no external QP solver is called: the projection is exact, with relative
    guards that keep it finite on singular Gram matrices.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` (no method state).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.dualproj()
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-2.0, 1.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # the mean (-1/2, 1/2) conflicts with (1, 0): projected to (0, 1/2)
      Array([0. , 0.5], dtype=float32)

    References:
      Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning, NeurIPS 2017.
      https://arxiv.org/abs/1706.08840 ; Quinton & Rey, Jacobian Descent for Multi-Objective
      Optimization, 2024 (torchjd). https://arxiv.org/abs/2406.16232
    """
    return stacked_gradient_transformation(
        dualproj_weighting(),
        name="dualproj",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
