r"""Methods that weigh a running estimate of each task's gradient rather than the current one.

DB-MTL and MoCo keep, for every task, a moving average of (a transformed version of) its gradient
on the shared parameters, and apply their weighting to those K estimates:

.. math::

  y_i(t) = r_t\, y_i(t-1) + (1 - r_t)\, u_i(t), \qquad g(t) = \sum_i \beta_i(t)\, y_i(t),

with the retention :math:`r_t` and the targets :math:`u_i(t)` (e.g. the gradients of the
log-losses) given by the method. The weighting itself is an ordinary stacked-gradient
transformation (:func:`camegrad_jax.stacked_gradient_transformation`) fed with the estimates:
this module composes the two, as ``optax.chain`` would if the estimates were not stacked.

The estimates cost K times the shared parameters' memory (as in LibMTL, whose ``grad_buffer`` and
``y`` are (K, P) tensors) and are kept in at least float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree, _validation
from camegrad_jax._aggregation import MultiTaskState

# (shared leaves, private leaves, task weights λ, update's extra arguments) ->
# (targets u_i of the shared leaves, inputs of the private leaves); all leaves keep their task
# axis and arrive in the accumulation dtype (≥ float32). The private inputs are summed over tasks.
Targets = Callable[
    [list[jax.Array], list[jax.Array], jax.Array, dict[str, Any]],
    tuple[list[jax.Array], list[jax.Array]],
]


class TrackedState(NamedTuple):
    """State of a method that weighs running estimates of the task gradients."""

    estimates: tuple[jax.Array, ...]  # per shared leaf, (K, *leaf_shape) ≥ float32: the y_i.
    count: jax.Array  # () int32, accepted updates so far (t − 1 during step t).
    weighting: MultiTaskState  # state of the weighting applied to the estimates.

    @property
    def coefficients(self) -> jax.Array:
        """(K,) float32: the last update is Σ_i coefficients_i y_i on the shared leaves."""
        return self.weighting.coefficients


def _shared_flags(shared_mask: _tree.MaskOrFn, tree: Any, params: Any) -> list[bool]:
    return _tree.resolve_mask(shared_mask, tree, params) or [True] * len(jax.tree.leaves(tree))


def tracked_gradient_transformation(
    weighting: optax.GradientTransformationExtraArgs,
    targets: Targets,
    retention: Callable[[jax.Array], jax.Array],
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn,
) -> optax.GradientTransformationExtraArgs:
    """Applies ``weighting`` to running estimates of the task gradients (module docstring).

    Args:
      weighting: a stacked-gradient transformation built with ``task_weights=None`` and the same
        ``num_tasks`` and ``shared_mask``; it receives the estimates on the shared leaves and the
        private inputs on the others (the targets already carry λ).
      targets: the method's targets :math:`u_i(t)` (see `Targets`).
      retention: ``t -> r_t``, the weight of the previous estimate at step t ≥ 1 (a traced
        float; 0 at t = 1 gives :math:`y_i(1) = u_i(1)`).
      name: the public factory's name, for error messages.
      num_tasks: K, when known at construction (see
        :func:`camegrad_jax.stacked_gradient_transformation`).
      task_weights: static weights λ or None, passed to ``targets``.
      shared_mask: the shared leaves, which carry the estimates.

    A step whose update is not finite (NaN gradients or losses, hyper-parameters scheduled out
    of range) leaves the estimates and the count as they were.

    Examples:
      The sum of the tasks' running averages (targets: the gradients; r_t = 1/2):

      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> from camegrad_jax._tracking import tracked_gradient_transformation
      >>> tx = tracked_gradient_transformation(
      ...     cg.linear_scalarization(), lambda shared, private, weights, extra: (shared, private),
      ...     lambda step: 0.5, name="averaged_sum", num_tasks=None, task_weights=None,
      ...     shared_mask=None)
      >>> params = jnp.zeros(2)
      >>> _, state = tx.update(jnp.array([[2.0, 0.0], [0.0, 2.0]]), tx.init(params), params)
      >>> updates, state = tx.update(jnp.array([[4.0, 0.0], [0.0, 0.0]]), state, params)
      >>> updates  # y_1 = (1, 0) → (2.5, 0); y_2 = (0, 1) → (0, 0.5)
      Array([2.5, 0.5], dtype=float32)
    """
    _validation.check_task_weights(task_weights)
    expected_tasks = _validation.resolve_num_tasks(num_tasks, task_weights)

    def empty_estimates(params, k: int) -> tuple[jax.Array, ...]:
        leaves = jax.tree.leaves(params)
        dtype = _tree.accumulation_dtype(leaves)
        flags = _shared_flags(shared_mask, params, params)
        return tuple(
            jnp.zeros((k, *jnp.shape(leaf)), dtype)
            for leaf, shared in zip(leaves, flags, strict=True)
            if shared
        )

    def init_fn(params):
        # Without K, an empty task axis marks the estimates as not yet sized (the weighting's
        # state does the same).
        return TrackedState(
            estimates=empty_estimates(params, expected_tasks or 0),
            count=jnp.zeros((), jnp.int32),
            weighting=weighting.init(params),
        )

    def update_fn(task_updates, state: TrackedState, params=None, **extra_args):
        k = _tree.task_axis_size(task_updates)
        _tree.check_floating(task_updates, name)
        leaves, treedef = jax.tree.flatten(task_updates)
        flags = _shared_flags(shared_mask, task_updates, params)
        dtype = _tree.accumulation_dtype(leaves)
        estimates = state.estimates
        if estimates and estimates[0].shape[0] == 0:
            estimates = tuple(jnp.zeros((k, *e.shape[1:]), e.dtype) for e in estimates)
        shared = [leaf.astype(dtype) for leaf, s in zip(leaves, flags, strict=True) if s]
        private = [leaf.astype(dtype) for leaf, s in zip(leaves, flags, strict=True) if not s]
        if len(shared) != len(estimates) or any(
            e.shape != s.shape for e, s in zip(estimates, shared, strict=True)
        ):
            raise ValueError(
                f"{name}'s running estimates have shapes {[e.shape for e in estimates]}, but the "
                f"shared stacked gradients have shapes {[s.shape for s in shared]} (K = {k})."
            )
        weights = _validation.weights_vector(task_weights, k, dtype)
        shared_targets, private_inputs = targets(shared, private, weights, extra_args)

        step = state.count + 1
        keep = jnp.asarray(retention(step.astype(dtype)), dtype)
        new_estimates = [
            target + keep * (old.astype(dtype) - target)
            for old, target in zip(estimates, shared_targets, strict=True)
        ]
        inputs = jax.tree.unflatten(
            treedef, _tree.merge_by_mask(new_estimates, private_inputs, flags)
        )
        updates, weighting_state = weighting.update(inputs, state.weighting, params, **extra_args)
        # The weighting saw the estimates in ≥ float32; the update keeps the gradients' dtypes.
        update_leaves = [
            update.astype(leaf.dtype)
            for update, leaf in zip(jax.tree.leaves(updates), leaves, strict=True)
        ]
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(u)) for u in update_leaves]))
        new_state = TrackedState(
            estimates=tuple(
                jnp.where(finite, new.astype(old.dtype), old)
                for new, old in zip(new_estimates, estimates, strict=True)
            ),
            count=jnp.where(finite, optax.safe_int32_increment(state.count), state.count),
            weighting=weighting_state,
        )
        return jax.tree.unflatten(treedef, update_leaves), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
