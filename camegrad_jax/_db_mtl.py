r"""DB-MTL: Dual-Balancing Multi-Task Learning (Lin et al., 2023).

Two balances. The *loss scales* are balanced by descending the log-losses, whose gradients
:math:`\nabla \log L_i = \nabla L_i / L_i` do not change when a loss is multiplied by a constant.
The *gradient magnitudes* are balanced by rescaling a moving average :math:`y_i` of each task's
log-loss gradient to the largest of their norms:

.. math::

  y_i(t) = u_i(t) + \frac{\beta}{t^{\sigma}}\bigl(y_i(t-1) - u_i(t)\bigr), \quad
  u_i(t) = \nabla_\theta \log\bigl(L_i(t) + \epsilon\bigr), \qquad
  g(t) = \sum_i \frac{\max_j \|y_j(t)\|}{\|y_i(t)\|}\, y_i(t).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._tracking import tracked_gradient_transformation

_NAME = "db_mtl"
# LibMTL's guard inside the logarithm, kept as is: it is part of the method's formula (as FAMO's
# is), negligible for any loss above ~1e-6.
_EPSILON = 1e-8


def _check_beta(beta: Any) -> _validation.Verdict:
    verdict = _validation.check_unit_interval(beta, "beta")
    if _validation.is_traced(beta):
        return verdict & (beta < 1)
    if beta == 1:
        # y_i(1) = u_i(1) + 1·(0 − u_i(1)) = 0, and every later estimate stays 0.
        raise ValueError(f"Parameter `beta` should be in [0, 1). Found `beta = {beta!r}`.")
    return verdict


def _max_norm_coefficients(gram: jax.Array) -> jax.Array:
    """α_i = max_j ‖y_j‖ / ‖y_i‖ from the Gram matrix of the y_i (0 for a zero y_i)."""
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    nonzero = norms > 0
    return jnp.where(nonzero, jnp.max(norms) / jnp.where(nonzero, norms, 1.0), 0.0)


def db_mtl(
    *,
    beta: float = 0.9,
    beta_sigma: float = 0.0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""DB-MTL as an optax transformation over stacked per-task gradients.

    At step t = 1, 2, ..., with the task losses :math:`\ell_i = \lambda_i L_i` passed as
    ``value`` and :math:`\epsilon = 10^{-8}`:

    .. math::

      u_i &= \nabla_\theta \log(\ell_i + \epsilon) = \frac{\lambda_i\, g_i}{\lambda_i L_i +
        \epsilon}, \qquad
      y_i(t) = u_i + \frac{\beta}{t^{\sigma}}\bigl(y_i(t-1) - u_i\bigr), \quad y_i(0) = 0, \\
      g &= \sum_i \alpha_i\, y_i(t), \qquad \alpha_i = \frac{\max_j \|y_j(t)\|}{\|y_i(t)\|},

    on the shared leaves, where every :math:`\alpha_i y_i` has the norm of the largest estimate.
    The other leaves (task-specific heads) receive :math:`\sum_i u_i`, the gradient of
    :math:`\sum_i \log(\ell_i + \epsilon)`, as in LibMTL, where their gradients come from the
    backward pass of the log-losses.

    The estimates :math:`y_i` are kept in the state: K times the shared parameters' memory, in
    at least float32. A step whose update is not finite (NaN gradients or losses, a loss with
    :math:`\lambda_i L_i + \epsilon \le 0`, whose logarithm is undefined) returns a NaN update,
    so that a downstream ``optax.apply_if_finite`` rejects it, and leaves the state as it was.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Deviations from the official code (LibMTL's ``DB_MTL``): α divides by :math:`\|y_i\|`
    rather than :math:`\|y_i\| + 10^{-8}` (a zero estimate gets α = 0), so the update is the same
    at every gradient scale; LibMTL's result differs only for estimates of norm near 1e-8.
    LibMTL's gradient buffer is in the parameters' dtype; here it is at least float32.

    Args:
      beta: β ∈ [0, 1), the weight of the previous estimate (LibMTL ``DB_beta``: 0.9).
      beta_sigma: σ ≥ 0, the decay exponent of that weight, β / t^σ (LibMTL ``DB_beta_sigma``:
        0, a constant weight).
      task_weights: static positive weights λ: the logarithm removes them from u_i on every
        loss above ~1e-8 / λ_i, as it removes any constant factor of a loss.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves that carry the estimates and the balancing (default all); the others
        receive :math:`\sum_i u_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      Its state is a ``TrackedState``: the estimates ``estimates`` (one (K, ...) array per
      shared leaf), the step ``count``, and in ``weighting`` a
      :class:`camegrad_jax.MultiTaskState` whose coefficients are the α and whose statistics
      describe the estimates.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.db_mtl(beta=0.5)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[2.0, 0.0], [0.0, 4.0]])
      >>> losses = jnp.array([1.0, 4.0])  # u_1 = (2, 0), u_2 = (0, 1)
      >>> updates, state = tx.update(grads, tx.init(params), params, value=losses)
      >>> updates  # y = u / 2: norms (1, 0.5), α = (1, 2)
      Array([1., 1.], dtype=float32)

    References:
      Lin, Ye, Xu, Shi & Kwok, Dual-Balancing for Multi-Task Learning, 2023.
      https://arxiv.org/abs/2308.12029 (code: LibMTL, ``LibMTL/weighting/DB_MTL.py``,
      https://github.com/median-research-group/LibMTL)
    """
    hyperparams_valid = _validation.all_valid(
        _check_beta(beta), _validation.check_non_negative(beta_sigma, "beta_sigma")
    )

    def weighting(gram, method_state, weights, **extra_args) -> WeightingResult:
        del weights, extra_args
        finite = jnp.all(jnp.isfinite(gram))
        coefficients = jnp.where(finite, _max_norm_coefficients(gram), jnp.nan)
        return WeightingResult(coefficients, method_state)

    balance = stacked_gradient_transformation(
        Weighting(lambda k: optax.EmptyState(), weighting),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=None,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )

    def targets(shared, private, weights, extra_args):
        k = weights.shape[0]
        losses = weights * _loss_values.task_losses(extra_args, k, _NAME, weights.dtype)
        shifted = losses + _EPSILON
        # d log(ℓ_i + ε) / dθ = λ_i g_i / (ℓ_i + ε); undefined where ℓ_i + ε ≤ 0.
        factors = jnp.where(shifted > 0, weights / jnp.where(shifted > 0, shifted, 1.0), jnp.nan)

        def scale(leaf):
            return leaf * factors.reshape((k,) + (1,) * (leaf.ndim - 1))

        return [scale(leaf) for leaf in shared], [scale(leaf) for leaf in private]

    def retention(step):
        return beta / step**beta_sigma

    return tracked_gradient_transformation(
        balance,
        targets,
        retention,
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
