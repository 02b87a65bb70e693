r"""ExcessMTL: robust multi-task learning with excess risks (He et al., ICML 2024).

ExcessMTL weights each task by how far it is from its own optimum rather than by its loss: the
excess risk of task i is estimated from a second-order expansion with a diagonal, Adagrad-style
curvature estimate :math:`H_i = \operatorname{diag}\sqrt{\sum_{s \le t} g_i(s)^2}`,

.. math::

  r_i(t) = g_i(t)^\top H_i(t)^{-1} g_i(t)
         = \sum_p \frac{g_{ip}(t)^2}{\sqrt{\sum_{s \le t} g_{ip}(s)^2}} ,

and the task weights ω follow an exponentiated-gradient (mirror ascent) step on the estimates
relative to the first ones, renormalised to sum to K:

.. math::

  \omega_i \leftarrow \omega_i \exp\bigl(\eta\, r_i(t) / r_i(0)\bigr), \qquad
  \omega \leftarrow K \omega / \textstyle\sum_j \omega_j, \qquad g = \sum_i \omega_i g_i .

The curvature accumulators hold one number per task and per shared parameter (the memory of one
more stacked gradient), so this transformation keeps them in its own state around the shared
builder's, which receives the K estimates.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    MultiTaskState,
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
    weight_every_leaf,
)

_NAME = "excess_mtl"


class ExcessMTLWeights(NamedTuple):
    """ExcessMTL's task weights (``MultiTaskState.method_state``)."""

    loss_weights: jax.Array  # (K,) float32, ω (sum K); the update is Σ_i ω_i λ_i g_i.
    initial_risks: jax.Array  # (K,) float32, r_i(0): each task's first non-zero estimate.
    excess_risks: jax.Array  # (K,) float32, the last step's estimates r_i(t).
    count: jax.Array  # () int32, number of updates so far.


class ExcessMTLState(NamedTuple):
    """State of :func:`excess_mtl`: the curvature accumulators and the shared builder's state."""

    squared_gradient_sums: tuple[jax.Array, ...]  # per shared leaf, (K, *shape) float32: Σ_s g².
    inner: MultiTaskState  # its method_state is an ExcessMTLWeights.

    @property
    def coefficients(self) -> jax.Array:
        """(K,) float32, the last update's coefficients on the raw gradients (ω ⊙ λ)."""
        return self.inner.coefficients


