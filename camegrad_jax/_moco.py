r"""MoCo: stochastic multi-objective gradient correction (Fernando et al., ICLR 2023).

MGDA's weights computed from mini-batch gradients are biased. MoCo tracks each task's gradient
with a moving estimate :math:`y_i` and moves the task weights λ by one projected-gradient step of
MGDA's min-norm objective :math:`\tfrac12\|Y\lambda\|^2 + \tfrac{\rho}{2}\|\lambda\|^2` per
update, instead of solving it on the current batch:

.. math::

  y_i(t) = y_i(t-1) - \beta_t\bigl(y_i(t-1) - \hat g_i(t)\bigr), \qquad
  \lambda(t) = \Pi_\Delta\Bigl(\lambda(t-1) - \gamma_t\bigl(Y Y^\top + \rho I\bigr)
    \lambda(t-1)\Bigr), \qquad g(t) = \sum_i \lambda_i(t)\, y_i(t),

with :math:`\beta_t = \beta / t^{\sigma_\beta}` and :math:`\gamma_t = \gamma / t^{\sigma_\gamma}`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.projections import projection_simplex

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._tracking import tracked_gradient_transformation

_NAME = "moco"
GradientNormalization = Literal["loss", "none"]
GRADIENT_NORMALIZATIONS: tuple[str, ...] = ("loss", "none")
WeightsUpdate = Literal["projection", "softmax"]
WEIGHTS_UPDATES: tuple[str, ...] = ("projection", "softmax")


class MoCoState(NamedTuple):
    """MoCo's weights (``TrackedState.weighting.method_state``)."""

    weights: jax.Array  # (K,) float32, λ on the simplex; the update is Σ_i λ_i y_i.
    count: jax.Array  # () int32, accepted updates so far (t − 1 during step t).


def _task_norms(leaves: list[jax.Array]) -> jax.Array:
    """(K,) norms of the stacked leaves' task slices, scaled by their largest entry first so
    that the squares neither overflow nor underflow."""
    k = leaves[0].shape[0]
    largest = jnp.max(
        jnp.stack([jnp.max(jnp.abs(leaf.reshape(k, -1)), axis=1) for leaf in leaves]), 0
    )
    scale = jnp.where(largest > 0, largest, 1.0)
    squares = sum(
        jnp.sum(jnp.square(leaf.reshape(k, -1) / scale[:, None]), axis=1) for leaf in leaves
    )
    return scale * jnp.sqrt(squares)


