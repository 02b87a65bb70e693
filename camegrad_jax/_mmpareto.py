r"""MMPareto: Pareto integration with a direction common to all losses and an enhanced magnitude.

Wei & Hu (ICML 2024) train a multimodal model with a multimodal loss and one unimodal loss per
modality; each modality's encoder is shared by two losses. Per encoder, the official code
(``code/MMPareto.py``) does, with the two gradients :math:`g_1, g_2` on the encoder's parameters:

* **direction** — if :math:`\cos(g_1, g_2) > 0`, the equal weights :math:`(\tfrac12, \tfrac12)`;
  otherwise the MGDA min-norm weights :math:`w = \arg\min_{w \in \Delta_2} \|w_1 g_1 + w_2 g_2\|`
  (``MinNormSolver``). The new gradient is :math:`d = 2 (w_1 g_1 + w_2 g_2)`.
* **magnitude** — for every parameter tensor p of the encoder, with :math:`s = g_1 + g_2` the
  gradient of the summed loss: :math:`\nabla_p \leftarrow \gamma \max(\|s_p\| / \|d_p\|, 1)\, d_p`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from camegrad_jax import _dual, _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    split_leaves,
    stacked_gradient_transformation,
    stored,
)

_NAME = "mmpareto"
# Iterations of the projected-gradient phase for three or more tasks (the exact support solve
# that follows usually certifies the optimum long before).
_MAXITER = 500


def _min_norm_of_two(v11: jax.Array, v12: jax.Array, v22: jax.Array):
    """The official ``MinNormSolver._min_norm_element_from2``: the weight of x1 in
    argmin_c ‖c x1 + (1 − c) x2‖, the weight of x2, and the squared norm there, including the
    clipping to 0.999 / 0.001 when one point is the minimiser.

    The weight of x2 is computed as (v11 − v12) / spread, not as 1 − c: when the norms are far
    apart, c rounds to within a few ulps of 1 and the subtraction would lose the digits that
    multiply the larger gradient (a 1e-4 relative error of the update at a spread of 1e12 in
    float64, worse in float32)."""
    spread = v11 + v22 - 2 * v12
    safe_spread = jnp.where(spread > 0, spread, 1.0)
    interior = (v22 - v12) / safe_spread
    interior_complement = (v11 - v12) / safe_spread
    first_is_minimiser, second_is_minimiser = v12 >= v11, v12 >= v22
    weight = jnp.where(first_is_minimiser, 0.999, jnp.where(second_is_minimiser, 0.001, interior))
    complement = jnp.where(
        first_is_minimiser, 0.001, jnp.where(second_is_minimiser, 0.999, interior_complement)
    )
    cost = jnp.where(
        first_is_minimiser, v11, jnp.where(second_is_minimiser, v22, v22 + interior * (v12 - v22))
    )
    return weight, complement, cost


def _best_pair(gram: jax.Array, active: jax.Array) -> jax.Array:
    """The official solver's start: the min-norm point over the best pair of active tasks."""
    k = gram.shape[0]
    diagonal = jnp.diagonal(gram)
    weight, complement, cost = _min_norm_of_two(diagonal[:, None], gram, diagonal[None, :])
    upper = jnp.triu(jnp.ones((k, k), bool), 1) & active[:, None] & active[None, :]
    best = jnp.argmin(jnp.where(upper, cost, jnp.inf))  # first minimum, as the official loop
    i, j = best // k, best % k
    return jnp.zeros((k,), gram.dtype).at[i].set(weight[i, j]).at[j].add(complement[i, j])


def _project_onto_face(x: jax.Array, active: jax.Array) -> jax.Array:
    """Euclidean projection onto the face of the simplex spanned by the active tasks."""
    k = x.shape[0]
    ordered = jnp.sort(jnp.where(active, x, -jnp.inf))[::-1]
    cumulative = jnp.cumsum(jnp.where(jnp.isfinite(ordered), ordered, 0.0))
    counts = jnp.arange(1, k + 1, dtype=x.dtype)
    positive = (ordered - (cumulative - 1) / counts > 0) & (counts <= jnp.sum(active))
    rho = jnp.maximum(jnp.max(jnp.where(positive, jnp.arange(k), 0)), 0)
    threshold = (cumulative[rho] - 1) / (rho + 1)
    return jnp.where(active, jnp.maximum(x - threshold, 0.0), 0.0)


