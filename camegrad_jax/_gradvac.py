r"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021), in coefficient space.

Like PCGrad's, every vector GradVac forms is a combination of the task gradients,
:math:`g'_i = \sum_k C_{ik} h_k`, and each step needs only inner products and norms: the method
runs on the K × K Gram matrix of each parameter group.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from camegrad_jax import _gram, _grouping, _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


class GradVacState(NamedTuple):
    """GradVac's own state (``MultiTaskState.method_state``; one per parameter group)."""

    key: jax.Array  # PRNG key of the task orders; advanced at every update.
    task_order: jax.Array  # (K, K) int32, row i: the order in which task i met the others.
    targets: jax.Array  # (K, K) float32, φ̂_ij: EMA of cos(g'_i, h_j); the diagonal is unused.


def gradvac_coefficients(
    gram: jax.Array, task_order: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    r"""Coefficients of GradVac's update :math:`\sum_i g'_i = \sum_k \beta_k h_k`, and the
    cosines it measured.

    Args:
      gram: (K, K) Gram matrix of the (weighted) task gradients h_i.
      task_order: (K, K) integers, row i a permutation of the tasks: the order in which task i
        meets the others (its own entry is skipped).
      targets: (K, K) target cosines :math:`\hat\phi_{ij}`.

    Returns:
      ``(β, φ)``: the (K,) coefficients and the (K, K) cosines :math:`\phi_{ij} =
      \cos(g'_i, h_j)` measured when task i met task j (0 on the diagonal and where a gradient
      is 0).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> h = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> order = jnp.array([[0, 1], [1, 0]])
      >>> beta, cosines = cg.gradvac_coefficients(h @ h.T, order, jnp.zeros((2, 2)))
      >>> beta  # targets 0: PCGrad's projections, (1, 0) → (1/2, 1/2) and (-1, 1) → (0, 1)
      Array([2. , 1.5], dtype=float32)
    """
    num_tasks = gram.shape[0]
    tasks = jnp.arange(num_tasks)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))

    def adjust_once(position, carry):
        # Row i of `combination` holds the coefficients of g'_i; j_i is the task it meets now.
        combination, cosines = carry
        others = task_order[:, position]
        inner = jnp.take_along_axis(combination @ gram, others[:, None], axis=1)[:, 0]
        own = jnp.sqrt(jnp.maximum(jnp.einsum("ik,kl,il->i", combination, gram, combination), 0))
        other = norms[others]
        both = (own > 0) & (other > 0)
        phi = jnp.clip(jnp.where(both, inner / jnp.where(both, own * other, 1.0), 0.0), -1, 1)
        target = targets[tasks, others]
        target_sin = jnp.sqrt(jnp.maximum(1 - target**2, 0.0))
        # Raise cos(g'_i, h_j) to the target by adding a multiple of h_j (Equation 2); a target
        # of ±1 has no such multiple, and a zero gradient needs none.
        adjust = (others != tasks) & both & (phi < target) & (target_sin > 0)
        safe = jnp.where(adjust, other * target_sin, 1.0)
        phi_sin = jnp.sqrt(jnp.maximum(1 - phi**2, 0.0))
        step = jnp.where(adjust, own * (target * phi_sin - phi * target_sin) / safe, 0.0)
        combination = combination.at[tasks, others].add(step)
        measured = jnp.where(others != tasks, phi, 0.0)
        return combination, cosines.at[tasks, others].set(measured)

    start = (jnp.eye(num_tasks, dtype=gram.dtype), jnp.zeros_like(gram))
    combination, cosines = lax.fori_loop(0, num_tasks, adjust_once, start)
    return jnp.sum(combination, axis=0), cosines


