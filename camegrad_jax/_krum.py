r"""Krum and Multi-Krum: Byzantine-robust selection of task gradients (Blanchard et al., NeurIPS
2017), from the Gram matrix alone."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


def krum_coefficients(gram: jax.Array, n_byzantine: Any, n_selected: Any = 1) -> jax.Array:
    r"""Multi-Krum's weights from the Gram matrix G of the (weighted) task gradients.

    Squared distances :math:`\|h_i - h_j\|^2 = G_{ii} + G_{jj} - 2 G_{ij}`; task i's score is
    the sum of its :math:`K - f - 2` smallest squared distances to the other tasks; the
    ``n_selected`` tasks of smallest score share the weight equally (ties go to the task listed
    first). ``n_byzantine`` (f) and ``n_selected`` may be traced: the selection is a mask over
    the K tasks, not a shape.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> h = jnp.array([[1.0, 0.0], [1.2, 0.0], [0.9, 0.1], [-50.0, 7.0]])
      >>> cg.krum_coefficients(h @ h.T, n_byzantine=1, n_selected=2)
      Array([0.5, 0. , 0.5, 0. ], dtype=float32)
    """
    num_tasks = gram.shape[0]
    squared_norms = jnp.diagonal(gram)
    squared_distances = jnp.maximum(squared_norms[:, None] + squared_norms[None, :] - 2 * gram, 0)
    # A task is not its own neighbour: its distance to itself sorts last and is never counted.
    squared_distances = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, squared_distances)
    nearest = jnp.sort(squared_distances, axis=1)
    counted = jnp.arange(num_tasks) < num_tasks - n_byzantine - 2
    scores = jnp.sum(jnp.where(counted[None, :], nearest, 0.0), axis=1)
    rank = jnp.argsort(jnp.argsort(scores, stable=True), stable=True)
    selected = rank < n_selected
    return jnp.where(selected, 1.0, 0.0).astype(gram.dtype) / jnp.asarray(n_selected, gram.dtype)


def krum_weighting(*, n_byzantine: int, n_selected: int = 1) -> Weighting:
    """Krum's :class:`~camegrad_jax.Weighting` (see :func:`krum`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def weighting(gram, state, weights, **extra_args) -> WeightingResult:
        del extra_args
        k = gram.shape[0]
        enough = _enough_tasks(k, n_byzantine, n_selected)
        beta = krum_coefficients(_gram.weighted_gram(gram, weights), n_byzantine, n_selected)
        beta = jnp.where(enough, beta, jnp.nan)
        coefficients, state = _gram.guard_non_finite(gram, beta * weights, state, state)
        return WeightingResult(coefficients, state)

    return Weighting(lambda k: optax.EmptyState(), weighting)


def krum(
    n_byzantine: int,
    n_selected: int = 1,
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Krum (``n_selected = 1``) and Multi-Krum as an optax transformation over stacked per-task
    gradients.

    Krum treats the K task gradients as proposals of which up to f = ``n_byzantine`` may be
    adversarial. With weighted gradients :math:`h_i = \lambda_i g_i`, each is scored by its
    distance to its :math:`K - f - 2` nearest neighbours, :math:`s(i) = \sum_{j \in N_i}
    \|h_i - h_j\|^2`, and the m = ``n_selected`` gradients of smallest score are averaged:

    .. math::

      g = \frac1m \sum_{i \in S_m} h_i, \qquad S_m = \text{the } m \text{ tasks of smallest }
      s(i).

    The squared distances come from the K × K Gram matrix (:func:`krum_coefficients`), so g is
    :math:`\sum_i \beta_i g_i`. It is scale-equivariant and, up to ties, invariant to the order
    of the tasks; it makes no promise of non-conflict. A robust aggregator, not a
    conflict-resolving one: with few tasks it discards whole task gradients.

    Needs :math:`K \ge f + 3` and :math:`K \ge m` (checked at the first update, when K is
    known). Under ``optax.inject_hyperparams`` both integers may be traced; out-of-range values
    then give a NaN update (see :func:`camegrad_jax.camegrad`).

    Deviations from torchjd's ``Krum`` (same parameter names and checks): the score sums
    *squared* distances, as Definition 1 of the paper does; torchjd sums the distances
    themselves, which can rank the tasks differently. Ties in the scores go to the task listed
    first.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      n_byzantine: f ≥ 0, the number of task gradients that may be adversarial.
      n_selected: m ≥ 1, the number of gradients averaged (1: Krum; more: Multi-Krum).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` (no method state; ``coefficients`` mark the
      selection).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.krum(n_byzantine=1, n_selected=2)
      >>> grads = jnp.array([[1.0, 0.0], [1.2, 0.0], [0.9, 0.1], [-50.0, 7.0]])
      >>> updates, state = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates  # the outlier is never selected
      Array([0.95, 0.05], dtype=float32)

    References:
      Blanchard, El Mhamdi, Guerraoui & Stainer, Machine Learning with Adversaries: Byzantine
      Tolerant Gradient Descent, NeurIPS 2017.
      https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
    """
    valid = _validation.all_valid(
        _validation.check_non_negative_int(n_byzantine, "n_byzantine"),
        _validation.check_positive_int(n_selected, "n_selected"),
    )

    return stacked_gradient_transformation(
        krum_weighting(n_byzantine=n_byzantine, n_selected=n_selected),
        name="krum",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=valid,
    )


def _enough_tasks(num_tasks: int, n_byzantine: Any, n_selected: Any) -> _validation.Verdict:
    """K ≥ f + 3 and K ≥ m: raises for concrete values, a traced verdict for traced ones."""
    if _validation.is_traced(n_byzantine) or _validation.is_traced(n_selected):
        return (num_tasks >= n_byzantine + 3) & (num_tasks >= n_selected)
    if num_tasks < n_byzantine + 3:
        raise ValueError(
            f"krum needs at least n_byzantine + 3 = {n_byzantine + 3} tasks. Found K = "
            f"{num_tasks} stacked task gradients with `n_byzantine = {n_byzantine}`."
        )
    if num_tasks < n_selected:
        raise ValueError(
            f"krum needs at least n_selected = {n_selected} tasks. Found K = {num_tasks} stacked "
            f"task gradients with `n_selected = {n_selected}`."
        )
    return True
