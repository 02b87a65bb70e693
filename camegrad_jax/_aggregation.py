"""The machinery every stacked-gradient method shares.

A multi-task method here is a *weighting*: a function from the K × K Gram matrix of the task
gradients (and, for loss-based methods, the K loss values) to K coefficients β, the update being
Σ_i β_i g_i. This module turns a weighting into an ``optax.GradientTransformationExtraArgs`` that:

* sizes its state from the first stacked gradients it sees when K was not given (as optax's own
  transformations never ask for what the gradients tell them);
* checks that every leaf carries the same leading task axis and a floating dtype, that it comes
  first in any enclosing ``optax.chain`` and, when ``params`` are given, that the stacked
  gradients are exactly params with a task axis (no silent broadcasting);
* forms G from the shared leaves (accumulated in ≥ float32), calls the weighting, and forms
  Σ_i β_i g_i on the shared leaves and the linear-scalarization sum Σ_i λ_i g_i on the others;
* keeps the method's own state and the last step's diagnostics in a typed state.
"""

from __future__ import annotations

import sys
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


def _scale_norms(stats: GradientStats, scale: jax.Array) -> GradientStats:
    """Statistics of gradients `scale` times those G was formed from (angles do not change)."""
    return stats._replace(
        task_norms=scale * stats.task_norms,
        joint_norm=scale * stats.joint_norm,
        update_norm=scale * stats.update_norm,
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
    hyperparams_valid: _validation.Verdict = True,
    gram_homogeneity: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Builds the optax transformation of a weighting (see the module docstring).

    Args:
      weighting: ``(gram, method_state, task_weights, **extra_args) -> WeightingResult``; gram is
        the Gram matrix of the raw task gradients on the shared leaves, or None when
        ``uses_gram`` is False.
      init_method_state: ``K -> method_state``.
      name: the public factory's name, for error messages.
      num_tasks: K, when known at construction. Without it (and without ``task_weights``),
        ``init`` returns a state with an empty task axis that the first ``update`` replaces by
        one sized from the stacked gradients: a jitted step then compiles twice, and a
        ``lax.scan`` over steps, whose carry may not change shape, needs ``num_tasks``.
      task_weights: static weights λ or None; checked against K at update.
      shared_mask: shared leaves (see :func:`camegrad_jax.camegrad`).
      uses_gram: whether the weighting needs G (if not, G is also skipped for diagnostics).
      perturbation: optional hook applied to the shared leaves' update.
      weight_all_leaves: apply the coefficients β to every leaf, not only to the shared ones; the
        mask then only selects the leaves G is formed on. For a method whose weights scale whole
        task losses but are computed from one layer's gradients (GradNorm).
      leaf_scaling: optional per-leaf factors of the shared leaves' update, computed from the
        shared leaves' Gram matrices one by one (G is then their sum: no extra pass).
      gram_homogeneity: the degree h with β(s·G) = s^h β(G) for s > 0. The weighting receives G
        divided by a power of two when the gradients' scale leaves float range, and this
        restores the coefficients; 0 (the default) for weightings of G's shape alone (CAME-Grad,
        MGDA, PCGrad, ...), -1/2 for those that normalise by gradient norms (Nash-MTL); a
        traced value is allowed (FairGrad's -α/(α+1)).
      hyperparams_valid: the factory's combined check verdict (`_validation.all_valid`); a traced
        False (a schedule under ``optax.inject_hyperparams`` left the valid range) makes the
        update NaN, so that ``optax.apply_if_finite`` rejects the step.
    """
    _validation.check_task_weights(task_weights)
    _validation.resolve_num_tasks(num_tasks, task_weights)  # Fail early where we can.

    def sized_state(k: int) -> MultiTaskState:
        return MultiTaskState(
            method_state=init_method_state(k),
            coefficients=jnp.zeros((k,), jnp.float32),
            stats=empty_stats(k) if uses_gram else optax.EmptyState(),
        )

    def init_fn(params):
        del params
        expected_tasks = _validation.resolve_num_tasks(num_tasks, task_weights)
        if expected_tasks is None:
            # K is unknown until the stacked gradients arrive: the same tree structure with an
            # empty task axis marks the state as not yet sized.
            return sized_state(1)._replace(coefficients=jnp.zeros((0,), jnp.float32))
        return sized_state(expected_tasks)

    def update_fn(task_updates, state, params=None, **extra_args):
        _check_first_in_chain(name)
        k = _tree.task_axis_size(task_updates)
        _tree.check_floating(task_updates, name)
        if state.coefficients.shape[0] == 0:
            state = sized_state(k)
        elif k != state.coefficients.shape[0]:
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

        # G = scale² · gram: out-of-range gradients are rescaled (see `_tree.gram_in_range`).
        scale = jnp.ones((), dtype)
        gram = None
        if leaf_scaling is not None:
            leaf_grams, scale = _tree.gram_in_range(shared, dtype, per_leaf=True)
            gram = sum(leaf_grams[1:], leaf_grams[0])
        elif uses_gram:
            (gram,), scale = _tree.gram_in_range(shared, dtype)
        coefficients, method_state = weighting(gram, state.method_state, weights, **extra_args)
        coefficients = coefficients.astype(dtype)
        if _validation.is_traced(gram_homogeneity) or gram_homogeneity:
            # β(scale² G) = scale^(2h) β(G) for a weighting homogeneous of degree h in G (h may
            # depend on a hyper-parameter that inject_hyperparams traces, as in FairGrad).
            coefficients = coefficients * scale ** (2 * gram_homogeneity)
        if hyperparams_valid is not True:
            # Out-of-range hyper-parameters (a schedule under inject_hyperparams): a NaN update
            # that apply_if_finite rejects, and the method's state left as it was.
            coefficients = jnp.where(hyperparams_valid, coefficients, jnp.nan)
            method_state = jax.tree.map(
                lambda new, old: jnp.where(hyperparams_valid, new, old),
                method_state,
                state.method_state,
            )
        stats = state.stats
        if uses_gram:
            stats = _scale_norms(gradient_stats(gram, coefficients, weights), scale)
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
                stats = stats._replace(update_norm=scale * jnp.sqrt(jnp.maximum(norm_sq, 0.0)))
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


# The update function of `optax.chain` and `optax.named_chain` (one module defines both); each
# keeps the states of the members that already ran in a local `new_state`.
_CHAIN_SOURCE = optax.chain.__code__.co_filename


def _check_first_in_chain(name: str) -> None:
    """Raises if a member of an enclosing optax chain ran before this transformation.

    Its input has a task axis that its output has not, so whatever runs before it sees stacked
    gradients as if they were parameter-shaped: Adam's moments, say, silently broadcast to shape
    (K, ...). Only the Python frames of the chains that call this update are read (at trace
    time under ``jit``), so the check costs nothing inside a compiled step.
    """
    frame = sys._getframe(2)
    for _ in range(64):  # Chains nest a few frames deep at most; stop before the whole stack.
        if frame is None:
            return
        code = frame.f_code
        if code.co_filename == _CHAIN_SOURCE and code.co_name == "update_fn":
            if frame.f_locals.get("new_state"):
                raise ValueError(
                    f"{name} must come first in the optax chain: it takes stacked per-task "
                    "gradients (a leading task axis on every leaf) and returns an update shaped "
                    f"like the parameters, so a transformation placed before it sees the task "
                    f"axis as if it were part of the parameters. Write `optax.chain({name}(...), "
                    "optax.adam(...))`; wrap the later optimizer for accumulation or finite "
                    "checks (`optax.MultiSteps`, `optax.apply_if_finite`)."
                )
        frame = frame.f_back