def min_norm_weights(gram: jax.Array, active: jax.Array) -> jax.Array:
    r"""MGDA's min-norm weights :math:`\arg\min_{w} \|\sum_i w_i h_i\|` over the simplex face of
    the active tasks, from a trace-normalised Gram matrix.

    Two active tasks: the official closed form (with its 0.999 / 0.001 clipping). Three or more
    (never reached by the official code, which pairs each encoder with two losses): accelerated
    projected gradient from the best pair, finished by an exact solve on its support that is
    kept only when it verifiably satisfies the optimality conditions (and, where it does not and
    K ≤ 8, by the exact solve on every support of the face).
    """
    k = gram.shape[0]
    pair = _best_pair(gram, active)
    if k == 2:
        return pair
    lipschitz = jnp.linalg.eigvalsh(jnp.where(active[:, None] & active[None, :], gram, 0.0))[-1]
    step = 1.0 / jnp.maximum(lipschitz, jnp.finfo(gram.dtype).tiny)

    def iteration(_, carry):
        weights, extrapolated, momentum = carry
        new = _project_onto_face(extrapolated - step * (gram @ extrapolated), active)
        next_momentum = 0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2))
        extrapolated = new + ((momentum - 1) / next_momentum) * (new - weights)
        return new, extrapolated, next_momentum

    start = (pair, pair, jnp.asarray(1.0, gram.dtype))
    iterated, _, _ = lax.fori_loop(0, _MAXITER, iteration, start)
    # The exact solve of Stage 1's dual with centre 0 and radius 1 (MGDA's) on the support the
    # iterations found, checked task by task on its own scale; where it does not hold (norms
    # far apart slow the iterations down) and K ≤ 8, on every support of the active face.
    zeros = jnp.zeros((k,), gram.dtype)

    def exact_on(support):
        valid, weights, _ = _dual.polish_on_support(support & active, gram, 1.0, zeros, active)
        return valid & jnp.any(support & active) & ~jnp.any(support & ~active), weights

    valid, exact = exact_on(iterated > jnp.finfo(gram.dtype).eps * jnp.max(iterated))
    if k <= _dual.MAX_TASKS_ALL_SUPPORTS:

        def every_support(_):
            candidates_valid, candidates = jax.vmap(exact_on)(_dual.every_support(k))
            norms_sq = jnp.einsum("si,ij,sj->s", candidates, gram, candidates)
            best = jnp.argmin(jnp.where(candidates_valid, norms_sq, jnp.inf))
            return candidates_valid[best], candidates[best]

        valid, exact = lax.cond(valid, lambda _: (valid, exact), every_support, None)
    return jnp.where(jnp.sum(active) == 2, pair, jnp.where(valid, exact, iterated))


def mmpareto_coefficients(gram: jax.Array, task_weights: jax.Array) -> jax.Array:
    r"""MMPareto's direction coefficients on the raw gradients, from their Gram matrix.

    With :math:`h_i = \lambda_i g_i` and the tasks whose gradient is not zero on these leaves
    ("active"; the others do not share them): :math:`\lambda` (the plain sum) when every pair of
    active gradients has a positive inner product, else :math:`n_{active}\, w \odot \lambda` with
    w MGDA's min-norm weights over the active tasks.
    """
    k = gram.shape[0]
    normalised, _ = _gram.trace_normalise(_gram.weighted_gram(gram, task_weights))
    active = jnp.diagonal(normalised) > 0
    pairs = active[:, None] & active[None, :] & ~jnp.eye(k, dtype=bool)
    agree = jnp.all(jnp.where(pairs, normalised > 0, True))
    count = jnp.sum(active)
    pareto = count * min_norm_weights(normalised, active)
    beta = jnp.where(agree | (count < 2), jnp.ones((k,), gram.dtype), pareto)
    # A non-finite Gram matrix must poison the update (see camegrad_weights).
    beta = jnp.where(jnp.all(jnp.isfinite(gram)), beta, jnp.nan)
    return beta * task_weights


