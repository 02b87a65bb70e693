r"""PCD: Priority-Constrained Descent for hierarchical multi-objective optimization.

The first task is the *primary* objective; the others are secondary. PCD follows the primary
gradient as closely as it can while guaranteeing every secondary objective a fraction τ of the
first-order progress that a step along its own normalised gradient would give:

.. math::

  \tilde d = \arg\min_d \tfrac12\|d - \tilde g_1\|^2 \quad \text{s.t.} \quad
  \tilde g_j^\top d \ge \tau_j \|\tilde g_j\|^2 \ (j = 2, \dots, K),

with :math:`\tilde g_i = s_i g_i` normalised by a moving average of the squared gradient norms,
and the update is :math:`\tilde d` rescaled to :math:`\|g_1\|`. By the KKT conditions
:math:`\tilde d = \tilde g_1 + \sum_j \mu_j \tilde g_j` with multipliers μ ≥ 0 that solve a
non-negative quadratic program on the Gram matrix, so the whole method runs on the K × K Gram.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._enumerate_dual import MAX_TASKS, nonnegative_quadratic

_NAME = "pcd"


class PCDState(NamedTuple):
    """PCD's own state (``MultiTaskState.method_state``)."""

    squared_norm_average: jax.Array  # (K,) float32, v: moving average of ‖h_i‖² (not debiased).
    count: jax.Array  # () int32, accepted updates so far.
    multipliers: jax.Array  # (K,) float32, (1, μ_2, ..., μ_K): d̃ = Σ_i multipliers_i g̃_i.
    feasible: jax.Array  # () bool, whether the constraints could all be met (else d̃ = g̃_1).


def _check_tau(tau: Any) -> _validation.Verdict:
    if _validation.is_traced(tau):
        return jnp.all((tau >= 0) & (tau <= 1))
    if np.ndim(tau) == 0:
        return _validation.check_unit_interval(tau, "tau")
    values = np.asarray(tau, dtype=np.float64)
    if values.ndim != 1 or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(
            "Parameter `tau` should be a float in [0, 1] or a 1-D sequence of K − 1 such floats "
            f"(one per secondary task). Found `tau = {tau!r}`."
        )
    return True


def _check_beta(beta: Any) -> _validation.Verdict:
    verdict = _validation.check_unit_interval(beta, "beta")
    if _validation.is_traced(beta):
        return verdict & (beta < 1)
    if beta == 1:
        raise ValueError(f"Parameter `beta` should be in [0, 1). Found `beta = {beta!r}`.")
    return verdict


def _secondary_taus(tau: Any, num_tasks: int, dtype: Any) -> jax.Array:
    if np.ndim(tau) == 1 and np.shape(tau)[0] != num_tasks - 1:
        raise ValueError(
            f"Parameter `tau` has {np.shape(tau)[0]} entries, but K = {num_tasks} tasks have "
            f"{num_tasks - 1} secondary ones."
        )
    return jnp.broadcast_to(jnp.asarray(tau, dtype), (num_tasks - 1,))


