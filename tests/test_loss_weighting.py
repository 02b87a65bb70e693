"""The loss-based builder: coefficients from the losses alone, applied to the stacked
gradients, and a refusal naming the method when the losses are missing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from camegrad_jax._aggregation import WeightingResult
from camegrad_jax._loss_weighting import LossWeighting, loss_weighting_transformation


def inverse_losses():
    return LossWeighting(
        init=lambda k: optax.EmptyState(),
        update=lambda losses, state, weights: WeightingResult(weights / losses, state),
    )


def test_update_is_the_loss_weighted_sum_of_the_gradients():
    rng = np.random.default_rng(0)
    grads, losses, weights = rng.normal(size=(2, 3)), np.array([0.5, 4.0]), np.array([1.0, 3.0])
    tx = loss_weighting_transformation(
        inverse_losses(), name="inverse", num_tasks=None, task_weights=weights
    )
    updates, state = tx.update(
        jnp.asarray(grads, jnp.float32), tx.init(jnp.zeros(3)), value=jnp.asarray(losses)
    )
    np.testing.assert_allclose(state.coefficients, weights / losses, rtol=1e-6)
    np.testing.assert_allclose(updates, (weights / losses) @ grads, rtol=1e-5)
    assert isinstance(state.stats, optax.EmptyState)  # No Gram matrix is formed.


def test_missing_or_misshapen_losses_are_refused_by_name():
    tx = loss_weighting_transformation(
        inverse_losses(), name="inverse", num_tasks=2, task_weights=None
    )
    state = tx.init(jnp.zeros(3))
    with pytest.raises(ValueError, match="inverse needs the K task losses"):
        tx.update(jnp.ones((2, 3)), state)
    with pytest.raises(ValueError, match="K = 2 task losses"):
        tx.update(jnp.ones((2, 3)), state, value=jnp.ones(3))