def mmpareto_weighting() -> Weighting:
    """The :class:`~camegrad_jax.Weighting` of MMPareto's direction (see :func:`mmpareto`, which
    then rescales each shared leaf): :func:`mmpareto_coefficients`, stateless."""

    def weighting(gram, method_state, weights, **extra_args):
        del extra_args
        return WeightingResult(mmpareto_coefficients(gram, weights), method_state)

    return Weighting(lambda k: optax.EmptyState(), weighting)


def mmpareto(
    *,
    gamma: float = 1.5,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""MMPareto as an optax transformation over stacked per-task gradients.

    On the shared leaves, with :math:`h_i = \lambda_i g_i`, :math:`s = \sum_i h_i` and the
    "active" tasks A (those whose gradient on the shared leaves is not zero):

    .. math::

      d &= \begin{cases} s & \text{if } \langle h_i, h_j\rangle > 0 \ \ \forall i \ne j \in A \\
        |A| \sum_i w_i h_i, \ \ w = \arg\min_{w \in \Delta_A} \|\sum_i w_i h_i\| &
        \text{otherwise} \end{cases} \\
      g_p &= \gamma \max\bigl(\|s_p\| / \|d_p\|,\ 1\bigr)\, d_p
        \quad \text{for every shared leaf p.}

    With two tasks this is the official code exactly: equal weights ½ when the cosine is
    positive, else ``MinNormSolver``'s closed form (including its clipping of the weights to
    0.999 / 0.001); ``2 * k`` weights; and the magnitude rule applied **per parameter tensor**
    (here: per leaf) against the gradient of the summed loss, with γ = 1.5 as hard-coded there.

    Mapping to this library's setting, where every task's gradient is stacked over all leaves:

    * The paper's multimodal model pairs each unimodal encoder with two losses (the multimodal
      one and its own unimodal one). Tasks whose gradient on the shared leaves is exactly zero do
      not share those leaves and are left out of the conflict test and of the min-norm problem,
      and :math:`|A|` replaces the official factor 2. So an encoder marked by ``shared_mask``
      (or a parameter partition of ``optax.multi_transform``) reproduces the official per-encoder
      rule even with K = 3 losses. With two tasks of which one has a zero gradient the result is
      the official one too (γ times the other gradient).
    * Three or more active tasks (never reached by the official code) use the same rule with the
      exact min-norm point (the official iterative solver has no working iteration cap).
    * Where :math:`d_p = 0` but :math:`s_p \ne 0` the official ratio is infinite (a NaN update);
      here the leaf receives :math:`\gamma d_p`. So it does where :math:`\|d_p\|` is below the
      round-off of its terms (e.g. 0 in the convex hull of the gradients, exactly opposite
      gradients), rather than an amplified round-off error.
    * The other leaves (the official code's task heads) receive the linear-scalarization
      gradient Σ λ_i g_i, unscaled.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      gamma: magnitude gain γ ≥ 0 (official: 1.5).
      task_weights: static positive weights λ (the official code has none: all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: leaves MMPareto acts on (the encoders'); default all leaves, i.e. applied
        globally, as in the CAME-Grad paper's comparison.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update(task_updates, state, params=None,
      **extra_args)`` ignores extra arguments. The state is a :class:`MultiTaskState` whose
      ``coefficients`` are the direction's (before the per-leaf magnitude rule) and whose
      ``stats`` measure the final update.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import mmpareto
      >>> tx = mmpareto(gamma=1.5, num_tasks=2)
      >>> params = jnp.zeros(2)
      >>> grads = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: min-norm direction
      >>> updates, state = tx.update(grads, tx.init(params), params)
      >>> [round(float(c), 4) for c in state.coefficients]  # 2 × the min-norm weights (0.6, 0.4)
      [1.2, 0.8]
      >>> [round(float(u), 4) for u in updates]  # γ·max(‖g1 + g2‖ / ‖d‖, 1)·d
      [0.6708, 1.3416]

    References:
      Wei & Hu, MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance,
      ICML 2024. https://arxiv.org/abs/2405.17730
      (official code: https://github.com/GeWu-Lab/MMPareto_ICML2024)
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(gamma, "gamma"),
    )

    direction = stacked_gradient_transformation(
        mmpareto_weighting(),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
    return _with_magnitude_per_leaf(direction, gamma, task_weights, shared_mask, hyperparams_valid)


def _magnitudes(
    leaf_grams: list[jax.Array], coefficients: jax.Array, weights: jax.Array, gamma: Any
) -> jax.Array:
    """(L,) factors γ max(‖s_p‖ / ‖d_p‖, 1), from each shared leaf's Gram matrix G_p."""
    factors = []
    for gram in leaf_grams:
        joint = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
        direction = jnp.sqrt(jnp.maximum(coefficients @ gram @ coefficients, 0.0))
        # ‖d_p‖ computed from G_p carries round-off of about sqrt(eps)·Σ|β_i|‖g_i‖: below
        # that, d_p is indistinguishable from 0 and the ratio is undefined.
        terms = jnp.abs(coefficients) @ jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        resolvable = direction > 4 * jnp.sqrt(jnp.finfo(gram.dtype).eps) * terms
        ratio = jnp.where(resolvable, joint / jnp.where(resolvable, direction, 1.0), 1.0)
        factors.append(jnp.asarray(gamma, gram.dtype) * jnp.maximum(ratio, 1.0))
    return jnp.stack(factors)


def _with_magnitude_per_leaf(
    direction: optax.GradientTransformationExtraArgs,
    gamma: Any,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn,
    hyperparams_valid: _validation.Verdict,
) -> optax.GradientTransformationExtraArgs:
    """MMPareto's magnitude rule around the transformation of its direction: each shared leaf p
    receives γ max(‖s_p‖ / ‖d_p‖, 1) d_p instead of d_p.

    The per-leaf Gram matrices G_p sum to the G that ``direction`` forms (the same products in
    the same order), so the direction's coefficients are recomputed from them in the gradients'
    accumulation dtype rather than read back from the state, which keeps them in float32. The
    G_p are formed here a second time: the price of keeping the builder free of per-method
    options (under ``jit``, XLA's common-subexpression pass may merge the identical products).
    """

    def update_fn(task_updates, state, params=None, **extra_args):
        updates, state = direction.update(task_updates, state, params, **extra_args)
        split = split_leaves(task_updates, shared_mask, params)
        leaf_grams, scale = _tree.gram_in_range(split.shared, split.dtype, per_leaf=True)
        weights = _validation.weights_vector(task_weights, state.coefficients.shape[0], split.dtype)
        coefficients = mmpareto_coefficients(sum(leaf_grams[1:], leaf_grams[0]), weights)
        factors = _magnitudes(leaf_grams, coefficients, weights, gamma)
        if hyperparams_valid is not True:
            factors = jnp.where(hyperparams_valid, factors, jnp.nan)
        shared = [
            _tree.combine([leaf], factor * coefficients)[0]
            for leaf, factor in zip(split.shared, factors, strict=True)
        ]
        norm_sq = sum(
            jnp.square(factor) * (coefficients @ leaf_gram @ coefficients)
            for factor, leaf_gram in zip(factors, leaf_grams, strict=True)
        )
        update_norm = scale * jnp.sqrt(jnp.maximum(norm_sq, 0.0))
        new_state = state._replace(stats=state.stats._replace(update_norm=stored(update_norm)))
        return split.replace_shared(updates, shared), new_state

    return optax.GradientTransformationExtraArgs(direction.init, update_fn)