def constraint_multipliers(gram: jax.Array, taus: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""The multipliers μ of PCD's constraints, from the Gram matrix of the (normalised) gradients
    with the primary task first: ``(multipliers (1, μ_2, ..., μ_K), feasible)``.

    μ solves the dual :math:`\min_{\mu\ge0} \tfrac12 \mu^\top G_{SS}\mu + \mu^\top(G_{S1} -
    \tau \circ \mathrm{diag}\, G_{SS})` (S the secondary tasks), whose gradient is the
    constraints' slack; every active set is solved exactly at once (K − 1 ≤ 8). When the
    constraints cannot all hold (the dual is unbounded), μ = 0 and d̃ = g̃_1, as in torchjd.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._pcd import constraint_multipliers
      >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # g_2ᵀ g_1 < τ ‖g_2‖² for τ = 1/2
      >>> constraint_multipliers(g @ g.T, jnp.array([0.5]))  # g_2ᵀ(g_1 + μ g_2) = ‖g_2‖² / 2
      (Array([1., 1.], dtype=float32), Array(True, dtype=bool))
    """
    trace = jnp.trace(gram)
    normalised = gram / jnp.where(trace > 0, trace, 1.0)
    secondary = normalised[1:, 1:]
    slack_at_primary = normalised[1:, 0] - taus * jnp.diagonal(secondary)
    mu, feasible = nonnegative_quadratic(secondary, slack_at_primary)
    mu = jnp.where(feasible, mu, 0.0)
    return jnp.concatenate([jnp.ones((1,), gram.dtype), mu]), feasible


def pcd_weighting(*, tau: Any = 0.02, beta: float = 0.999, eps: float = 1e-8) -> Weighting:
    """PCD's :class:`~camegrad_jax.Weighting` (see :func:`pcd`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> PCDState:
        return PCDState(
            squared_norm_average=jnp.zeros((k,), jnp.float32),
            count=jnp.zeros((), jnp.int32),
            multipliers=jnp.zeros((k,), jnp.float32),
            feasible=jnp.ones((), bool),
        )

    def weighting(gram, state: PCDState, weights, **extra_args) -> WeightingResult:
        del extra_args
        k = gram.shape[0]
        if k > MAX_TASKS + 1:
            raise ValueError(
                f"pcd enumerates the active sets of its K − 1 constraints and is offered for "
                f"K ≤ {MAX_TASKS + 1}; found K = {k}."
            )
        dtype = gram.dtype
        weighted = _gram.weighted_gram(gram, weights)
        squared_norms = jnp.maximum(jnp.diagonal(weighted), 0.0)
        decay = jnp.asarray(beta, dtype)
        count = state.count + 1
        average = decay * state.squared_norm_average.astype(dtype) + (1 - decay) * squared_norms
        debiased = average / (1 - decay ** count.astype(dtype))
        denominators = jnp.sqrt(debiased + jnp.asarray(eps, dtype))
        # A zero average means the gradient was always zero: its scale does not matter.
        scales = jnp.where(denominators > 0, 1 / jnp.where(denominators > 0, denominators, 1), 0)
        normalised = weighted * scales[:, None] * scales[None, :]
        multipliers, feasible = constraint_multipliers(normalised, _secondary_taus(tau, k, dtype))

        # ‖d̃‖², and the scale of its rounding error when it is read from the Gram matrix.
        direction_sq = multipliers @ normalised @ multipliers
        magnitude = jnp.square(jnp.abs(multipliers) @ jnp.sqrt(jnp.diagonal(normalised)))
        precision = 10 * jnp.finfo(dtype).eps
        live = (squared_norms[0] > 0) & (direction_sq > precision * magnitude)
        rescale = jnp.sqrt(squared_norms[0] / jnp.where(live, direction_sq, 1.0))
        coefficients = jnp.where(live, multipliers * scales * rescale, 0.0)

        new_state = PCDState(
            squared_norm_average=average,
            count=optax.safe_int32_increment(state.count),
            multipliers=multipliers,
            feasible=feasible,
        )
        coefficients, new_state = _gram.guard_non_finite(
            gram, coefficients * weights, new_state, state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def pcd(
    *,
    tau: Any = 0.02,
    beta: float = 0.999,
    eps: float = 1e-8,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Priority-Constrained Descent as an optax transformation over stacked per-task gradients.

    Task 1 (the first row of the stacked gradients, e.g. the first loss) is the primary
    objective. With weighted gradients :math:`h_i = \lambda_i g_i`, at step t:

    .. math::

      v_i(t) &= \beta v_i(t-1) + (1 - \beta)\|h_i\|^2, \quad v(0) = 0, \qquad
      s_i = \Bigl(\frac{v_i(t)}{1 - \beta^t} + \epsilon\Bigr)^{-1/2}, \qquad
      \tilde h_i = s_i h_i, \\
      \tilde d &= \arg\min_d \tfrac12\|d - \tilde h_1\|^2 \ \text{ s.t. } \
        \tilde h_j^\top d \ge \tau_j \|\tilde h_j\|^2 \ (j \ge 2)
        = \tilde h_1 + \sum_{j\ge2} \mu_j \tilde h_j, \qquad
      g = \frac{\|h_1\|}{\|\tilde d\|}\, \tilde d .

    Special cases, as in torchjd: :math:`h_1 = 0` gives 0; constraints that cannot all hold
    (K ≥ 3, e.g. two opposite secondary gradients) are dropped (:math:`\tilde d = \tilde h_1`);
    a :math:`\tilde d` that is 0 up to the Gram matrix's rounding gives 0; a task whose moving
    average is 0 with ``eps = 0`` gets :math:`s_i = 0`. A step with non-finite gradients returns
    a NaN update and leaves the moving average as it was.

    Because of the normalisation, τ is a scale-free fraction: multiplying a secondary task's
    gradients by a constant at every step leaves the update unchanged, up to ε.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Deviations from the official code (torchjd's ``PCD``/``PCDWeighting``): the quadratic program
    is solved by enumerating the active sets of its K − 1 constraints, each solved exactly,
    rather than by Goldfarb and Idnani's dual active-set method (the reference implementation
    also enumerates; both find the same minimiser), so K ≤ 9; it runs in the Gram matrix's
    dtype (≥ float32) inside the compiled step rather than in float64 on the host. Where the
    gradients' common scale leaves float range (Gram entries around 1e±19 in float32), the moving
    average sees the Gram matrix divided by a power of two.

    Args:
      tau: τ ∈ [0, 1], the guaranteed fraction of each secondary task's normalised progress; a
        float or a 1-D sequence of K − 1 floats, one per secondary task (torchjd: 0.02).
      beta: β ∈ [0, 1), the decay of the moving average of squared norms (torchjd: 0.999).
      eps: ε ≥ 0 added to the debiased moving average (torchjd: 1e-8).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K ≤ 9, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`PCDState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.pcd(tau=0.0)  # only: do not harm task 2
      >>> grads = jnp.array([[2.0, 0.0], [-3.0, 3.0]])
      >>> updates, state = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates  # g̃_1 projected onto g̃_2ᵀd ≥ 0: (1/2, 1/2), rescaled to ‖g_1‖ = 2
      Array([1.4142135, 1.4142135], dtype=float32)

    References:
      Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
      Multi-Objective Optimization, TMLR 2026. https://openreview.net/forum?id=HT01yGHLEt
      (reference code: https://github.com/DaraVaram/priority-constrained-descent; torchjd's
      ``PCD``: https://github.com/SimplexLab/TorchJD)
    """
    hyperparams_valid = _validation.all_valid(
        _check_tau(tau), _check_beta(beta), _validation.check_non_negative(eps, "eps")
    )

    return stacked_gradient_transformation(
        pcd_weighting(tau=tau, beta=beta, eps=eps),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