def moco(
    *,
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    gradient_normalization: GradientNormalization = "loss",
    weights_update: WeightsUpdate = "projection",
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""MoCo as an optax transformation over stacked per-task gradients.

    At step t = 1, 2, ..., on the shared leaves, with weighted losses :math:`\ell_i = \lambda_i
    L_i` passed as ``value`` (here λ are the static ``task_weights``; the task weights MoCo
    learns are written w):

    .. math::

      \hat g_i &= \ell_i \frac{g_i}{\|g_i\|} \ (\texttt{"loss"}) \ \text{or} \
        \lambda_i g_i \ (\texttt{"none"}), \qquad
      y_i(t) = y_i(t-1) - \frac{\beta}{t^{\sigma_\beta}}\bigl(y_i(t-1) - \hat g_i\bigr),
      \quad y_i(0) = 0, \\
      w(t) &= P\Bigl(w(t-1) - \frac{\gamma}{t^{\sigma_\gamma}}\bigl(Y Y^\top + \rho I\bigr)
        w(t-1)\Bigr), \quad w(0) = \tfrac1K \mathbb{1}, \qquad
      g = \sum_i w_i(t)\, y_i(t),

    where :math:`Y Y^\top` is the Gram matrix of the new estimates and P is the Euclidean
    projection onto the simplex (``weights_update="projection"``, the paper's Algorithm 1) or a
    softmax (``"softmax"``, as LibMTL's and torchjd's ``MoCo``, both from the authors' code).
    The other leaves (task-specific heads) receive :math:`\sum_i \lambda_i g_i`.

    ``gradient_normalization="loss"`` (default) is LibMTL's: every task gradient is rescaled to
    the norm of its loss before tracking, which needs ``value=losses``; ``"none"`` tracks the
    gradients themselves, as the paper's Algorithm 1 and torchjd do (no losses needed).

    The estimates are kept in the state: K times the shared parameters' memory, in at least
    float32. A step whose update is not finite leaves the state as it was and returns a NaN
    update, so that a downstream ``optax.apply_if_finite`` rejects it.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Deviations from the official code (LibMTL's ``MoCo``, ``MoCo_*`` arguments): the gradient
    normalisation divides by :math:`\|g_i\|` rather than :math:`\|g_i\| + 10^{-8}` (a zero
    gradient is tracked as zero), so the update does not depend on the gradients' scale; the
    paper's projection of :math:`y_i` onto a ball of radius :math:`L_i` (a bound its analysis
    assumes) is not applied, as in LibMTL. Where the estimates' Gram entries leave the float
    range (around 1e±19 in float32), the weights' step sees them divided by a power of two.

    Args:
      beta: β ≥ 0, the tracking step (LibMTL ``MoCo_beta``: 0.5).
      beta_sigma: its decay exponent σ_β ≥ 0 (LibMTL: 0.5).
      gamma: γ ≥ 0, the weights' step (LibMTL ``MoCo_gamma``: 0.1).
      gamma_sigma: its decay exponent σ_γ ≥ 0 (LibMTL: 0.5).
      rho: ρ ≥ 0, the weights' ℓ2 regularisation (LibMTL ``MoCo_rho``: 0).
      gradient_normalization: ``"loss"`` (default, LibMTL; needs ``value``) or ``"none"``.
      weights_update: ``"projection"`` (default, the paper) or ``"softmax"`` (LibMTL, torchjd).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves that carry the estimates (default all); the others receive
        :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, value)`` needs ``value`` (the (K,) task losses) when
      ``gradient_normalization="loss"``. Its state is a ``TrackedState``: the estimates
      ``estimates``, the step ``count``, and in ``weighting`` a
      :class:`camegrad_jax.MultiTaskState` whose ``method_state`` is a :class:`MoCoState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.moco(beta=1.0, gamma=0.5, gradient_normalization="none")
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # β = 1: Y = the gradients
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> state.weighting.method_state.weights  # Π((1/2, 1/2) − (1/4, 1)) = Π(1/4, −1/2)
      Array([0.875, 0.125], dtype=float32)
      >>> updates
      Array([0.875, 0.25 ], dtype=float32)

    References:
      Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, Mitigating Gradient Bias in
      Multi-objective Learning: A Provably Convergent Approach, ICLR 2023.
      https://openreview.net/forum?id=dLAYGdKTi2 (code: LibMTL, ``LibMTL/weighting/MoCo.py``,
      https://github.com/median-research-group/LibMTL)
    """
    _validation.check_choice(
        gradient_normalization, GRADIENT_NORMALIZATIONS, "gradient_normalization"
    )
    _validation.check_choice(weights_update, WEIGHTS_UPDATES, "weights_update")
    hyperparams_valid = _validation.all_valid(
        *(
            _validation.check_non_negative(value, name)
            for name, value in (
                ("beta", beta),
                ("beta_sigma", beta_sigma),
                ("gamma", gamma),
                ("gamma_sigma", gamma_sigma),
                ("rho", rho),
            )
        )
    )

    def init_method_state(k: int) -> MoCoState:
        return MoCoState(
            weights=jnp.full((k,), 1.0 / k, jnp.float32), count=jnp.zeros((), jnp.int32)
        )

    def weighting(gram, state: MoCoState, weights, **extra_args) -> WeightingResult:
        del weights, extra_args
        dtype = gram.dtype
        step = (state.count + 1).astype(dtype)
        previous = state.weights.astype(dtype)
        regularised = gram + jnp.asarray(rho, dtype) * jnp.eye(gram.shape[0], dtype=dtype)
        moved = previous - jnp.asarray(gamma, dtype) / step**gamma_sigma * (regularised @ previous)
        if weights_update == "projection":
            new_weights = projection_simplex(moved)
        else:
            new_weights = jax.nn.softmax(moved)
        finite = jnp.all(jnp.isfinite(new_weights))
        new_state = MoCoState(
            weights=jnp.where(finite, new_weights, previous),
            count=jnp.where(finite, optax.safe_int32_increment(state.count), state.count),
        )
        return WeightingResult(jnp.where(finite, new_weights, jnp.nan), new_state)

    correct = stacked_gradient_transformation(
        Weighting(init_method_state, weighting),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=None,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )

    def targets(shared, private, weights, extra_args):
        k = weights.shape[0]
        if gradient_normalization == "loss":
            losses = weights * _loss_values.task_losses(extra_args, k, _NAME, weights.dtype)
            norms = _task_norms(shared)
            factors = jnp.where(norms > 0, losses / jnp.where(norms > 0, norms, 1.0), 0.0)
            # A non-finite loss must poison the step even where its gradient is zero.
            factors = jnp.where(jnp.isfinite(losses), factors, jnp.nan)
        else:
            factors = weights

        def scale(leaf, by):
            return leaf * by.reshape((k,) + (1,) * (leaf.ndim - 1))

        return [scale(leaf, factors) for leaf in shared], [scale(leaf, weights) for leaf in private]

    def retention(step):
        return 1 - beta / step**beta_sigma

    return tracked_gradient_transformation(
        correct,
        targets,
        retention,
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
