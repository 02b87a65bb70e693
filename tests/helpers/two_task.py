"""The two-task problems the interoperability and card-usage suites train: a shared vector pulled
towards two targets, and two-headed Flax models (NNX and Linen) on a shared trunk."""

from __future__ import annotations

import flax.linen as linen
import jax.numpy as jnp
from flax import nnx

from helpers.method_registry import Method


def two_task_problem(dtype=jnp.float32):
    """A shared vector pulled towards two different targets: the task gradients conflict."""
    params = {"w": jnp.array([0.5, -1.0, 2.0], dtype), "b": jnp.array(0.3, dtype)}
    targets = jnp.array([[1.0, 1.0, -1.0], [-1.0, 0.5, 1.0]], dtype)

    def losses(p):
        residual = p["w"][None, :] + p["b"] - targets
        return jnp.sum(residual**2, axis=1)

    return params, losses


def extra_args(method: Method, values):
    return {"value": values} if method.needs_values else {}


class NNXTwoHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.trunk = nnx.Linear(4, 8, rngs=rngs)
        self.head_a = nnx.Linear(8, 1, rngs=rngs)
        self.head_b = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        z = jnp.tanh(self.trunk(x))
        return self.head_a(z)[:, 0], self.head_b(z)[:, 0]


class LinenTwoHead(linen.Module):
    @linen.compact
    def __call__(self, x):
        z = jnp.tanh(linen.Dense(8)(x))
        return linen.Dense(1)(z)[:, 0], linen.Dense(1)(z)[:, 0]
