"""The parameter groupings and `per_group`, against NumPy per-group normalisation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax._aggregation import stacked_gradient_transformation, stateless_weighting
from camegrad_jax._grouping import check_grouping, leaf_groups, per_group

PARAMS = {"dense": {"bias": jnp.zeros(2), "kernel": jnp.zeros(3)}, "head": {"kernel": jnp.zeros(2)}}


def test_leaf_groups_by_layer_leaf_model_callable_and_mask():
    assert leaf_groups(PARAMS, "layer") == [0, 0, 1]
    assert leaf_groups(PARAMS, "leaf") == [0, 1, 2]
    assert leaf_groups(PARAMS, "model") == [0, 0, 0]
    assert leaf_groups(PARAMS, lambda path: path[-1].key) == [0, 1, 1]
    assert leaf_groups(PARAMS, "layer", [True, True, False]) == [0, 0, -1]
    with pytest.raises(ValueError, match="`grouping` should be one of"):
        check_grouping("block")


def unit_norms(**kwargs):
    """Each task's gradient scaled to unit norm on the leaves it sees."""
    rule = stateless_weighting(lambda gram: 1.0 / jnp.sqrt(jnp.diagonal(gram)))
    return stacked_gradient_transformation(
        rule, name="unit_norms", num_tasks=None, task_weights=None, **kwargs
    )


def test_per_group_runs_the_method_on_each_group_alone():
    rng = np.random.default_rng(0)
    grads = {
        "dense": {"bias": rng.normal(size=(2, 2)), "kernel": rng.normal(size=(2, 3))},
        "head": {"kernel": rng.normal(size=(2, 2))},
    }
    shared_mask = {"dense": {"bias": True, "kernel": True}, "head": {"kernel": False}}
    tx = per_group(unit_norms(), "leaf", task_weights=None, shared_mask=shared_mask)
    stacked = {k: {n: jnp.asarray(g, jnp.float32) for n, g in v.items()} for k, v in grads.items()}
    updates, state = tx.update(stacked, tx.init(PARAMS), PARAMS)
    assert len(state.group_states) == 2
    for name in ("bias", "kernel"):
        g = grads["dense"][name]
        expected = np.sum(g / np.linalg.norm(g, axis=1, keepdims=True), axis=0)
        np.testing.assert_allclose(updates["dense"][name], expected, rtol=1e-5)
    head = grads["head"]["kernel"].sum(axis=0)  # Outside the mask: the plain sum.
    np.testing.assert_allclose(updates["head"]["kernel"], head, rtol=1e-5)


def test_per_group_refuses_a_state_built_for_another_tree():
    tx = per_group(unit_norms(), "leaf", task_weights=None)
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="form 2 parameter groups, but the state was built for 1"):
        tx.update({"w": jnp.ones((2, 2)), "v": jnp.ones((2, 2))}, state)
