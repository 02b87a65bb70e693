r"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao et al., NeurIPS
2023).

SDMGrad looks for the direction d that maximises the worst task's improvement while staying
close to the average gradient :math:`g_0`: its weights w on the simplex minimise

.. math::

  \tfrac12 \|G^{1/2}w\|^2 + \lambda\, w^\top G \tfrac{\mathbb{1}}{K}
  \quad\Rightarrow\quad d = \frac{\sum_i w_i h_i + \lambda g_0}{1 + \lambda},

approached by a few projected (heavy-ball) gradient steps per update, warm-started from the
previous update's w; λ regularises towards the average (λ → ∞ is linear scalarization, λ = 0
MGDA's objective).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from optax.projections import projection_simplex

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._double_sampling import with_weight_gradients

_NAME = "sdmgrad"
# The official inner loop's momentum: torch.optim.SGD(lr=10, momentum=0.5), rebuilt each update.
_WEIGHTS_MOMENTUM = 0.5


class SDMGradState(NamedTuple):
    """SDMGrad's own state (``MultiTaskState.method_state``)."""

    weights: jax.Array  # (K,) float32, w on the simplex: the next update's starting point.


def sdmgrad_weights(
    gram: jax.Array,
    init: jax.Array,
    lamda: float | jax.Array,
    niter: int | jax.Array,
    learning_rate: float | jax.Array | None = None,
) -> jax.Array:
    r"""SDMGrad's ``niter`` projected heavy-ball steps on w from ``init``.

    With :math:`\hat G = G / s^2`, :math:`s` the mean of the task norms
    :math:`\sqrt{G_{ii}}`, each step is
    :math:`m \leftarrow \mu m + \hat G w + \lambda \hat G \mathbb{1}/K`,
    :math:`w \leftarrow \Pi_\Delta(w - \eta m)` with μ = 0.5 and m = 0 at the start.

    Args:
      gram: (K, K) Gram matrix of the (weighted) task gradients, or the cross Gram matrix of two
        independent samples (its diagonal is then clipped at 0 for the scale).
      init: (K,) starting weights on the simplex.
      lamda: the regularisation λ ≥ 0 towards the average gradient.
      niter: the number of steps (may be traced).
      learning_rate: the step η on :math:`\hat G`; None: :math:`1 / \|\hat G\|_2`, the inverse
        curvature, with which the steps converge (the official code's is 10).

    Returns:
      (K,) w on the simplex.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._sdmgrad import sdmgrad_weights
      >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])
      >>> w = sdmgrad_weights(gram, jnp.full(2, 0.5), 0.0, 50)  # λ = 0: MGDA's min-norm point
      >>> [round(x, 4) for x in w.tolist()]
      [0.8, 0.2]
      >>> sdmgrad_weights(gram, jnp.full(2, 0.5), 0.0, 1, learning_rate=10.0)  # official step
      Array([1., 0.], dtype=float32)
    """
    dtype = gram.dtype
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    scale_sq = jnp.square(jnp.mean(norms))
    normalised = gram / jnp.where(scale_sq > 0, scale_sq, 1.0)
    towards_average = jnp.asarray(lamda, dtype) * jnp.mean(normalised, axis=1)
    if learning_rate is None:
        curvature = jnp.linalg.norm(normalised, 2)
        step_size = 1.0 / jnp.where(curvature > 0, curvature, 1.0)
    else:
        step_size = jnp.asarray(learning_rate, dtype)

    def step(_, carry):
        weights, momentum = carry
        momentum = _WEIGHTS_MOMENTUM * momentum + normalised @ weights + towards_average
        weights = projection_simplex(weights - step_size * momentum)
        return weights.astype(dtype), momentum

    weights, _ = lax.fori_loop(0, niter, step, (init.astype(dtype), jnp.zeros_like(init, dtype)))
    return weights


