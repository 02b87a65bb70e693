r"""MoDo: multi-objective gradient descent with double sampling (Chen, Fernando, Ying & Chen,
NeurIPS 2023, "Three-way trade-off in multi-objective learning").

MoDo keeps MGDA's weights λ on the simplex in its state and moves them by one projected gradient
step per update on the regularised min-norm objective
:math:`\tfrac12\|\sum_i\lambda_i g_i\|^2 + \tfrac\rho2\|\lambda\|^2`, whose gradient
:math:`G\lambda + \rho\lambda` it estimates from two independent gradient samples
(:math:`G_{ij} = \langle\xi^1_i, \xi^2_j\rangle`, unbiased), instead of solving MGDA's problem at
every step:

.. math::

  \lambda \leftarrow \Pi_\Delta\bigl(\lambda - \gamma\,(G\lambda + \rho\lambda)\bigr), \qquad
  g = \sum_i \lambda_i g_i .

γ trades optimisation, generalisation and conflict avoidance: γ → 0 keeps the average gradient,
a large γ tracks MGDA's direction.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.projections import projection_simplex

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._double_sampling import with_weight_gradients

_NAME = "modo"


class MoDoState(NamedTuple):
    """MoDo's own state (``MultiTaskState.method_state``)."""

    weights: jax.Array  # (K,) float32, λ on the simplex (on the weighted gradients h_i).


def modo_weighting(*, gamma: float = 0.1, rho: float = 0.0) -> Weighting:
    """MoDo's :class:`~camegrad_jax.Weighting` (see :func:`modo`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> MoDoState:
        return MoDoState(weights=jnp.full((k,), 1.0 / k, jnp.float32))

    def weighting(gram, state: MoDoState, weights, **extra_args) -> WeightingResult:
        # Inside `modo` G comes as `sample_gram`, in the gradients' own units, from
        # `with_weight_gradients` (the builder's is None); called directly, G itself.
        sample_gram = extra_args.get("sample_gram", gram)
        dtype = sample_gram.dtype
        weighted = _gram.weighted_gram(sample_gram, weights.astype(dtype))
        lam = state.weights.astype(dtype)
        step = weighted @ lam + jnp.asarray(rho, dtype) * lam
        lam = projection_simplex(lam - jnp.asarray(gamma, dtype) * step).astype(dtype)
        coefficients, new_state = _gram.guard_non_finite(
            sample_gram, lam * weights, MoDoState(weights=lam), state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def modo(
    gamma: float = 0.1,
    rho: float = 0.0,
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""MoDo as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = w_i g_i` (w the static ``task_weights``), their
    Gram matrix G and the weights λ of the previous update (1/K at the start):

    .. math::

      \lambda \leftarrow \Pi_\Delta\bigl(\lambda - \gamma\,(G\lambda + \rho\lambda)\bigr), \qquad
      g = \sum_i \lambda_i h_i .

    γ is a step size in the units of G (squared gradient norms): unlike MGDA's, the update is not
    scale-equivariant, and G is formed in the gradients' own units (no rescaling: in float32 its
    entries must stay between ~1e-38 and ~1e38). It does not depend on the order of the tasks.

    **Double sampling.** MoDo's λ step needs two independent gradient samples
    (:math:`G_{ij} = \langle\xi^1_i, \xi^2_j\rangle`) and the update a third (LibMTL) or the sum
    of the two (the official code). By default this transformation uses its one stacked
    gradient for all of them (the deterministic variant). With separate batches, pass the
    update's gradients as usual and the two others as
    ``update(zeta, state, params, weight_gradients=(xi_1, xi_2))``: λ then steps on their cross
    Gram matrix (on the shared leaves), and is applied to ζ; for the official two-sample update,
    pass ζ = ξ¹ + ξ² (or their mean, with the learning rate halved).

    Deviations from the official code (https://github.com/heshandevaka/Trade-Off-MOL):

    * The projection onto the simplex is optax's (the same Euclidean projection as the official
      sort-based routine).
    * Non-finite gradients give a NaN update and leave λ as it was.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      gamma: the step size γ ≥ 0 of λ (official ``gamma_modo``, default 0.1; LibMTL's
        ``MoDo_gamma`` defaults to 1e-3).
      rho: the ℓ2 regularisation ρ ≥ 0 of λ's problem (official ``rho_modo``, default 0;
        LibMTL's ``MoDo_rho`` defaults to 0.1).
      task_weights: static positive weights, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive the sum of the weighted task gradients.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` also accepts
      ``weight_gradients=(xi_1, xi_2)``; its state is a :class:`camegrad_jax.MultiTaskState`
      with a :class:`MoDoState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.modo(gamma=0.1)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> state.method_state.weights  # (1/2, 1/2) − 0.1 (1/2, 2), projected
      Array([0.575, 0.425], dtype=float32)
      >>> updates["w"]
      Array([0.575, 0.85 ], dtype=float32)

    References:
      Chen, Fernando, Ying & Chen, Three-Way Trade-Off in Multi-Objective Learning:
      Optimization, Generalization and Conflict-Avoidance, NeurIPS 2023.
      https://arxiv.org/abs/2305.20057
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(gamma, "gamma"),
        _validation.check_non_negative(rho, "rho"),
    )

    inner = stacked_gradient_transformation(
        modo_weighting(gamma=gamma, rho=rho),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        uses_gram=False,
        hyperparams_valid=hyperparams_valid,
    )
    return with_weight_gradients(inner, name=_NAME, shared_mask=shared_mask, always=True)
