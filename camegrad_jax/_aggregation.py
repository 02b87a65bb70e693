"""The machinery every stacked-gradient method shares.

A multi-task method here is a *weighting*: a function from the K × K Gram matrix of the task
gradients (and, for loss-based methods, the K loss values) to K coefficients β, the update being
Σ_i β_i g_i. This module turns a weighting into an ``optax.GradientTransformationExtraArgs`` that:

* checks that every leaf carries the same leading task axis and, when ``params`` are given, that
  the stacked gradients are exactly params with a task axis (no silent broadcasting);
* forms G from the shared leaves (accumulated in ≥ float32), calls the weighting, and forms
  Σ_i β_i g_i on the shared leaves and the linear-scalarization sum Σ_i λ_i g_i on the others;
* keeps the method's own state and the last step's diagnostics in a typed state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._diagnostics import GradientStats, empty_stats, gradient_stats


class WeightingResult(NamedTuple):
    coefficients: jax.Array  # (K,) β on the raw gradients: update = Σ_i β_i g_i.
    method_state: Any  # The method's new state.


class Weighting(Protocol):
    def __call__(
        self, gram: jax.Array | None, method_state: Any, task_weights: jax.Array, **extra: Any
    ) -> WeightingResult: ...


# Optional hook on the shared leaves' update after the weighted sum (e.g. CAME-Grad's Setting B
# adds noise there): (combined shared leaves, method_state) -> (new leaves, new method_state).
Perturbation = Callable[[list[jax.Array], Any], tuple[list[jax.Array], Any]]

# Optional per-leaf magnitude rule (e.g. MMPareto rescales each parameter tensor):
# (Gram matrices of the shared leaves one by one, coefficients, task weights) -> (L,) factors;
# shared leaf l then receives factor_l · Σ_i β_i g_i.
LeafScaling = Callable[[list[jax.Array], jax.Array, jax.Array], jax.Array]


class MultiTaskState(NamedTuple):
    """State of a stacked-gradient transformation (diagnostics of the last step in float32)."""

    method_state: Any  # The method's own state (warm starts, learnable weights, PRNG keys...).
    coefficients: jax.Array  # (K,) float32; update = Σ_i coefficients_i g_i on the shared leaves.
    stats: GradientStats | optax.EmptyState  # Gram-based statistics, when the method forms G.


def stored(x: jax.Array) -> jax.Array:
    """Cast floating diagnostics to float32: the state's dtypes must not depend on the gradients'
    dtype, or the second update would recompile (and lax.scan loops would fail)."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


