r"""The coordinate-wise trimmed mean of the task gradients (Yin et al., ICML 2018)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree, _validation
from camegrad_jax._elementwise import elementwise_weighting_transformation


def trimmed_mean(
    trim_number: int,
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The coordinate-wise trimmed mean as an optax transformation over stacked per-task
    gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` and t = ``trim_number``, every
    entry p of the update drops the t largest and the t smallest of :math:`h_{1,p}, \dots,
    h_{K,p}` and averages the others:

    .. math::

      g_p = \frac{1}{K - 2t} \sum_{r = t + 1}^{K - t} h_{(r),p},

    where :math:`h_{(1),p} \le \dots \le h_{(K),p}` are the sorted entries. A Byzantine-robust
    aggregator (Option II of the paper): up to t arbitrarily wrong task gradients cannot pull
    any entry outside the range of the others. t = 0 is the mean :math:`\frac1K\sum_i h_i`.
    It is scale-equivariant and invariant to the order of the tasks; it makes no promise of
    non-conflict. Needs :math:`K \ge 2t + 1` (checked at the first update, when K is known).

    The state's ``coefficients`` are each task's effective weight (see
    :mod:`camegrad_jax._elementwise`): :math:`\lambda_i / (K - 2t)` times the share of
    :math:`\|g_i\|^2` on the entries where task i was kept.

    Deviations from torchjd's ``TrimmedMean`` (same parameter name and checks): none in the
    result; ties between equal entries are broken by task order, which does not change the
    mean. Under ``optax.inject_hyperparams`` a traced ``trim_number`` out of range gives a NaN
    update (see :func:`camegrad_jax.camegrad`).

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      trim_number: t ≥ 0, the number of largest and of smallest entries dropped per coordinate
        (2t in all).
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
      >>> tx = cg.trimmed_mean(1)
      >>> grads = jnp.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]])
      >>> updates, state = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates  # torchjd's test value: the extremes of each column are dropped
      Array([1.5, 2.5], dtype=float32)

    References:
      Yin, Chen, Ramchandran & Bartlett, Byzantine-Robust Distributed Learning: Towards Optimal
      Statistical Rates, ICML 2018. https://proceedings.mlr.press/v80/yin18a.html
    """
    valid = _validation.check_non_negative_int(trim_number, "trim_number")

    def weighting(weighted: list[jax.Array], state: Any) -> tuple[list[jax.Array], Any]:
        k = weighted[0].shape[0]
        enough = _enough_tasks(k, trim_number)
        # Too few tasks for a traced t: every factor NaN (every entry would be dropped).
        share = jnp.where(enough, 1.0 / jnp.maximum(k - 2 * trim_number, 1), jnp.nan)
        factors = []
        for h in weighted:
            rank = _ranks(h)
            kept = (rank >= trim_number) & (rank < k - trim_number)
            factors.append(jnp.where(kept | ~jnp.asarray(enough), share, 0.0).astype(h.dtype))
        return factors, state

    return elementwise_weighting_transformation(
        weighting,
        lambda k: optax.EmptyState(),
        name="trimmed_mean",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=valid,
    )


def _ranks(h: jax.Array) -> jax.Array:
    """The rank of every entry among the K tasks (ties by task order), ``h`` of shape (K, ...).

    Counted, not sorted: rank_i = #{j: h_j < h_i} + #{j < i: h_j = h_i}, one fused pass of K²
    comparisons per entry. For the few tasks of multi-task learning this is about a hundred
    times faster on XLA:CPU than ranking by two argsorts over the task axis (measured at
    K = 2…8 with 1e4–1e5 entries per task).
    """
    k = h.shape[0]
    task = jnp.arange(k).reshape((k,) + (1,) * (h.ndim - 1))
    before = (h[None] < h[:, None]) | ((h[None] == h[:, None]) & (task[None] < task[:, None]))
    return jnp.sum(before, axis=1)


def _enough_tasks(num_tasks: int, trim_number: Any) -> _validation.Verdict:
    """K ≥ 2t + 1: raises for a concrete t, a traced verdict for a traced one."""
    if _validation.is_traced(trim_number):
        return num_tasks >= 2 * trim_number + 1
    if num_tasks < 2 * trim_number + 1:
        raise ValueError(
            f"trimmed_mean needs at least 2 * trim_number + 1 = {2 * trim_number + 1} tasks. "
            f"Found K = {num_tasks} stacked task gradients with `trim_number = {trim_number}`."
        )
    return True
