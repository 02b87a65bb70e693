r"""FAMO: Fast Adaptive Multitask Optimization.

Liu, Liu, Stone & Liu (NeurIPS 2023) keep task logits ξ with weights
:math:`z = \mathrm{softmax}(\xi)` and descend the weighted *log*-losses, normalised so that the
coefficients on the gradients sum to one:

.. math::

  D_i = L_i - L_i^{\min} + \epsilon, \qquad c = \sum_i \frac{z_i}{D_i}, \qquad
  g = \nabla_\theta \sum_i \frac{z_i}{c} \log D_i = \sum_i \frac{z_i / D_i}{c}\, \nabla L_i .

After the step, the logits move to favour the tasks whose log-loss decreased least:
:math:`\delta_i = \log D_i(\text{before}) - \log D_i(\text{after})` and
:math:`\nabla_\xi = J_{\mathrm{softmax}}(\xi)^\top \delta`, applied by Adam with (L2) weight decay,
as the official code does (``FAMO.update``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "famo"
# The official code's guard inside the logarithm, kept as is: it is part of FAMO's formula, and
# it is negligible for any loss measured more than ~1e-6 above its minimum.
_EPSILON = 1e-8


class FamoState(NamedTuple):
    """FAMO's own state (``MultiTaskState.method_state``)."""

    logits: jax.Array  # (K,) float32, ξ; the task weights are softmax(ξ).
    logits_optimizer: Any  # Adam (with L2 weight decay) state of the logits.
    previous_losses: jax.Array  # (K,) float32, the (weighted) losses seen at the previous step.
    count: jax.Array  # () int32, number of updates so far.


def _logits_optimizer(learning_rate, weight_decay) -> optax.GradientTransformation:
    # torch.optim.Adam(weight_decay=γ) adds γ·ξ to the gradient before the moments.
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def famo_weighting(
    *, learning_rate: float = 0.025, weight_decay: float = 1e-3, min_loss: Any = 0.0
) -> LossWeighting:
    """FAMO's :class:`~camegrad_jax.LossWeighting` (see :func:`famo`, which checks
    the hyper-parameters): from the raw task losses, the method's state and the task weights
    to coefficients on the raw gradients and the new state."""
    optimizer = _logits_optimizer(learning_rate, weight_decay)

    def init_method_state(k: int) -> FamoState:
        logits = jnp.zeros((k,), jnp.float32)
        return FamoState(
            logits=logits,
            logits_optimizer=optimizer.init(logits),
            previous_losses=jnp.zeros((k,), jnp.float32),
            count=jnp.zeros((), jnp.int32),
        )

    def weighting(losses, state: FamoState, weights):
        dtype = weights.dtype
        k = weights.shape[0]
        losses = weights * losses
        floor = _loss_values.per_task(min_loss, k, "min_loss", dtype)
        log_losses = jnp.log(losses - floor + _EPSILON)

        # The logits' update of the previous step, with this step's losses as its "after" losses.
        logits = state.logits.astype(dtype)
        decrease = jnp.log(state.previous_losses.astype(dtype) - floor + _EPSILON) - log_losses
        _, softmax_vjp = jax.vjp(jax.nn.softmax, logits)
        (logits_gradient,) = softmax_vjp(decrease)
        step, stepped_optimizer = optimizer.update(logits_gradient, state.logits_optimizer, logits)
        started = state.count > 0
        new_logits = jnp.where(started, logits + step, logits)
        new_optimizer = _loss_values.keep_if(started, stepped_optimizer, state.logits_optimizer)

        z = jax.nn.softmax(new_logits)
        scaled = z / (losses - floor + _EPSILON)
        coefficients = scaled / jnp.sum(scaled)

        finite = _loss_values.all_finite(log_losses, new_logits)
        new_state = FamoState(
            logits=jnp.where(finite, new_logits, logits),
            logits_optimizer=_loss_values.keep_if(finite, new_optimizer, state.logits_optimizer),
            previous_losses=jnp.where(finite, losses, state.previous_losses.astype(dtype)),
            count=jnp.where(finite, optax.safe_int32_increment(state.count), state.count),
        )
        coefficients = jnp.where(finite, coefficients * weights, jnp.nan)
        return WeightingResult(coefficients, new_state)

    return LossWeighting(init_method_state, weighting)


