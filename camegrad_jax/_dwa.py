r"""Dynamic Weight Average (DWA): task weights from the tasks' recent rates of loss descent.

Liu, Johns & Davison (CVPR 2019, the MTAN paper) weight task i in epoch e by a softmax over the
ratio of its average training losses in the two previous epochs:

.. math::

  r_i(e) = \frac{\bar L_i(e-1)}{\bar L_i(e-2)}, \qquad
  w_i(e) = K\, \frac{\exp(r_i(e) / T)}{\sum_j \exp(r_j(e) / T)},

and :math:`w_i = 1` in the first two epochs. A task whose loss falls slowly gets more weight.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation

_NAME = "dwa"


class DWAState(NamedTuple):
    """DWA's own state (``MultiTaskState.method_state``): the running epoch averages."""

    step_in_epoch: jax.Array  # () int32, updates seen in the current epoch.
    epoch_loss_sum: jax.Array  # (K,) float32, Σ of the (weighted) losses in the current epoch.
    last_average: jax.Array  # (K,) float32, L̄(e − 1), the last complete epoch's average.
    previous_average: jax.Array  # (K,) float32, L̄(e − 2).
    completed_epochs: jax.Array  # () int32, complete epochs so far, saturating at 2.


def dwa_weighting(*, epoch_length: int, temperature: float = 2.0) -> LossWeighting:
    """DWA's :class:`~camegrad_jax.LossWeighting` (see :func:`dwa`, which checks
    the hyper-parameters): from the raw task losses, the method's state and the task weights
    to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> DWAState:
        zeros = jnp.zeros((k,), jnp.float32)
        return DWAState(
            step_in_epoch=jnp.zeros((), jnp.int32),
            epoch_loss_sum=zeros,
            last_average=zeros,
            previous_average=zeros,
            completed_epochs=jnp.zeros((), jnp.int32),
        )

    def weighting(losses, state: DWAState, weights):
        dtype = weights.dtype
        k = weights.shape[0]
        losses = weights * losses

        last, previous = state.last_average.astype(dtype), state.previous_average.astype(dtype)
        ratio = jnp.where(previous > 0, last / jnp.where(previous > 0, previous, 1.0), 1.0)
        dynamic = k * jax.nn.softmax(ratio / jnp.asarray(temperature, dtype))
        loss_weights = jnp.where(state.completed_epochs >= 2, dynamic, jnp.ones_like(dynamic))

        # Accumulate this step's losses; close the epoch after `epoch_length` steps.
        step = state.step_in_epoch + 1
        total = state.epoch_loss_sum.astype(dtype) + losses
        closes = step >= jnp.asarray(epoch_length, jnp.int32)
        average = total / jnp.asarray(epoch_length, dtype)
        stepped = DWAState(
            step_in_epoch=jnp.where(closes, 0, step).astype(jnp.int32),
            epoch_loss_sum=jnp.where(closes, jnp.zeros_like(total), total),
            last_average=jnp.where(closes, average, last),
            previous_average=jnp.where(closes, last, previous),
            completed_epochs=jnp.minimum(state.completed_epochs + closes.astype(jnp.int32), 2),
        )
        finite = _loss_values.all_finite(losses)
        new_state = _loss_values.keep_if(finite, stepped, state)
        coefficients = jnp.where(finite, loss_weights * weights, jnp.nan)
        return WeightingResult(coefficients, new_state)

    return LossWeighting(init_method_state, weighting)


def dwa(
    *,
    epoch_length: int,
    temperature: float = 2.0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Dynamic Weight Average as an optax transformation over stacked per-task gradients.

    A transformation sees one batch at a time, so epochs are counted in updates: every
    ``epoch_length`` updates close an epoch, whose average loss per task
    :math:`\bar L_i(e) = \frac{1}{N}\sum_{\text{steps of } e} \lambda_i L_i` (the official code's
    ``avg_cost``) is kept in the state. During epoch e,

    .. math::

      g = \sum_i w_i(e)\, \lambda_i\, g_i, \qquad
      w(e) = K\,\mathrm{softmax}\bigl(r(e) / T\bigr) \text{ if } e \ge 2 \text{ else } \mathbb{1}.

    Where :math:`\bar L_i(e-2) = 0` the ratio is 0/0 (or infinite) in the paper; it is taken as
    1 here. A step with non-finite losses is not counted and returns a NaN update (so that a
    downstream ``optax.apply_if_finite`` rejects it).

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      epoch_length: number of updates per epoch (the number of batches of the training set),
        a positive integer.
      temperature: softmax temperature T > 0 (paper: 2).
      task_weights: static positive weights λ; the averages are of the weighted losses
        (λ cancels in the ratios) and the coefficients on the raw gradients are
        :math:`w_i \lambda_i`.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves DWA's weights apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value``, the (K,) task losses at the current parameters.
      The state is a :class:`MultiTaskState` whose ``method_state`` is a :class:`DWAState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import dwa
      >>> tx = dwa(epoch_length=1, temperature=2.0, num_tasks=2)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> state = tx.init(params)
      >>> for losses in ([1.0, 1.0], [0.5, 1.0]):  # two epochs of one step: equal weights
      ...     _, state = tx.update(grads, state, params, value=jnp.array(losses))
      >>> updates, state = tx.update(grads, state, params, value=jnp.array([0.4, 0.9]))
      >>> updates  # ratios (0.5, 1.0): the slower task 2 gets more weight
      Array([0.87564707, 1.124353  ], dtype=float32)

    References:
      Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019.
      https://arxiv.org/abs/1803.10704 (official code: https://github.com/lorenmt/mtan)
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_positive_int(epoch_length, "epoch_length"),
        _validation.check_positive(temperature, "temperature"),
    )

    return loss_weighting_transformation(
        dwa_weighting(epoch_length=epoch_length, temperature=temperature),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
