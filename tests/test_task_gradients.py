"""task_gradients: one forward pass, K backward rows, same layout as jax.value_and_grad."""

from __future__ import annotations

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import camegrad_jax as cg


def losses(params, x):
    z = jnp.tanh(x @ params["w1"])
    out = z @ params["w2"]
    return jnp.stack([jnp.mean(out[:, 0] ** 2), jnp.mean((out[:, 1] - 1) ** 2), jnp.sum(z)])


@pytest.fixture
def problem():
    keys = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(keys[0], (4, 5)),
        "w2": jax.random.normal(keys[1], (5, 2)),
    }
    return params, jax.random.normal(keys[2], (8, 4))


def test_matches_jacobian(problem):
    params, x = problem
    values, grads = cg.task_gradients(losses, params, x)
    np.testing.assert_allclose(values, losses(params, x), rtol=1e-6)
    jacobian = jax.jacrev(losses)(params, x)
    for name in params:
        assert grads[name].shape == (3, *params[name].shape)
        np.testing.assert_allclose(grads[name], jacobian[name], rtol=1e-5, atol=1e-6)


def test_one_forward_pass(problem):
    params, x = problem
    calls = []

    def counted(p, x):
        calls.append(1)  # runs at trace time: once per forward pass traced
        return losses(p, x)

    cg.task_gradients(counted, params, x)
    assert len(calls) == 1


def test_has_aux_layout_matches_value_and_grad(problem):
    params, x = problem

    def with_aux(p, x):
        return losses(p, x), {"mean": jnp.mean(x)}

    (values, aux), grads = cg.task_gradients(with_aux, params, x, has_aux=True)
    assert values.shape == (3,)
    np.testing.assert_allclose(aux["mean"], jnp.mean(x))
    assert grads["w1"].shape == (3, 4, 5)


def test_chunked_equals_vmapped(problem):
    params, x = problem
    _, full = cg.task_gradients(losses, params, x)
    for chunk in (1, 2):
        _, chunked = jax.jit(lambda p, x, c=chunk: cg.task_gradients(losses, p, x, chunk_size=c))(
            params, x
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), chunked, full
        )


def test_kwargs_are_forwarded(problem):
    params, x = problem
    _, grads = cg.task_gradients(lambda p, *, x: losses(p, x), params, x=x)
    assert grads["w2"].shape == (3, 5, 2)


@pytest.mark.parametrize("bad", [lambda p: jnp.sum(p["w"]), lambda p: jnp.ones((2, 2)) * p["w"][0]])
def test_loss_must_be_a_vector(bad):
    with pytest.raises(ValueError, match=r"vector of K task losses"):
        cg.task_gradients(bad, {"w": jnp.ones(3)})


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        cg.task_gradients(lambda p: jnp.stack([p.sum(), p.sum()]), jnp.ones(2), chunk_size=0)


def test_flax_nnx_split_merge():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            return self.linear(x)

    model = Model(nnx.Rngs(0))
    x = jnp.ones((4, 3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def task_losses(params):
        out = nnx.merge(graphdef, params, rest)(x)
        return jnp.stack([jnp.mean(out[:, 0] ** 2), jnp.mean(out[:, 1])])

    values, grads = cg.task_gradients(task_losses, params)
    assert grads["linear"]["kernel"][...].shape == (2, 3, 2)
    # The second loss does not depend on output 0's weights.
    np.testing.assert_allclose(grads["linear"]["kernel"][...][1, :, 0], 0.0)


def test_flax_linen_params():
    module = linen.Dense(2)
    x = jnp.ones((4, 3))
    params = module.init(jax.random.key(0), x)["params"]

    def task_losses(params):
        out = module.apply({"params": params}, x)
        return jnp.stack([jnp.mean(out[:, 0] ** 2), jnp.mean(out[:, 1])])

    _, grads = cg.task_gradients(task_losses, params)
    assert grads["kernel"].shape == (2, 3, 2)
    np.testing.assert_allclose(grads["bias"][1], [0.0, 1.0], atol=1e-7)
