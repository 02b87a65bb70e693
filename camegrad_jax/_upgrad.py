r"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024), from the Gram matrix."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    stacked_gradient_transformation,
    stateless_weighting,
)
from camegrad_jax._cone import project_onto_dual_cone

Reduction = Literal["mean", "sum"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum")


def upgrad_coefficients(gram: jax.Array, reduction: Reduction = "mean") -> jax.Array:
    r"""Coefficients of :math:`\sum_i p_i \Pi(h_i)` in terms of the :math:`h_i`, from their Gram
    matrix; p = 1/K (``"mean"``) or 1 (``"sum"``)."""
    num_tasks = gram.shape[0]
    # Row i: the coefficients of Π(h_i), the projection of h_i onto the dual cone.
    projections = jax.vmap(project_onto_dual_cone, in_axes=(None, 0))(
        gram, jnp.eye(num_tasks, dtype=gram.dtype)
    )
    combined = jnp.sum(projections, axis=0)
    return combined / num_tasks if reduction == "mean" else combined


def upgrad_weighting(*, reduction: Reduction = "mean") -> Weighting:
    """UPGrad's :class:`~camegrad_jax.Weighting` (see :func:`upgrad`): stateless, from the Gram
    matrix of the raw task gradients and the task weights."""
    _validation.check_choice(reduction, REDUCTIONS, "reduction")
    return stateless_weighting(lambda gram: upgrad_coefficients(gram, reduction))


def upgrad(
    *,
    reduction: Reduction = "mean",
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""UPGrad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i`, project each onto the dual cone of
    all of them, :math:`\Pi(v) = \arg\min_{d:\ \langle h_j, d\rangle \ge 0\ \forall j}\|d - v\|`,
    and combine:

    .. math::

      g = \sum_i p_i\, \Pi(h_i), \qquad p_i = 1/K \ (\texttt{"mean"}) \text{ or } 1
      \ (\texttt{"sum"}).

    Each :math:`\Pi(h_i) = h_i + \sum_j \mu_j h_j` with μ ≥ 0 from a K-variable non-negative
    least-squares problem on the Gram matrix (:func:`camegrad_jax._cone.project_onto_dual_cone`,
    solved to optimality with an exact active-set finish). g conflicts with no task, is
    scale-equivariant and invariant to the order of the tasks. With task weights λ this is
    torchjd's UPGrad with preference vector λ/K (``"mean"``, torchjd's default) or λ (``"sum"``),
    since the dual cone does not change when gradients are scaled by positive weights.

    Deviation from torchjd: the Gram matrix is neither normalised with an absolute ``norm_eps``
    nor regularised with ``reg_eps`` (1e-4 on the diagonal) before the projection; the
    projection is exact and relative guards keep it finite on singular Gram matrices.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      reduction: ``"mean"`` (default, as torchjd) or ``"sum"`` of the projected gradients.
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
      >>> from camegrad_jax import upgrad
      >>> tx = upgrad(reduction="sum", num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # (1, 0) → (0.5, 0.5); (-1, 1) → (0, 1)
      Array([0.5, 1.5], dtype=float32)

    References:
      Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024.
      https://arxiv.org/abs/2406.16232 (code: https://github.com/TorchJD/torchjd)
    """
    _validation.check_choice(reduction, REDUCTIONS, "reduction")

    return stacked_gradient_transformation(
        upgrad_weighting(reduction=reduction),
        name="upgrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