def sdmgrad_weighting(
    *, lamda: float = 0.3, niter: int = 20, learning_rate: float | None = None
) -> Weighting:
    """SDMGrad's :class:`~camegrad_jax.Weighting` (see :func:`sdmgrad`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> SDMGradState:
        return SDMGradState(weights=jnp.full((k,), 1.0 / k, jnp.float32))

    def weighting(gram, state: SDMGradState, weights, **extra_args) -> WeightingResult:
        gram = extra_args.get("sample_gram", gram)
        dtype = gram.dtype
        num_tasks_ = gram.shape[0]
        w = sdmgrad_weights(
            _gram.weighted_gram(gram, weights),
            state.weights.astype(dtype),
            lamda,
            niter,
            learning_rate,
        )
        lamda_ = jnp.asarray(lamda, dtype)
        beta = num_tasks_ * (w + lamda_ / num_tasks_) / (1.0 + lamda_)
        coefficients, new_state = _gram.guard_non_finite(
            gram, beta * weights, SDMGradState(weights=w), state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def sdmgrad(
    lamda: float = 0.3,
    niter: int = 20,
    *,
    learning_rate: float | None = None,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""SDMGrad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` (λ_i the static ``task_weights``,
    not SDMGrad's λ), their Gram matrix G and the previous update's weights w on the simplex,
    each update takes ``niter`` projected heavy-ball steps on
    :math:`\tfrac12 w^\top\hat G w + \lambda\, w^\top \hat G\mathbb{1}/K` (see
    :func:`sdmgrad_weights`), then

    .. math::

      g = K\,\frac{\sum_i w_i h_i + \lambda \frac1K \sum_i h_i}{1 + \lambda},

    the factor K being the official code's ("to match the sum loss"). The update is
    scale-equivariant and, from equal starting weights, invariant to the order of the tasks.

    **Three gradient samples.** The official algorithm estimates G from two independent
    mini-batches, :math:`G_{ij} = \langle\xi^1_i, \xi^2_j\rangle`, and applies w to a third,
    ζ. By default this transformation uses its one stacked gradient for all three (the
    deterministic variant; the official code does the same in effect, since its three gradient
    buffers are one tensor, ``[torch.Tensor(...)] * 3``, left holding the last batch's
    gradients). With separate batches, pass the update's gradients as usual and the two others
    as ``update(zeta, state, params, weight_gradients=(xi_1, xi_2))``: w is then stepped on their
    cross Gram matrix (on the shared leaves), and applied to ζ.

    Deviations from the official code (https://github.com/OptMN-Lab/sdmgrad):

    * The steps on w have size 1/‖Ĝ‖₂ by default, the inverse curvature of their objective, so
      that they converge. The official step, 10 on the Gram matrix normalised to unit mean task
      norm (``learning_rate=10.0``), is several times the inverse curvature on most problems:
      the iterates then jump between faces of the simplex instead of converging, and w — where
      the ``niter``-th jump leaves it — changes entirely with the round-off of G (a compiled and
      an eager step, or two scales of the same gradients, disagree).
    * The Gram matrix is normalised by the squared mean task norm exactly (the official code adds
      1e-4 to every squared norm, which changes w for gradients of norm below ~1e-2); the
      diagonal of a cross Gram matrix is clipped at 0 first, as LibMTL does.
    * The official ``backward`` clips the shared parameters' gradient norm (``max_norm = 1.0``);
      that belongs to the downstream optimizer here:
      ``optax.chain(sdmgrad(...), optax.clip_by_global_norm(1.0), optax.adam(...))``.
    * Non-finite gradients give a NaN update and leave w as it was.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      lamda: the regularisation λ ≥ 0 towards the average gradient (official ``lamda``, 0.3 in
        the official experiments and LibMTL).
      niter: projected steps on w per update, a positive integer (official ``niter``, 20).
      learning_rate: the step size of those steps on the normalised Gram matrix, > 0; None (the
        default) for the inverse curvature (see the deviations; the official value is 10).
      task_weights: static positive weights, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive the sum of the weighted task gradients.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` also accepts
      ``weight_gradients=(xi_1, xi_2)``; its state is a :class:`camegrad_jax.MultiTaskState`
      with an :class:`SDMGradState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.sdmgrad(lamda=0.0, niter=50)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> [round(x, 4) for x in state.method_state.weights.tolist()]  # λ = 0: MGDA's point
      [0.8, 0.2]
      >>> [round(x, 4) for x in updates["w"].tolist()]  # K Σ w_i h_i
      [1.6, 0.8]

    References:
      Xiao, Ban & Ji, Direction-oriented Multi-objective Learning: Simple and Provable
      Stochastic Algorithms, NeurIPS 2023. https://arxiv.org/abs/2305.18409
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(lamda, "lamda"),
        _validation.check_positive_int(niter, "niter"),
        True
        if learning_rate is None
        else _validation.check_positive(learning_rate, "learning_rate"),
    )

    inner = stacked_gradient_transformation(
        sdmgrad_weighting(lamda=lamda, niter=niter, learning_rate=learning_rate),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
    return with_weight_gradients(inner, name=_NAME, shared_mask=shared_mask, always=False)
