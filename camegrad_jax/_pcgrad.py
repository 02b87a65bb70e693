r"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020), in coefficient space.

Every vector PCGrad forms is a combination of the task gradients, :math:`g^{PC}_i = \sum_k
C_{ik} h_k`, and each projection needs only inner products :math:`\langle g^{PC}_i, h_j\rangle =
(C G)_{ij}` and norms :math:`G_{jj}`: the whole method runs on the K × K Gram matrix.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


class PCGradState(NamedTuple):
    """PCGrad's own state (``MultiTaskState.method_state``)."""

    key: jax.Array  # PRNG key of the task orders; advanced at every update.
    task_order: jax.Array  # (K, K) int32, row i: the order in which task i met the others.


def _check_seed(seed: Any) -> None:
    if _validation.is_traced(seed):
        return
    value = np.asarray(seed)
    if isinstance(seed, bool) or value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"Parameter `seed` should be an integer. Found `seed = {seed!r}`.")


def pcgrad_coefficients(gram: jax.Array, task_order: jax.Array) -> jax.Array:
    r"""Coefficients β of PCGrad's update :math:`\sum_i g^{PC}_i = \sum_k \beta_k h_k`.

    Args:
      gram: (K, K) Gram matrix of the (weighted) task gradients h_i.
      task_order: (K, K) integers, row i a permutation of the tasks: task i's gradient is
        projected against the others in that order (its own entry is skipped).

    Returns:
      (K,) coefficients β.
    """
    num_tasks = gram.shape[0]
    tasks = jnp.arange(num_tasks)
    squared_norms = jnp.diagonal(gram)

    def project_once(position, combination):
        # Row i of `combination` holds the coefficients of g_i^PC; j_i is the task it meets now.
        others = task_order[:, position]
        inner = jnp.take_along_axis(combination @ gram, others[:, None], axis=1)[:, 0]
        norm_sq = squared_norms[others]
        # A zero gradient g_j conflicts with nothing (its inner products are 0 too).
        conflict = (others != tasks) & (inner < 0) & (norm_sq > 0)
        step = jnp.where(conflict, inner / jnp.where(norm_sq > 0, norm_sq, 1.0), 0.0)
        return combination.at[tasks, others].add(-step)

    combination = lax.fori_loop(0, num_tasks, project_once, jnp.eye(num_tasks, dtype=gram.dtype))
    return jnp.sum(combination, axis=0)


def pcgrad_weighting(*, seed: int = 0) -> Weighting:
    """PCGrad's :class:`~camegrad_jax.Weighting` (see :func:`pcgrad`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> PCGradState:
        return PCGradState(
            key=jax.random.PRNGKey(seed),
            task_order=jnp.tile(jnp.arange(k, dtype=jnp.int32), (k, 1)),
        )

    def weighting(gram, state: PCGradState, weights, **extra_args) -> WeightingResult:
        del extra_args
        k = gram.shape[0]
        key, draw = jax.random.split(state.key)
        task_order = jax.vmap(lambda key: jax.random.permutation(key, k))(
            jax.random.split(draw, k)
        ).astype(jnp.int32)
        beta = pcgrad_coefficients(_gram.weighted_gram(gram, weights), task_order)
        coefficients, new_state = _gram.guard_non_finite(
            gram, beta * weights, PCGradState(key=key, task_order=task_order), state
        )
        return WeightingResult(coefficients, new_state._replace(key=key))

    return Weighting(init_method_state, weighting)


def pcgrad(
    *,
    seed: int = 0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""PCGrad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` (Algorithm 1 of the paper): for every
    task i, start from :math:`g^{PC}_i = h_i` and, for every other task j in a random order,

    .. math::

      \text{if } \langle g^{PC}_i, h_j\rangle < 0: \quad
      g^{PC}_i \leftarrow g^{PC}_i - \frac{\langle g^{PC}_i, h_j\rangle}{\|h_j\|^2} h_j ;
      \qquad g = \sum_i g^{PC}_i .

    Each task draws its own random order of the others at every step, from a PRNG key kept in the
    state (so the result depends on the order in which tasks are listed only through that draw).
    The order used is kept in the state as ``task_order``. With K = 2 there is no randomness, and
    g conflicts with neither task.

    Deviations from the official code (https://github.com/tianheyu927/PCGrad): a task is never
    projected against itself (as the paper's :math:`j \ne i`; the official shuffle includes it,
    which is a no-op unless :math:`g^{PC}_i` has turned against :math:`h_i`), and the division by
    :math:`\|h_j\|^2` has no absolute ε (a zero :math:`h_j` conflicts with nothing), so g is
    scale-equivariant.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      seed: seed of the PRNG key that draws the task orders.
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`PCGradState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import pcgrad
      >>> tx = pcgrad(num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # (1, 0) → (0.5, 0.5) and (-1, 1) → (0, 1), summed
      Array([0.5, 1.5], dtype=float32)

    References:
      Yu et al., Gradient Surgery for Multi-Task Learning, NeurIPS 2020.
      https://arxiv.org/abs/2001.06782
    """
    _check_seed(seed)

    return stacked_gradient_transformation(
        pcgrad_weighting(seed=seed),
        name="pcgrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
