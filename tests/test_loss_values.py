"""The helpers of the loss-based methods: the losses read from `update`'s extra arguments, the
per-task hyper-parameters, and the finite-step guards."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax import _loss_values


def test_task_losses_are_read_cast_and_checked():
    losses = _loss_values.task_losses({"value": jnp.array([1.0, 2.0], jnp.bfloat16)}, 2, "dwa",
                                      jnp.float32)  # fmt: skip
    assert losses.dtype == jnp.float32
    np.testing.assert_array_equal(losses, [1.0, 2.0])
    with pytest.raises(ValueError, match="dwa needs the K task losses"):
        _loss_values.task_losses({}, 2, "dwa", jnp.float32)
    with pytest.raises(ValueError, match=r"K = 3 task losses .* Found `value` with shape \(2,\)"):
        _loss_values.task_losses({"value": jnp.ones(2)}, 3, "dwa", jnp.float32)


def test_per_task_broadcasts_a_float_and_checks_a_sequence():
    np.testing.assert_array_equal(_loss_values.per_task(0.5, 3, "m", jnp.float32), [0.5] * 3)
    np.testing.assert_array_equal(_loss_values.per_task([1, 2], 2, "m", jnp.float32), [1, 2])
    _loss_values.check_finite_per_task([0.0, 1.0], "m", None)
    with pytest.raises(ValueError, match="`m` has 2 entries but K = 3"):
        _loss_values.check_finite_per_task([0.0, 1.0], "m", 3)
    with pytest.raises(ValueError, match="`m` should be a finite float or a 1-D sequence"):
        _loss_values.check_finite_per_task([0.0, float("inf")], "m", None)


@pytest.mark.parametrize("value", [float("nan"), True, [1.0]])
def test_check_finite_refuses(value):
    with pytest.raises(ValueError, match="`t` should be a finite float"):
        _loss_values.check_finite(value, "t")


@pytest.mark.parametrize("value", [1.5, True, float("inf")])
def test_check_integer_refuses(value):
    with pytest.raises(ValueError, match="`n` should be an integer"):
        _loss_values.check_integer(value, "n")


def test_finite_guards():
    assert bool(_loss_values.all_finite(jnp.ones(2), jnp.zeros(3)))
    assert not bool(_loss_values.all_finite(jnp.ones(2), jnp.array([jnp.inf])))
    new, old = {"a": jnp.ones(2)}, {"a": jnp.zeros(2)}
    np.testing.assert_array_equal(_loss_values.keep_if(jnp.array(False), new, old)["a"], [0, 0])
    np.testing.assert_array_equal(_loss_values.keep_if(jnp.array(True), new, old)["a"], [1, 1])
