r"""ConFIG: conflict-free updates from the pseudo-inverse of the unit task gradients (Liu, Chu,
Thuerey, ICLR 2025), from the Gram matrix alone."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _gram, _tree
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


def config_coefficients(gram: jax.Array, direction_weights: jax.Array) -> jax.Array:
    r"""Coefficients β of ConFIG's update :math:`\sum_i \beta_i h_i`, from the Gram matrix G of
    the :math:`h_i` and the direction weights w.

    With :math:`D = \operatorname{diag}\|h_i\|` and the cosine matrix :math:`C = D^{-1} G D^{-1}`,
    the direction :math:`d = U^{+} w = \sum_i a_i u_i` has :math:`a = C^{+} w`, i.e.
    :math:`d = \sum_i b_i h_i` with :math:`b = D^{-1} a`; the update
    :math:`(\sum_j \langle h_j, \hat d\rangle) \hat d` is then :math:`\beta = b\,
    \mathbb{1}^\top G b / b^\top G b`. A zero gradient has a zero unit vector (as the official
    ``nan_to_num``) and β = 0 when d = 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> h = jnp.array([[1.0, 0.0], [0.0, 3.0]])
      >>> cg.config_coefficients(h @ h.T, jnp.ones(2))  # d = (1, 1): length 1 + 3
      Array([2.       , 0.6666667], dtype=float32)
    """
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    present = norms > 0
    inverse_norms = jnp.where(present, 1.0 / jnp.where(present, norms, 1.0), 0.0)
    cosine = gram * inverse_norms[:, None] * inverse_norms[None, :]
    b = inverse_norms * (_gram.pseudo_inverse_psd(cosine) @ direction_weights)
    gram_b = gram @ b
    norm_sq = b @ gram_b
    # ‖d‖² ≥ 0 up to round-off; a direction that round-off cannot tell from 0 gives no update.
    round_off = 64 * jnp.finfo(gram.dtype).eps * (jnp.abs(b) @ jnp.abs(gram) @ jnp.abs(b))
    resolvable = norm_sq > round_off
    return jnp.where(resolvable, b * (jnp.sum(gram_b) / jnp.where(resolvable, norm_sq, 1.0)), 0.0)


def config_weighting() -> Weighting:
    """ConFIG's :class:`~camegrad_jax.Weighting` (see :func:`config`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def weighting(gram, state, weights, **extra_args) -> WeightingResult:
        del extra_args
        # On h_i = λ_i g_i: the unit vectors are unchanged, and Σ_j <h_j, d̂> weights the length.
        beta = config_coefficients(_gram.weighted_gram(gram, weights), weights)
        coefficients, state = _gram.guard_non_finite(gram, beta * weights, state, state)
        return WeightingResult(coefficients, state)

    return Weighting(lambda k: optax.EmptyState(), weighting)


def config(
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""ConFIG as an optax transformation over stacked per-task gradients.

    With unit task gradients :math:`u_i = g_i / \|g_i\|` stacked as the rows of U and direction
    weights w (the task weights λ; all ones by default), ConFIG (Equation 2 of the paper) takes
    the direction whose cosine with every task gradient is proportional to its weight, and the
    length of the (weighted) gradients' projections on it:

    .. math::

      d = U^{+} w, \qquad \hat d = d / \|d\|, \qquad
      g = \Big(\sum_i \lambda_i \langle g_i, \hat d\rangle\Big)\, \hat d .

    When the gradients are linearly independent, :math:`\langle g_i, d\rangle = \|g_i\| w_i > 0`:
    g conflicts with no task. Everything is a function of the K × K Gram matrix
    (:func:`config_coefficients`), so g is :math:`\sum_i \beta_i g_i`. It is scale-equivariant
    and invariant to the order of the tasks.

    With the default weights this is the official ``ConFIG_update`` (least-squares direction,
    ``EqualWeight``, ``ProjectionLength``) and torchjd's ``ConFIG()``. Task weights λ play the
    role of the official weight model (torchjd's ``pref_vector``) and also weight the projections
    in the length: torchjd's ``ConFIG(pref_vector=λ)`` takes the length
    :math:`\sum_i \langle g_i, \hat d\rangle` instead, so that scaling all λ changes nothing
    there, while here it scales the update as it scales the linear-scalarization gradient.

    Deviations from the official code (https://github.com/tum-pbs/ConFIG): for two tasks the
    official operator switches to its closed form ``ConFIG_update_double`` (orthogonal
    components), which gives the same direction; here one formula serves every K. The
    pseudo-inverse is that of the cosine matrix, with a cutoff relative to its largest
    eigenvalue (``torch.linalg.pinv``'s default is also relative), and ``ProjectionLength``'s
    rescaling is applied as it is, without an absolute ε.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      task_weights: static positive weights λ, one per task (default all ones): the direction
        weights w and the weights of the projections in the length.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` (no method state).

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.config()
      >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # equal angles with both gradients
      Array([0.35355335, 0.8535535 ], dtype=float32)

    References:
      Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural
      Networks, ICLR 2025. https://arxiv.org/abs/2408.11104
    """

    return stacked_gradient_transformation(
        config_weighting(),
        name="config",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
