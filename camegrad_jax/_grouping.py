"""One stacked-gradient transformation per group of leaves (per layer, per tensor, or any user
grouping), for methods that act on parameter groups separately (GradVac's granularity levels).

A *grouping* maps every leaf of the parameter tree to a group:

* ``"model"``: one group, the whole (shared) model;
* ``"layer"``: the leaves that share a parent in the tree, e.g. a Linen or NNX module's
  ``kernel`` and ``bias`` (the ``.value`` of an NNX ``Variable`` is not a level of its own).
  This is LibMTL's "all_layer": its leaf modules that hold parameters;
* ``"leaf"``: every parameter tensor alone (LibMTL's "all_matrix");
* a callable ``path -> label``: the leaves whose key paths (as ``jax.tree_util`` gives them)
  map to the same hashable label form a group.

:func:`per_group` runs an independent copy of a transformation on each group's leaves (the
others masked out as ``None``, as ``optax.masked`` does), with its own state.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import optax
from jax.tree_util import GetAttrKey, tree_flatten_with_path

from camegrad_jax import _tree, _validation

Grouping = str | Callable[[tuple[Any, ...]], Hashable]
GROUPINGS: tuple[str, ...] = ("model", "layer", "leaf")


class GroupedState(NamedTuple):
    """State of :func:`per_group`: one inner state per group, groups in order of first leaf."""

    group_states: tuple[Any, ...]


def check_grouping(grouping: Any) -> None:
    if not callable(grouping):
        _validation.check_choice(grouping, GROUPINGS, "grouping")


def _layer_of(path: tuple[Any, ...]) -> tuple[Any, ...]:
    while path and isinstance(path[-1], GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return path[:-1]


def leaf_groups(tree: Any, grouping: Grouping, shared: list[bool] | None = None) -> list[int]:
    """The group index of every leaf of `tree` (-1 for leaves outside `shared`), groups
    numbered in the order of their first leaf.

    Examples:
      >>> from camegrad_jax._grouping import leaf_groups
      >>> params = {"dense": {"bias": 0.0, "kernel": 0.0}, "head": {"kernel": 0.0}}
      >>> leaf_groups(params, "layer"), leaf_groups(params, "leaf"), leaf_groups(params, "model")
      ([0, 0, 1], [0, 1, 2], [0, 0, 0])
    """
    paths = [path for path, _ in tree_flatten_with_path(tree)[0]]
    shared = shared or [True] * len(paths)
    labels: dict[Hashable, int] = {}
    out = []
    for path, is_shared in zip(paths, shared, strict=True):
        if not is_shared:
            out.append(-1)
            continue
        if grouping == "model":
            label: Hashable = ()
        elif grouping == "leaf":
            label = path
        elif grouping == "layer":
            label = _layer_of(path)
        else:
            label = grouping(path)
        out.append(labels.setdefault(label, len(labels)))
    return out


def per_group(
    inner: optax.GradientTransformationExtraArgs,
    grouping: Grouping,
    *,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    """Runs ``inner`` separately on each group of the shared leaves, each group with its own
    state; the other leaves receive Σ_i λ_i g_i.

    Args:
      inner: the transformation applied to each group (a stacked-gradient transformation that
        must come first in a chain).
      grouping: see the module docstring.
      task_weights: static weights λ or None, for the leaves outside `shared_mask`.
      shared_mask: the leaves that are grouped (default all).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`GroupedState`.
    """

    def masked(tree: Any, groups: list[int], group: int) -> Any:
        leaves, treedef = jax.tree.flatten(tree)
        kept = [leaf if g == group else None for leaf, g in zip(leaves, groups, strict=True)]
        return jax.tree.unflatten(treedef, kept)

    def groups_of(tree: Any, params: Any) -> list[int]:
        return leaf_groups(tree, grouping, _tree.resolve_mask(shared_mask, tree, params))

    def init_fn(params):
        groups = groups_of(params, params)
        return GroupedState(
            tuple(inner.init(masked(params, groups, g)) for g in range(max(groups) + 1))
        )

    def update_fn(task_updates, state, params=None, **extra_args):
        groups = groups_of(task_updates, params)
        num_groups = max(groups) + 1
        if num_groups != len(state.group_states):
            raise ValueError(
                f"The gradients form {num_groups} parameter groups, but the state was built for "
                f"{len(state.group_states)} (`init` saw another parameter tree)."
            )
        leaves, treedef = jax.tree.flatten(task_updates)
        out: list[Any] = [None] * len(leaves)
        new_states = []
        for group, group_state in enumerate(state.group_states):
            group_params = None if params is None else masked(params, groups, group)
            updates, new_state = inner.update(
                masked(task_updates, groups, group), group_state, group_params, **extra_args
            )
            new_states.append(new_state)
            positions = [i for i, g in enumerate(groups) if g == group]
            for i, leaf in zip(positions, jax.tree.leaves(updates), strict=True):
                out[i] = leaf
        private = [i for i, g in enumerate(groups) if g < 0]
        if private:
            k = _tree.task_axis_size(task_updates)
            dtype = _tree.accumulation_dtype(leaves)
            weights = _validation.weights_vector(task_weights, k, dtype)
            for i, combined in zip(
                private, _tree.combine([leaves[i] for i in private], weights), strict=True
            ):
                out[i] = combined
        return jax.tree.unflatten(treedef, out), GroupedState(tuple(new_states))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
