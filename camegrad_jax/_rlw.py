r"""Random Loss Weighting (RLW): task weights drawn afresh at every step.

Lin, Ye, Xu, Shi & Zhang (TMLR 2022) train with loss weights sampled at each step,
:math:`\lambda = \mathrm{softmax}(\tilde\lambda)` with :math:`\tilde\lambda \sim p`, as a baseline
that any loss- or gradient-balancing method should beat. The default p is the standard normal.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)

_NAME = "rlw"
Distribution = Literal["normal", "uniform", "dirichlet"]
DISTRIBUTIONS: tuple[str, ...] = ("normal", "uniform", "dirichlet")


class RLWState(NamedTuple):
    """RLW's own state (``MultiTaskState.method_state``)."""

    key: jax.Array  # PRNG key of the next draw.


def _sample(key: jax.Array, distribution: str, num_tasks: int, dtype: Any) -> jax.Array:
    if distribution == "normal":
        return jax.random.normal(key, (num_tasks,), dtype)
    if distribution == "uniform":
        return jax.random.uniform(key, (num_tasks,), dtype)
    return jax.random.dirichlet(key, jnp.ones((num_tasks,), dtype))


def rlw_weighting(*, distribution: Distribution = "normal", seed: int = 0) -> Weighting:
    """RLW's :class:`~camegrad_jax.Weighting` (see :func:`rlw`, which checks the
    hyper-parameters): weights drawn from the PRNG key in its state; it reads neither the Gram
    matrix (the builder does not form it) nor the losses."""

    def init_method_state(k: int) -> RLWState:
        del k
        return RLWState(key=jax.random.PRNGKey(seed))

    def weighting(gram, state: RLWState, weights, **extra_args):
        del gram, extra_args
        key, draw = jax.random.split(state.key)
        sample = _sample(draw, distribution, weights.shape[0], weights.dtype)
        return WeightingResult(jax.nn.softmax(sample) * weights, RLWState(key=key))

    return Weighting(init_method_state, weighting)


def rlw(
    *,
    distribution: Distribution = "normal",
    seed: int = 0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Random Loss Weighting as an optax transformation over stacked per-task gradients.

    At every step a fresh sample :math:`\tilde\lambda \sim p` gives

    .. math::

      w = \mathrm{softmax}(\tilde\lambda), \qquad g = \sum_i w_i\, \lambda_i\, g_i ,

    so the weights lie on the simplex (their sum is 1, not K: the update is about 1/K of the
    linear-scalarization sum's size). As in LibMTL's ``RLW``, the softmax is applied to the
    sample for all three distributions: ``"normal"`` (N(0, 1), the paper's default),
    ``"uniform"`` (U(0, 1)) and ``"dirichlet"`` (Dir(1, …, 1)). LibMTL's Bernoulli variants are
    not offered. The losses themselves are not needed: the gradient of
    :math:`\sum_i w_i L_i` is :math:`\sum_i w_i g_i`.

    The draws are a deterministic function of ``seed`` and the step; the PRNG key is kept in the
    state.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      distribution: ``"normal"``, ``"uniform"`` or ``"dirichlet"``.
      seed: integer seed of the PRNG key.
      task_weights: static positive weights λ, multiplying the random weights.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves the random weights apply to (default all, as in the paper); the other
        leaves receive the linear-scalarization gradient Σ λ_i g_i.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(task_updates, state, params=None,
      **extra_args)`` ignores extra arguments. The state is a :class:`MultiTaskState` whose
      ``method_state`` is an :class:`RLWState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import rlw
      >>> tx = rlw(seed=0, num_tasks=3)
      >>> params = jnp.zeros(2)
      >>> _, state = tx.update(jnp.ones((3, 2)), tx.init(params), params)
      >>> round(float(state.coefficients.sum()), 6)  # on the simplex
      1.0

    References:
      Lin, Ye, Xu, Shi & Zhang, Reasonable Effectiveness of Random Weighting: A Litmus Test for
      Multi-Task Learning, TMLR 2022. https://arxiv.org/abs/2111.10603
    """
    _validation.check_choice(distribution, DISTRIBUTIONS, "distribution")
    _loss_values.check_integer(seed, "seed")

    return stacked_gradient_transformation(
        rlw_weighting(distribution=distribution, seed=seed),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        uses_gram=False,
    )
