r"""STCH: smooth Tchebycheff scalarization.

Lin et al. (ICML 2024) replace the Tchebycheff scalarization
:math:`\max_i \lambda_i (f_i - z_i)`, which optimises the worst objective relative to an ideal
point z, by its smooth upper bound

.. math::

  g_\mu(f) = \mu \log \sum_i \exp\Bigl(\frac{\lambda_i (f_i - z_i)}{\mu}\Bigr), \qquad
  \nabla_\theta g_\mu = \sum_i \mathrm{softmax}\Bigl(\frac{\lambda (f - z)}{\mu}\Bigr)_i
  \lambda_i\, \nabla f_i ,

which tends to the maximum as μ → 0 and to the λ-weighted mean's direction as μ → ∞. For deep
multi-task learning the official code applies it to the *log* losses, with the ideal point set
to the log of the average losses of a warm-up phase (during which it descends Σ log L_i).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "stch"


class STCHState(NamedTuple):
    """STCH's own state (``MultiTaskState.method_state``)."""

    count: jax.Array  # () int32, warm-up updates so far (stays 0 without a warm-up).
    warmup_loss_sum: jax.Array  # (K,) float32, Σ of the losses seen during the warm-up.


def stch_weighting(
    *, mu: float = 1.0, reference: Any = None, warmup_steps: int | None = None
) -> LossWeighting:
    """STCH's :class:`~camegrad_jax.LossWeighting` (see :func:`stch`, which checks
    the hyper-parameters): from the raw task losses, the method's state and the task weights
    to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> STCHState:
        return STCHState(
            count=jnp.zeros((), jnp.int32), warmup_loss_sum=jnp.zeros((k,), jnp.float32)
        )

    def smooth_max_weights(exponents):
        # Centred before dividing by μ: (f - max f) / μ cannot overflow where f / μ would.
        centred = exponents - jax.lax.stop_gradient(jnp.max(exponents))
        return jax.nn.softmax(centred / jnp.asarray(mu, exponents.dtype))

    def on_losses(state: STCHState, weights, losses):
        k = losses.shape[0]
        shift = 0.0 if reference is None else reference
        exponents = weights * (losses - _loss_values.per_task(shift, k, "reference", losses.dtype))
        coefficients = smooth_max_weights(exponents) * weights
        return coefficients, _loss_values.all_finite(losses), state

    def on_log_losses(state: STCHState, weights, losses):
        k = losses.shape[0]
        valid = _loss_values.all_finite(losses) & jnp.all(losses > 0)
        safe = jnp.where(valid, losses, 1.0)
        warming_up = state.count < warmup_steps
        total = state.warmup_loss_sum.astype(losses.dtype)
        ideal = total / jnp.asarray(warmup_steps, losses.dtype)
        safe_ideal = jnp.where(ideal > 0, ideal, 1.0)
        exponents = weights * (jnp.log(safe) - jnp.log(safe_ideal))
        tchebycheff = k * smooth_max_weights(exponents) * weights / safe
        coefficients = jnp.where(warming_up, weights / safe, tchebycheff)
        new_state = STCHState(
            count=jnp.where(warming_up, state.count + 1, state.count),
            warmup_loss_sum=jnp.where(warming_up, total + safe, total).astype(jnp.float32),
        )
        return coefficients, valid, new_state

    def weighting(losses, state: STCHState, weights):
        rule = on_losses if warmup_steps is None else on_log_losses
        coefficients, valid, stepped = rule(state, weights, losses)
        new_state = _loss_values.keep_if(valid, stepped, state)
        return WeightingResult(jnp.where(valid, coefficients, jnp.nan), new_state)

    return LossWeighting(init_method_state, weighting)


def stch(
    mu: float = 1.0,
    *,
    reference: Any = None,
    warmup_steps: int | None = None,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Smooth Tchebycheff scalarization as an optax transformation over stacked per-task
    gradients.

    With the task losses :math:`L_i` passed as ``value`` and the preference weights
    :math:`\lambda` (``task_weights``), the update is the gradient of :math:`g_\mu` in one of two
    settings.

    *On the losses* (``warmup_steps=None``, torchjd's ``STCH``): :math:`f_i = L_i` and the ideal
    point z is ``reference`` (default 0),

    .. math::

      g = \sum_i \mathrm{softmax}\bigl(\lambda \odot (L - z) / \mu\bigr)_i\, \lambda_i\, g_i .

    Any finite losses are valid. The exponents are centred on their maximum before the division
    by μ (the paper's Appendix B.1, as torchjd does), so losses near 1e30 with μ = 1e-10 give a
    finite step towards the worst task.

    *On the log losses with a learned ideal point* (``warmup_steps=W``, the official MTL code):
    for the first W updates the update is the gradient of :math:`\sum_i \lambda_i \log L_i`,
    i.e. :math:`\sum_i (\lambda_i / L_i)\, g_i`, while the losses are averaged into
    :math:`\bar L`; afterwards :math:`f_i = \log L_i` and :math:`z_i = \log \bar L_i`, scaled by
    K as in the official code:

    .. math::

      g = K \sum_i \mathrm{softmax}\bigl(\lambda \odot \log(L / \bar L) / \mu\bigr)_i\,
      \frac{\lambda_i}{L_i}\, g_i .

    The logarithm needs positive losses here: a step whose losses are not all positive returns a
    NaN update and leaves the state as it was.

    A step with non-finite losses leaves the state unchanged and returns a NaN update (so that a
    downstream ``optax.apply_if_finite`` rejects it).

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Deviations from the official code: the warm-up is counted in updates, and :math:`\bar L`
    averages all W warm-up steps (torchjd's ``STCHWeighting`` does the same); the official code
    warms up for whole epochs and averages the last warm-up epoch only. The official
    ``log(L / L̄ + 1e-20)`` guard is replaced by the positivity check above. torchjd's default
    preference is uniform, :math:`\lambda_i = 1/K`; the default here is :math:`\lambda_i = 1`
    (as in the official code), so ``stch(mu, task_weights=[1 / K] * K)`` is torchjd's
    ``STCH(mu)``.

    Args:
      mu: the smoothing parameter μ > 0 (official default 1; the paper evaluates 0.01 to 1).
        Smaller values move the update towards the worst task's gradient alone.
      reference: the ideal point z on the losses, a float or K floats (torchjd's
        ``reference``); only without a warm-up, which learns its own.
      warmup_steps: None (STCH on the losses) or W ≥ 1 (STCH on the log losses after a warm-up
        of W updates, as the official code; its default is 4 epochs).
      task_weights: static positive preference weights λ (the paper's λ, torchjd's
        ``weights``), inside the exponent and on the gradients.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the STCH weights apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` whose ``method_state`` is an :class:`STCHState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.stch(mu=1.0)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([2.0, 1.0]))
      >>> updates  # softmax(2, 1): the larger loss weighs more
      Array([0.7310586 , 0.26894143], dtype=float32)

    References:
      Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024.
      https://arxiv.org/abs/2402.19078 (official code: https://github.com/Xi-L/STCH)
    """
    hyperparams_valid = _validation.all_valid(_validation.check_positive(mu, "mu"))
    if warmup_steps is not None:
        hyperparams_valid = _validation.all_valid(
            hyperparams_valid, _validation.check_positive_int(warmup_steps, "warmup_steps")
        )
        if reference is not None:
            raise ValueError(
                "Parameter `reference` cannot be combined with `warmup_steps`: the warm-up "
                f"learns the ideal point. Found `reference = {reference!r}`."
            )
    if reference is not None:
        _loss_values.check_finite_per_task(
            reference, "reference", _validation.resolve_num_tasks(num_tasks, task_weights)
        )

    return loss_weighting_transformation(
        stch_weighting(mu=mu, reference=reference, warmup_steps=warmup_steps),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
