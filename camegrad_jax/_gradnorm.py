r"""GradNorm: learned task weights that equalise the tasks' gradient norms and training rates.

Chen et al. (2018) learn loss weights :math:`w_i` so that the gradient norms of the weighted task
losses on a chosen shared layer W, :math:`G_i = \|\nabla_W w_i L_i\| = w_i \|\nabla_W L_i\|`,
approach a common target scaled by each task's relative inverse training rate:

.. math::

  \tilde L_i = \frac{L_i(t)}{L_i(0)}, \qquad r_i = \frac{\tilde L_i}{\operatorname{mean}_j
  \tilde L_j}, \qquad \mathcal{L}_{grad}(w) = \sum_i \bigl| G_i - \bar G\, r_i^{\alpha} \bigr|,

with :math:`\bar G = \operatorname{mean}_j G_j` and the targets :math:`\bar G r_i^\alpha` held
constant. The norms :math:`\|\nabla_W L_i\|` are the square roots of the Gram matrix's diagonal
on W, so the weights' gradient is analytic,
:math:`\partial \mathcal{L}_{grad} / \partial w_i = \operatorname{sign}(G_i - \bar G r_i^\alpha)
\|\nabla_W L_i\|`, and no extra backward pass is needed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
    weight_every_leaf,
)

_NAME = "gradnorm"


class GradNormState(NamedTuple):
    """GradNorm's own state (``MultiTaskState.method_state``)."""

    weights: jax.Array  # (K,) float32, the learned loss weights w_i (they sum to K).
    initial_losses: jax.Array  # (K,) float32, L_i(0) (weighted by λ), recorded at step 0.
    count: jax.Array  # () int32, number of updates so far.


def gradnorm_weighting(*, alpha: float = 1.5, learning_rate: float = 0.025) -> Weighting:
    """GradNorm's :class:`~camegrad_jax.Weighting` (see :func:`gradnorm`, which checks the
    hyper-parameters): a loss-based method that also reads the gradient norms, from the diagonal
    of the raw Gram matrix on the layer W, and the raw losses, passed as ``value=losses``."""

    def init_method_state(k: int) -> GradNormState:
        return GradNormState(
            weights=jnp.ones((k,), jnp.float32),
            initial_losses=jnp.zeros((k,), jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    def weighting(gram, state: GradNormState, weights, **extra_args):
        dtype = gram.dtype
        k = weights.shape[0]
        losses = weights * _loss_values.task_losses(extra_args, k, _NAME, dtype)
        initial = jnp.where(state.count == 0, losses, state.initial_losses.astype(dtype))
        loss_weights = state.weights.astype(dtype)

        norms = weights * jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        weighted_norms = loss_weights * norms
        ratio = jnp.where(initial > 0, losses / jnp.where(initial > 0, initial, 1.0), 1.0)
        mean_ratio = jnp.mean(ratio)
        inverse_rate = jnp.where(
            mean_ratio > 0, ratio / jnp.where(mean_ratio > 0, mean_ratio, 1), 1
        )
        target = jnp.mean(weighted_norms) * inverse_rate ** jnp.asarray(alpha, dtype)
        gradient = jnp.sign(weighted_norms - target) * norms
        stepped = jnp.maximum(loss_weights - jnp.asarray(learning_rate, dtype) * gradient, 0.0)
        total = jnp.sum(stepped)
        renormalised = jnp.where(
            total > 0, k * stepped / jnp.where(total > 0, total, 1), loss_weights
        )

        finite = _loss_values.all_finite(losses, gram)
        new_state = GradNormState(
            weights=jnp.where(finite, renormalised, loss_weights),
            initial_losses=jnp.where(finite, initial, state.initial_losses.astype(dtype)),
            count=jnp.where(finite, optax.safe_int32_increment(state.count), state.count),
        )
        coefficients = jnp.where(finite, loss_weights * weights, jnp.nan)
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def gradnorm(
    *,
    alpha: float = 1.5,
    learning_rate: float = 0.025,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GradNorm as an optax transformation over stacked per-task gradients.

    At step t, with the task losses :math:`\ell_i = \lambda_i L_i` passed as ``value`` and
    :math:`n_i = \lambda_i \|g_i\|_W` read off the Gram matrix on the leaves of ``shared_mask``
    (Algorithm 1 of the paper):

    .. math::

      g &= \sum_i w_i(t)\, \lambda_i\, g_i \qquad\text{(on every leaf)} \\
      \hat w_i &= \max\Bigl(0,\; w_i(t) - \eta_w\, \operatorname{sign}\bigl(w_i(t) n_i -
        \bar G\, r_i^{\alpha}\bigr)\, n_i\Bigr) \\
      w_i(t+1) &= K\, \hat w_i / \textstyle\sum_j \hat w_j

    with :math:`w(0) = \mathbb{1}`, :math:`L_i(0)` recorded at the first update, and the update
    of this step using the weights *before* their own update, as in the paper's Algorithm 1.

    Decisions where the paper is silent:

    * The weights take plain gradient-descent steps of size ``learning_rate`` (the paper uses
      the network's optimizer). A step that would make a weight negative stops at 0: a negative
      loss weight would ascend its task's loss. If every weight would reach 0, they are kept.
    * :math:`\tilde L_i = 1` where :math:`L_i(0) = 0`, and :math:`r = \mathbb{1}` where every
      :math:`\tilde L_j` is 0: both are 0/0 in the paper's formula.
    * A step with non-finite losses or gradients leaves the state unchanged and returns a NaN
      update (so that a downstream ``optax.apply_if_finite`` rejects it).

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      alpha: strength of the restoring force towards a common training rate, ≥ 0 (0: equal
        gradient norms; 1.5 is LibMTL's default).
      learning_rate: step size of the weights' gradient descent, > 0. The weights' gradient has
        the units of a gradient norm: choose it so that ``learning_rate`` × ‖∇_W L_i‖ ≪ 1.
      task_weights: static positive weights λ; the method runs on the weighted losses
        :math:`\lambda_i L_i` and gradients :math:`\lambda_i g_i` (so w learns to absorb λ), and
        the coefficients on the raw gradients are :math:`w_i \lambda_i`.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: the layer W on which the gradient norms are measured — GradNorm's "last shared
        layer" — as a pytree of bools (or a callable returning one). Default: all leaves. Unlike
        the gradient-based methods, the learned weights scale whole task losses, so they apply
        to **every** leaf whatever the mask.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` (its ``stats`` are measured on W) whose
      ``method_state`` is a :class:`GradNormState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import gradnorm
      >>> tx = gradnorm(alpha=1.5, learning_rate=0.1, num_tasks=2)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[3.0, 0.0], [0.0, 1.0]])  # gradient norms 3 and 1
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([1.0, 1.0]))
      >>> updates  # the weights start at 1
      Array([3., 1.], dtype=float32)
      >>> state.method_state.weights  # (1 - 0.1·3, 1 + 0.1·1), renormalised to sum to K = 2
      Array([0.7777778, 1.2222223], dtype=float32)

    References:
      Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for Adaptive Loss
      Balancing in Deep Multitask Networks, ICML 2018. https://arxiv.org/abs/1711.02257
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(alpha, "alpha"),
        _validation.check_positive(learning_rate, "learning_rate"),
    )

    inner = stacked_gradient_transformation(
        gradnorm_weighting(alpha=alpha, learning_rate=learning_rate),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
    return weight_every_leaf(inner, shared_mask)
