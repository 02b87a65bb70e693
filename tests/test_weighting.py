"""The one method contract: every Gram-based method's public weighting (`cg.<name>_weighting`)
gives, from the Gram matrix of the raw task gradients, the coefficients its transformation
applies, step after step, and so does every loss-based method's, from the raw losses."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import camegrad_jax as cg

# MMPareto is a "gradient" row only for its per-leaf magnitudes: its direction is a weighting.
# RLW and GradNorm are loss rows written as weightings: RLW reads no loss, GradNorm reads G too.
GRAM_ROWS = [
    *cg.registered_methods(kinds=("gram",)),
    *(cg.method_info(name) for name in ("mmpareto", "rlw", "gradnorm")),
]
# The default run checks one row of each kind of weighting (the task weights alone, a stateless
# rule, a warm start, smoothed weights, a further Gram matrix, a PRNG key, losses and G); every
# row runs under -m slow.
DEFAULT_ROWS = ("linear", "camegrad", "imtl_g", "cr_mogm", "modo", "rlw", "gradnorm")


def public_weighting(info: cg.MethodInfo) -> cg.Weighting:
    name = info.factory.__name__.removesuffix("_scalarization")
    make = getattr(cg, f"{name}_weighting")
    accepted = inspect.signature(make).parameters
    kwargs = {**info.fixed, **info.example_kwargs}
    return make(**{key: value for key, value in kwargs.items() if key in accepted})


@pytest.mark.parametrize(
    "info",
    [
        pytest.param(info, marks=() if info.name in DEFAULT_ROWS else pytest.mark.slow)
        for info in GRAM_ROWS
    ],
    ids=lambda info: info.name,
)
def test_public_weighting_gives_the_transformations_coefficients(info):
    rng = np.random.default_rng(7)
    num_tasks = max(3, info.min_tasks)
    task_weights = jnp.asarray([1.0, 0.5, 2.0] + [1.0] * (num_tasks - 3), jnp.float32)
    # Small integers: every Gram entry is exact, so the transformation's G (formed from the
    # gradients) and the one given to the weighting are the same matrix.
    extra = {"diagnostics": True} if info.name == "linear" else {}
    tx = info.build(num_tasks=num_tasks, task_weights=task_weights, **info.example_kwargs, **extra)
    weighting = public_weighting(info)
    params = jnp.zeros(6)
    state, method_state = tx.init(params), weighting.init(num_tasks)
    for _ in range(2):
        grads = rng.integers(-3, 4, size=(num_tasks, 6)).astype(np.float32)
        losses = jnp.asarray(rng.uniform(0.5, 2.0, num_tasks), jnp.float32)
        gram = jnp.asarray(grads @ grads.T)
        _, state = tx.update(jnp.asarray(grads), state, params, value=losses)
        coefficients, method_state = weighting.update(
            gram, method_state, task_weights, value=losses
        )
        np.testing.assert_allclose(coefficients, state.coefficients, rtol=1e-6, atol=1e-7)


def test_every_gram_row_exposes_its_weighting():
    exported = {name for name in cg.__all__ if name.endswith("_weighting")}
    expected = {
        f"{info.factory.__name__.removesuffix('_scalarization')}_weighting" for info in GRAM_ROWS
    }
    assert expected <= exported


# RLW draws its weights and reads no loss; GradNorm reads the Gram matrix as well.
LOSS_ROWS = [
    info for info in cg.registered_methods(kinds=("loss",)) if info.name not in ("rlw", "gradnorm")
]


@pytest.mark.parametrize("info", LOSS_ROWS, ids=lambda info: info.name)
def test_public_loss_weighting_gives_the_transformations_coefficients(info):
    rng = np.random.default_rng(3)
    task_weights = jnp.asarray([1.0, 0.5, 2.0], jnp.float32)
    tx = info.build(num_tasks=3, task_weights=task_weights, **info.example_kwargs)
    weighting = public_weighting(info)
    assert isinstance(weighting, cg.LossWeighting)
    params = jnp.zeros(4)
    state, method_state = tx.init(params), weighting.init(3)
    for _ in range(7):  # DWA's weights move after two epochs (of 3 steps in its example row).
        grads = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
        losses = jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32)
        _, state = tx.update(grads, state, params, value=losses)
        coefficients, method_state = weighting.update(losses, method_state, task_weights)
        np.testing.assert_array_equal(coefficients, state.coefficients)
