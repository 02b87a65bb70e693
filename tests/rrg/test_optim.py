"""The optimizer registry of the application: unknown names refused, every multi-task method
built and combined on a two-task problem, and the AdamW chain clipping only the baseline."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.diagnostics import find_multitask_state
from camegrad_jax.rrg.optim import (
    MULTITASK_METHODS,
    MultitaskMethod,
    available_methods,
    build_multitask,
    build_optimizer,
    learning_rate_schedule,
    multitask_options,
    weight_decay_mask,
)

# Every method's update compiles pieces of its own: reused across sessions, as in test_train.py.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_registry_rejects_unknown_names(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown multi-task method 'nope'\. Known methods: "):
        build_multitask("nope")
    with pytest.raises(ValueError, match="Unknown multi-task method"):
        multitask_options("nope", {}, {})
    monkeypatch.setitem(MULTITASK_METHODS, "future", MultitaskMethod("not_exported_yet"))
    with pytest.raises(ValueError, match="needs `camegrad_jax.not_exported_yet`"):
        build_multitask("future")
    assert "future" not in available_methods()
    with pytest.raises(ValueError, match="`optimizer` should be one of"):
        TrainConfig(optimizer="nope")


# Methods that transform the losses before scalarizing them (their own tests check the heads).
SCALARIZED_HEADS = {"db_mtl", "geometric_mean", "imtl_l", "scale_invariant", "stch"}


def test_registry_entries_build_and_combine():
    params = {"shared": jnp.ones((3,)), "head": jnp.ones((2,))}
    mask = {"shared": True, "head": False}
    grads = {
        "shared": jnp.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.0]]),
        "head": jnp.array([[1.0, 0.0], [0.0, 1.0]]),
    }
    losses = jnp.array([1.0, 2.0])
    assert {"linear", "camegrad", "camegrad_setting_b", "stgu"} <= set(available_methods())
    transformations = [name for name in available_methods() if not MULTITASK_METHODS[name].step]
    for name in transformations:
        options = multitask_options(
            name, {"c": 0.4, "gamma": 1.2, "alpha": 0.3}, {"seed": 0, "epoch_length": 4}
        )
        tx = build_multitask(name, task_weights=[1.0, 4.0], shared_mask=mask, **options)
        update, state = tx.update(grads, tx.init(params), params, value=losses)
        assert jax.tree.structure(update) == jax.tree.structure(params), name
        if name in SCALARIZED_HEADS:
            # Heads get the gradient of the transformed scalarization (e.g. Σ log λ_i L_i).
            assert np.all(np.isfinite(update["head"])) and np.all(update["head"] > 0), name
        else:
            # Leaves outside the mask get 1 * g_1 + 4 * g_2 (at the first step, for the methods
            # whose learned weights act on every leaf).
            np.testing.assert_allclose(update["head"], [1.0, 4.0], err_msg=name)
        assert find_multitask_state(state) is not None, name
    assert multitask_options("camegrad", {"c": 1, "gamma": 2, "alpha": 0.5}, {"seed": 3}) == {
        "c": 1,
        "gamma": 2,
        "alpha": 0.5,
        "seed": 3,
    }
    assert multitask_options("linear", {"c": 1, "gamma": 2, "alpha": 0.5}, {"seed": 3}) == {}


def test_optimizer_chain_clips_only_the_baseline():
    params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
    assert weight_decay_mask(params) == {"w": True, "b": False}
    schedule = learning_rate_schedule(1.0, 100, 0.1, 0.1)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)
    grads = {"w": jnp.full((2, 2, 2), 5.0), "b": jnp.full((2, 2), 5.0)}
    linear = build_multitask("linear", task_weights=[1.0, 4.0])
    for clip, expected in ((0.1, 0.1), (None, 25.0)):
        tx = build_optimizer(
            linear, params, optax.constant_schedule(1.0), weight_decay=0.0, clip=clip
        )
        state = tx.init(params)
        # The AdamW state sees the (clipped) combined gradient as its first moment's input.
        _, state = tx.update(grads, state, params, value=jnp.ones(2))
        adam_state = state[-1][0]
        np.testing.assert_allclose(adam_state.mu["b"], 0.1 * expected)
