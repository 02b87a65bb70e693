"""The transformation of an *element-wise* weighting: per-entry factors instead of per-task
coefficients.

Some methods decide entry by entry which task gradients pass (GradDrop's sign dropout, the
coordinate-wise trimmed mean): their update is

    g = Σ_i A_i ⊙ h_i,     h_i = λ_i g_i,

with factors A_i shaped like the gradients, which no K × K Gram matrix can express. The builder
here gives such a weighting the same contract as `_aggregation.stacked_gradient_transformation`
(K sized at the first update, first-in-chain check, shared mask, params check, traced
hyper-parameter verdicts, ≥ float32 arithmetic, a `MultiTaskState`). Its ``coefficients`` are
each task's effective weight, the coefficient of the projection of its contribution on its
gradient,

    β_i = λ_i <A_i ⊙ h_i, h_i> / ‖h_i‖²,

so that β = λ when every factor is 1 (linear scalarization) and β_i = 0 for a task whose entries
all dropped; the update is Σ_i β_i g_i only when each A_i is constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree, _validation
from camegrad_jax._aggregation import MultiTaskState, _check_first_in_chain, stored

# (weighted shared leaves h, each (K, *shape) in ≥ float32, method_state) ->
# (factors A shaped like h, new method_state).
ElementwiseWeighting = Callable[[list[jax.Array], Any], tuple[list[jax.Array], Any]]


def elementwise_weighting_transformation(
    weighting: ElementwiseWeighting,
    init_method_state: Callable[[int], Any],
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
    hyperparams_valid: _validation.Verdict = True,
) -> optax.GradientTransformationExtraArgs:
    """Builds the optax transformation of an element-wise weighting (see the module docstring).

    Args:
      weighting: ``(h leaves, method_state) -> (factor leaves, method_state)``.
      init_method_state: ``K -> method_state``.
      name: the public factory's name, for error messages.
      num_tasks: K when known at construction (see
        `_aggregation.stacked_gradient_transformation`).
      task_weights: static weights λ or None; checked against K at update.
      shared_mask: the leaves the weighting acts on; the others receive Σ_i λ_i g_i.
      hyperparams_valid: the factory's combined check verdict; a traced False makes the update
        NaN and keeps the method's state.

    Examples:
      Keep only the entries where a task's gradient is positive:

      >>> import jax.numpy as jnp
      >>> import optax
      >>> from camegrad_jax._elementwise import elementwise_weighting_transformation
      >>> tx = elementwise_weighting_transformation(
      ...     lambda h, state: ([(leaf > 0).astype(leaf.dtype) for leaf in h], state),
      ...     lambda k: optax.EmptyState(), name="positive", num_tasks=None, task_weights=None)
      >>> grads = jnp.array([[1.0, -2.0], [3.0, 4.0]])
      >>> updates, state = tx.update(grads, tx.init(jnp.zeros(2)))
      >>> updates, state.coefficients  # task 1 keeps 1/5 of its squared norm
      (Array([4., 4.], dtype=float32), Array([0.2, 1. ], dtype=float32))
    """
    _validation.check_task_weights(task_weights)
    _validation.resolve_num_tasks(num_tasks, task_weights)  # Fail early where we can.

    def sized_state(k: int) -> MultiTaskState:
        return MultiTaskState(
            method_state=init_method_state(k),
            coefficients=jnp.zeros((k,), jnp.float32),
            stats=optax.EmptyState(),
        )

    def init_fn(params):
        del params
        expected_tasks = _validation.resolve_num_tasks(num_tasks, task_weights)
        if expected_tasks is None:
            # An empty task axis marks the state as not yet sized (as the Gram-based builder).
            return sized_state(1)._replace(coefficients=jnp.zeros((0,), jnp.float32))
        return sized_state(expected_tasks)

    def update_fn(task_updates, state, params=None, **extra_args):
        del extra_args
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

        weighted = [
            leaf.astype(dtype) * weights.reshape((k,) + (1,) * (leaf.ndim - 1)) for leaf in shared
        ]
        factors, method_state = weighting(weighted, state.method_state)
        kept = [factor.astype(dtype) * h for factor, h in zip(factors, weighted, strict=True)]

        # Coefficient of the projection of each task's contribution on its own gradient, from the
        # gradients divided by their largest entry, so that the squares stay in float range.
        peaks = jnp.stack([jnp.max(jnp.abs(h.reshape(k, -1)), axis=1) for h in weighted])
        peaks = jnp.max(peaks, axis=0)
        inverse_peaks = jnp.where(peaks > 0, 1.0 / jnp.where(peaks > 0, peaks, 1.0), 0.0)
        squared_norms = jnp.zeros((k,), dtype)
        projections = jnp.zeros((k,), dtype)
        for factor, h in zip(factors, weighted, strict=True):
            squares = jnp.square(h.reshape(k, -1) * inverse_peaks[:, None])
            squared_norms = squared_norms + jnp.sum(squares, axis=1)
            projections = projections + jnp.sum(factor.reshape(k, -1) * squares, axis=1)
        present = squared_norms > 0
        coefficients = weights * jnp.where(
            present, projections / jnp.where(present, squared_norms, 1.0), 0.0
        )
        # Non-finite gradients (or a traced hyper-parameter out of range) poison the update, so
        # that apply_if_finite rejects it, and leave the method's state as it was.
        accepted = jnp.isfinite(jnp.sum(peaks)) & jnp.asarray(hyperparams_valid, bool)
        coefficients = jnp.where(accepted, coefficients, jnp.nan)
        method_state = jax.tree.map(
            lambda new, old: jnp.where(accepted, new, old), method_state, state.method_state
        )
        shared_out = [
            jnp.where(accepted, total, jnp.nan).astype(leaf.dtype)
            for total, leaf in zip(_tree.combine(kept, jnp.ones((k,), dtype)), shared, strict=True)
        ]
        out = _tree.merge_by_mask(shared_out, _tree.combine(private, weights), mask)
        new_state = MultiTaskState(
            method_state=jax.tree.map(stored, method_state),
            coefficients=stored(coefficients),
            stats=optax.EmptyState(),
        )
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