def gram_weighting_transformation(
    coefficients_fn: Callable[[jax.Array], jax.Array],
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    """The transformation of a stateless weighting of the weighted Gram matrix.

    ``coefficients_fn(ΛGΛ) -> β`` gives the update Σ_i β_i h_i on the weighted gradients
    h_i = λ_i g_i; a non-finite G poisons the coefficients (see `_gram.guard_non_finite`).

    Examples:
      The mean of the weighted task gradients, as a transformation:

      >>> import jax.numpy as jnp
      >>> from camegrad_jax._aggregation import gram_weighting_transformation
      >>> tx = gram_weighting_transformation(
      ...     lambda gram: jnp.full(gram.shape[0], 0.5), name="mean", num_tasks=2,
      ...     task_weights=[1.0, 3.0])
      >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 2.0]])}
      >>> tx.update(grads, tx.init({"w": jnp.zeros(2)}))[0]["w"]  # (h_1 + h_2) / 2
      Array([1., 3.], dtype=float32)
    """

    def weighting(gram, state, weights, **extra_args) -> WeightingResult:
        del extra_args
        beta = coefficients_fn(_gram.weighted_gram(gram, weights))
        coefficients, state = _gram.guard_non_finite(gram, beta * weights, state, state)
        return WeightingResult(coefficients, state)

    return stacked_gradient_transformation(
        weighting,
        lambda k: optax.EmptyState(),
        name=name,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )


def stacked_gradient_transformation(
    weighting: Weighting,
    init_method_state: Callable[[int], Any],
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
    uses_gram: bool = True,
    perturbation: Perturbation | None = None,
    weight_all_leaves: bool = False,
    leaf_scaling: LeafScaling | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Builds the optax transformation of a weighting (see the module docstring).

    Args:
      weighting: ``(gram, method_state, task_weights, **extra_args) -> WeightingResult``; gram is
        the Gram matrix of the raw task gradients on the shared leaves, or None when
        ``uses_gram`` is False.
      init_method_state: ``K -> method_state``.
      name: the public factory's name, for error messages.
      num_tasks: K, when known at construction (required to size a state).
      task_weights: static weights λ or None; checked against K at update.
      shared_mask: shared leaves (see :func:`camegrad_jax.camegrad`).
      uses_gram: whether the weighting needs G (if not, G is also skipped for diagnostics).
      perturbation: optional hook applied to the shared leaves' update.
      weight_all_leaves: apply the coefficients β to every leaf, not only to the shared ones; the
        mask then only selects the leaves G is formed on. For a method whose weights scale whole
        task losses but are computed from one layer's gradients (GradNorm).
      leaf_scaling: optional per-leaf factors of the shared leaves' update, computed from the
        shared leaves' Gram matrices one by one (G is then their sum: no extra pass).
    """
    _validation.check_task_weights(task_weights)
    if not _validation.is_traced(num_tasks):
        _validation.resolve_num_tasks(num_tasks, task_weights)  # Fail early where we can.

    def init_fn(params):
        del params
        expected_tasks = _validation.resolve_num_tasks(num_tasks, task_weights)
        if expected_tasks is None:
            raise ValueError(
                f"{name} needs the number of tasks K to size its state: pass `num_tasks=K` or "
                "`task_weights` with K entries."
            )
        k = expected_tasks
        return MultiTaskState(
            method_state=init_method_state(k),
            coefficients=jnp.zeros((k,), jnp.float32),
            stats=empty_stats(k) if uses_gram else optax.EmptyState(),
        )

    def update_fn(task_updates, state, params=None, **extra_args):
        k = _tree.task_axis_size(task_updates)
        if k != state.coefficients.shape[0]:
            raise ValueError(
                f"The stacked gradients carry K = {k} tasks, but {name}'s state was built for "
                f"K = {state.coefficients.shape[0]} (`num_tasks`/`task_weights`)."
            )
        if params is not None:
            _tree.check_stacked_against_params(task_updates, params, k)
        leaves, treedef = jax.tree.flatten(task_updates)
        mask = _tree.resolve_mask(shared_mask, task_updates, params) or [True] * len(leaves)
        shared = [leaf for leaf, is_shared in zip(leaves, mask, strict=True) if is_shared]
        private = [leaf for leaf, is_shared in zip(leaves, mask, strict=True) if not is_shared]
        dtype = _tree.accumulation_dtype(leaves)
        weights = _validation.weights_vector(task_weights, k, dtype)

        if leaf_scaling is not None:
            leaf_grams = [_tree.gram_matrix([leaf], dtype) for leaf in shared]
            gram = sum(leaf_grams[1:], leaf_grams[0])
        else:
            gram = _tree.gram_matrix(shared, dtype) if uses_gram else None
        coefficients, method_state = weighting(gram, state.method_state, weights, **extra_args)
        coefficients = coefficients.astype(dtype)
        stats = state.stats
        if uses_gram:
            stats = gradient_stats(gram, coefficients, weights)
        if leaf_scaling is not None:
            factors = leaf_scaling(leaf_grams, coefficients, weights).astype(dtype)
            shared_out = [
                _tree.combine([leaf], factor * coefficients)[0]
                for leaf, factor in zip(shared, factors, strict=True)
            ]
            if uses_gram:
                norm_sq = sum(
                    jnp.square(factor) * (coefficients @ leaf_gram @ coefficients)
                    for factor, leaf_gram in zip(factors, leaf_grams, strict=True)
                )
                stats = stats._replace(update_norm=jnp.sqrt(jnp.maximum(norm_sq, 0.0)))
        else:
            shared_out = _tree.combine(shared, coefficients)
        if perturbation is not None:
            shared_out, method_state = perturbation(shared_out, method_state)
            if uses_gram:
                # The perturbation moved the update off span{g_i}: measure it directly.
                norm_sq = sum(jnp.sum(jnp.square(x.astype(dtype))) for x in shared_out)
                stats = stats._replace(update_norm=jnp.sqrt(norm_sq))
        private_coefficients = coefficients if weight_all_leaves else weights
        out = _tree.merge_by_mask(shared_out, _tree.combine(private, private_coefficients), mask)
        new_state = MultiTaskState(
            method_state=jax.tree.map(stored, method_state),
            coefficients=stored(coefficients),
            stats=jax.tree.map(stored, stats),
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