def excess_risks(
    shared_leaves: list[jax.Array], squared_sums: tuple[jax.Array, ...], dtype: Any
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """The (K,) estimates r_i and the accumulators with this step's squares added.

    An entry whose accumulated square is 0 has a zero gradient now, and contributes 0.
    """
    risks, new_sums = [], []
    for leaf, squared_sum in zip(shared_leaves, squared_sums, strict=True):
        flat = leaf.reshape(leaf.shape[0], -1).astype(dtype)
        total = squared_sum.reshape(flat.shape).astype(dtype) + jnp.square(flat)
        root = jnp.sqrt(total)
        # g² / √Σg² = |g| · (|g| / √Σg²), with the second factor ≤ 1: no overflow from g².
        ratio = jnp.where(root > 0, jnp.abs(flat) / jnp.where(root > 0, root, 1.0), 0.0)
        risks.append(jnp.sum(jnp.abs(flat) * ratio, axis=1))
        new_sums.append(total.reshape(leaf.shape))
    return sum(risks[1:], risks[0]), tuple(new_sums)


def excess_mtl(
    robust_step_size: float = 1e-2,
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ExcessMTL as an optax transformation over stacked per-task gradients.

    At step t, with the weighted task gradients :math:`h_i = \lambda_i g_i` on the shared leaves,
    the accumulators :math:`A_i \mathrel{+}= h_i^2` (element-wise), the excess-risk estimates
    :math:`r_i = \sum_p h_{ip}^2 / \sqrt{A_{ip}}` and, from the second step on,

    .. math::

      \omega_i \leftarrow \frac{K\, \omega_i e^{\eta r_i / r_i^{(0)}}}
        {\sum_j \omega_j e^{\eta r_j / r_j^{(0)}}}, \qquad
      g = \sum_i \omega_i \lambda_i g_i \ \text{ on every leaf},

    where :math:`r^{(0)}` are the first step's estimates and ω starts at 1 (the first update is
    the linear-scalarization sum). ω weighs whole task losses, as in the official code, so it
    applies to every leaf, ``shared_mask`` selecting the leaves the estimates are formed on.
    λ cancels from the ratios :math:`r_i / r_i^{(0)}`; scaling every gradient by one factor
    leaves ω unchanged, and the update scales with the gradients.

    Deviations from the official code (https://github.com/yifei-he/ExcessMTL, also in LibMTL):

    * The official estimate divides by :math:`\sqrt{A_{ip} + 10^{-7}}`; here the guard is
      exact instead (an entry with :math:`A_{ip} = 0` contributes 0), so that ω does not depend
      on the gradients' scale. The two agree wherever the accumulated squares are well above
      1e-7.
    * A task whose gradient is zero at the first step has no reference estimate (the official
      ratio is 0/0 there): its reference is its first non-zero estimate, and until then its
      ratio is 0.
    * The exponentiated step is taken in log space (the same ω without overflow).
    * A step with non-finite gradients returns a NaN update (so that a downstream
      ``optax.apply_if_finite`` rejects it) and leaves the accumulators and ω as they were.

    The accumulators take as much memory as one stacked gradient of the shared leaves, kept in
    float32 (so squared gradients above ~1e19 overflow). This transformation must be **first**
    in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      robust_step_size: the step size η ≥ 0 of the weights' exponentiated update (official
        ``robust_step_size``, default 1e-2; 0 keeps ω = 1).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves, on which
        the accumulators and estimates are formed (default all leaves).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`ExcessMTLState`:
      the accumulators and a :class:`camegrad_jax.MultiTaskState` whose ``method_state`` is an
      :class:`ExcessMTLWeights`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.excess_mtl(robust_step_size=1.0)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> _, state = tx.update(jnp.array([[1.0, 0.0], [0.0, 1.0]]), state, params)
      >>> # Task 1 stalls (same gradient: estimate 1/√2 of the first), task 2 converges (0).
      >>> updates, state = tx.update(jnp.array([[1.0, 0.0], [0.0, 0.0]]), state, params)
      >>> state.inner.method_state.loss_weights
      Array([1.3395231, 0.6604769], dtype=float32)

    References:
      He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024.
      https://arxiv.org/abs/2402.02009
    """
    hyperparams_valid = _validation.check_non_negative(robust_step_size, "robust_step_size")

    def init_method_state(k: int) -> ExcessMTLWeights:
        return ExcessMTLWeights(
            loss_weights=jnp.ones((k,), jnp.float32),
            initial_risks=jnp.zeros((k,), jnp.float32),
            excess_risks=jnp.zeros((k,), jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    def weighting(gram, state: ExcessMTLWeights, weights, **extra_args) -> WeightingResult:
        del gram
        dtype = weights.dtype
        risks = extra_args["excess_risks"].astype(dtype)
        initial = state.initial_risks.astype(dtype)
        initial = jnp.where(initial > 0, initial, risks)
        ratio = jnp.where(initial > 0, risks / jnp.where(initial > 0, initial, 1.0), 0.0)
        old_weights = state.loss_weights.astype(dtype)
        logits = jnp.log(old_weights) + jnp.asarray(robust_step_size, dtype) * ratio
        stepped = old_weights.shape[0] * jax.nn.softmax(logits)
        loss_weights = jnp.where(state.count > 0, stepped, old_weights)
        finite = _loss_values.all_finite(risks, loss_weights)
        new_state = ExcessMTLWeights(
            loss_weights=loss_weights,
            initial_risks=initial,
            excess_risks=risks,
            count=optax.safe_int32_increment(state.count),
        )
        new_state = _loss_values.keep_if(finite, new_state, state)
        coefficients = jnp.where(finite, loss_weights * weights, jnp.nan)
        return WeightingResult(coefficients, new_state)

    inner = weight_every_leaf(
        stacked_gradient_transformation(
            Weighting(init_method_state, weighting),
            name=_NAME,
            num_tasks=num_tasks,
            task_weights=task_weights,
            shared_mask=shared_mask,
            uses_gram=False,
            hyperparams_valid=hyperparams_valid,
        ),
        shared_mask,
    )

    def shared_leaves(tree, params) -> list[jax.Array]:
        leaves = jax.tree.leaves(tree)
        mask = _tree.resolve_mask(shared_mask, tree, params) or [True] * len(leaves)
        return [leaf for leaf, is_shared in zip(leaves, mask, strict=True) if is_shared]

    def empty_sums(params, k: int) -> tuple[jax.Array, ...]:
        return tuple(
            jnp.zeros((k, *jnp.shape(leaf)), jnp.float32) for leaf in shared_leaves(params, params)
        )

    def init_fn(params):
        k = _validation.resolve_num_tasks(num_tasks, task_weights)
        # Without K (or params) the accumulators are sized by the first stacked gradients.
        sums = () if params is None else empty_sums(params, 0 if k is None else k)
        return ExcessMTLState(squared_gradient_sums=sums, inner=inner.init(params))

    def update_fn(task_updates, state: ExcessMTLState, params=None, **extra_args):
        k = _tree.task_axis_size(task_updates)
        _tree.check_floating(task_updates, _NAME)
        leaves = shared_leaves(task_updates, params)
        sums = state.squared_gradient_sums
        if not sums or sums[0].shape[0] == 0:
            sums = tuple(jnp.zeros(leaf.shape, jnp.float32) for leaf in leaves)
        dtype = _tree.accumulation_dtype(leaves)
        weights = _validation.weights_vector(task_weights, k, dtype)
        weighted = [
            leaf.astype(dtype) * weights.reshape((k,) + (1,) * (leaf.ndim - 1)) for leaf in leaves
        ]
        risks, new_sums = excess_risks(weighted, sums, dtype)
        updates, inner_state = inner.update(
            task_updates, state.inner, params, excess_risks=risks, **extra_args
        )
        # The accumulators advance with the weights: not on a rejected (non-finite) step, nor
        # where a schedule left the valid range.
        advanced = _loss_values.all_finite(risks) & jnp.asarray(hyperparams_valid)
        new_sums = tuple(
            jnp.where(advanced, new, old).astype(jnp.float32)
            for new, old in zip(new_sums, sums, strict=True)
        )
        return updates, ExcessMTLState(squared_gradient_sums=new_sums, inner=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