def famo(
    *,
    learning_rate: float = 0.025,
    weight_decay: float = 1e-3,
    min_loss: Any = 0.0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""FAMO as an optax transformation over stacked per-task gradients.

    At step t, with the task losses :math:`\ell_i(t) = \lambda_i L_i(t)` passed as ``value`` and
    :math:`D_i(t) = \ell_i(t) - \ell^{\min}_i + 10^{-8}`:

    .. math::

      \xi(t) &= \xi(t-1) - \mathrm{Adam}_{\eta, \gamma}\Bigl(J_{\mathrm{softmax}}(\xi(t-1))^\top
        \bigl[\log D(t-1) - \log D(t)\bigr]\Bigr) \quad (t \ge 1) \\
      z &= \mathrm{softmax}(\xi(t)), \qquad
      g = \sum_i \frac{z_i / D_i(t)}{\sum_j z_j / D_j(t)}\, \lambda_i\, g_i .

    The official code re-evaluates the losses *on the same batch* after the parameter step and
    calls ``FAMO.update(curr_loss)`` with them. A transformation only sees each step's losses
    once, so the "after-step" losses of step t−1 are approximated by the losses of step t (the
    next batch, at the updated parameters): the logits' update for step t−1 happens at the start
    of step t, before z is formed, which is where the official order puts it too. The first
    update only records the losses. This saves the extra forward pass; the difference is the
    batch-to-batch noise in δ.

    The official ``FAMO.backward`` also clips the shared parameters' gradient norm
    (``max_norm=1.0``); that belongs to the downstream optimizer here:
    ``optax.chain(famo(...), optax.clip_by_global_norm(1.0), optax.adam(...))``.

    The coefficients on the (weighted) gradients lie on the simplex. A step with non-finite
    losses leaves the state unchanged and returns a NaN update (so that a downstream
    ``optax.apply_if_finite`` rejects it). Losses must stay above ``min_loss``.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      learning_rate: Adam step size of the logits, > 0 (official ``w_lr``: 0.025).
      weight_decay: L2 weight decay γ of the logits, ≥ 0 (paper: 1e-3; ``gamma`` in the official
        code, whose standalone class defaults to 0.01).
      min_loss: the losses' known lower bounds :math:`L^{\min}` (a float or K floats, in the units
        of the weighted losses; official ``set_min_losses``, default 0).
      task_weights: static positive weights λ; the method runs on the weighted losses
        :math:`\lambda_i L_i` and the coefficients on the raw gradients carry λ. With
        ``min_loss = 0``, λ cancels from the logits' updates and from the update's direction
        (only the normalisation c sees it), and rescaling every loss by one factor changes
        nothing.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves FAMO's weights apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` whose ``method_state`` is a :class:`FamoState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import famo
      >>> tx = famo(num_tasks=2)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> updates, state = tx.update(grads, tx.init(params), params, value=jnp.array([1.0, 3.0]))
      >>> updates  # z = (1/2, 1/2): coefficients ∝ 1 / L
      Array([0.75, 0.25], dtype=float32)

    References:
      Liu, Liu, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023.
      https://arxiv.org/abs/2306.03792 (official code: https://github.com/Cranial-XIX/FAMO)
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_positive(learning_rate, "learning_rate"),
        _validation.check_non_negative(weight_decay, "weight_decay"),
    )
    _loss_values.check_finite_per_task(
        min_loss, "min_loss", _validation.resolve_num_tasks(num_tasks, task_weights)
    )
    return loss_weighting_transformation(
        famo_weighting(learning_rate=learning_rate, weight_decay=weight_decay, min_loss=min_loss),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