def gradvac_weighting(*, beta: float = 0.01, seed: int = 0) -> Weighting:
    """GradVac's :class:`~camegrad_jax.Weighting` (see :func:`gradvac`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> GradVacState:
        return GradVacState(
            key=jax.random.PRNGKey(seed),
            task_order=jnp.tile(jnp.arange(k, dtype=jnp.int32), (k, 1)),
            targets=jnp.zeros((k, k), jnp.float32),
        )

    def weighting(gram, state: GradVacState, weights, **extra_args) -> WeightingResult:
        del extra_args
        k = gram.shape[0]
        key, draw = jax.random.split(state.key)
        task_order = jax.vmap(lambda key: jax.random.permutation(key, k))(
            jax.random.split(draw, k)
        ).astype(jnp.int32)
        targets = state.targets.astype(gram.dtype)
        coefficients, cosines = gradvac_coefficients(
            _gram.weighted_gram(gram, weights), task_order, targets
        )
        off_diagonal = ~jnp.eye(k, dtype=bool)
        targets = jnp.where(off_diagonal, (1 - beta) * targets + beta * cosines, 0.0)
        coefficients, new_state = _gram.guard_non_finite(
            gram, coefficients * weights, GradVacState(key, task_order, targets), state
        )
        return WeightingResult(coefficients, new_state._replace(key=key))

    return Weighting(init_method_state, weighting)


def gradvac(
    *,
    beta: float = 0.01,
    grouping: _grouping.Grouping = "model",
    seed: int = 0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GradVac as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` (Algorithm 1 of the paper): for
    every task i, start from :math:`g'_i = h_i` and, for every other task j in a random order,
    measure :math:`\phi_{ij} = \cos(g'_i, h_j)`; if it is below the target
    :math:`\hat\phi_{ij}`, add the multiple of :math:`h_j` that raises it exactly to the target
    (Equation 2),

    .. math::

      g'_i \leftarrow g'_i + \frac{\|g'_i\| \big(\hat\phi_{ij} \sqrt{1 - \phi_{ij}^2} -
      \phi_{ij} \sqrt{1 - \hat\phi_{ij}^2}\big)}{\|h_j\| \sqrt{1 - \hat\phi_{ij}^2}}\, h_j ;
      \qquad \hat\phi_{ij} \leftarrow (1 - \beta)\, \hat\phi_{ij} + \beta\, \phi_{ij} ;
      \qquad g = \sum_i g'_i .

    The targets start at 0, so the first step is PCGrad's; afterwards they follow the
    pairwise cosines actually seen (Equation 3), and GradVac also adjusts pairs that do not
    conflict but are less aligned than usual. Targets are kept per ordered pair and, with
    ``grouping``, per parameter group (each group its own g and targets: the paper's
    per-layer variant). Task orders are drawn at every step from a PRNG key kept in the state
    (the same orders in every group, as LibMTL); the orders used are kept as ``task_order``.
    For given orders and targets the update is scale-equivariant.

    Deviations from the official code (no official code was released; LibMTL's ``GradVac`` is
    the reference implementation): the target of a pair is updated at every step, as
    Algorithm 1 of the paper does (LibMTL updates it only when it adjusts the pair), and
    ``beta`` defaults to the paper's 0.01 (LibMTL's default ``GradVac_beta`` is 0.5). The
    divisions have no absolute ε (LibMTL adds 1e-8): a zero gradient is never adjusted, and a
    target of ±1, which no multiple of :math:`h_j` can reach, adjusts nothing.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      beta: β in [0, 1], the EMA rate of the targets (0 keeps them at 0: PCGrad).
      grouping: the parameter groups, each with its own targets and update: ``"model"`` (one
        group, default), ``"layer"`` (the leaves that share a parent in the tree, e.g. a Flax
        module's kernel and bias; LibMTL's ``all_layer``), ``"leaf"`` (every parameter tensor;
        LibMTL's ``all_matrix``), or a callable from a leaf's key path to a hashable group
        label (see :mod:`camegrad_jax._grouping`).
      seed: seed of the PRNG key that draws the task orders.
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves (the ones
        grouped); the others receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. With ``grouping="model"`` its state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`GradVacState` as ``method_state``;
      otherwise a :class:`camegrad_jax.GroupedState` holding one such state per group, in the
      order of the groups' first leaves.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.gradvac(beta=0.5, grouping="layer")
      >>> params = {"dense": {"kernel": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(1)}}
      >>> grads = {"dense": {"kernel": jnp.array([[1.0, 0.0], [-1.0, 1.0]])},
      ...          "head": {"kernel": jnp.array([[1.0], [2.0]])}}
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> updates["dense"]["kernel"], updates["head"]["kernel"]  # PCGrad's step, per layer
      (Array([0.5, 1.5], dtype=float32), Array([3.], dtype=float32))
      >>> state.group_states[1].method_state.targets  # the head's tasks agree: cos = 1
      Array([[0. , 0.5],
             [0.5, 0. ]], dtype=float32)

    References:
      Wang, Tsvetkov, Firat & Cao, Gradient Vaccine: Investigating and Improving Multi-task
      Optimization in Massively Multilingual Models, ICLR 2021.
      https://openreview.net/forum?id=F1vEjWK-lH\_
    """
    valid = _validation.check_unit_interval(beta, "beta")
    _grouping.check_grouping(grouping)
    _loss_values.check_integer(seed, "seed")

    def whole_model(mask: _tree.MaskOrFn) -> optax.GradientTransformationExtraArgs:
        return stacked_gradient_transformation(
            gradvac_weighting(beta=beta, seed=seed),
            name="gradvac",
            num_tasks=num_tasks,
            task_weights=task_weights,
            shared_mask=mask,
            hyperparams_valid=valid,
        )

    if grouping == "model":
        return whole_model(shared_mask)
    return _grouping.per_group(
        whole_model(None), grouping, task_weights=task_weights, shared_mask=shared_mask
    )
