"""The tracked-gradient builder against NumPy running averages of the task gradients."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import camegrad_jax as cg
from camegrad_jax._tracking import tracked_gradient_transformation


def test_running_averages_follow_the_retention_schedule():
    # Step t (from 1) keeps r_t = 1 - 1/t of the old estimate: y_t = r_t y_{t-1} + (1 - r_t) g_t,
    # the mean of g_1..g_t; the update is the linear scalarization Σ_i y_i.
    tx = tracked_gradient_transformation(
        cg.linear_scalarization(),
        lambda shared, private, weights, extra: (shared, private),
        lambda step: 1.0 - 1.0 / step,
        name="averaged_sum",
        num_tasks=None,
        task_weights=None,
        shared_mask=None,
    )
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 2, 3))
    params = jnp.zeros(3)
    state = tx.init(params)
    for step in range(len(grads)):
        updates, state = tx.update(jnp.asarray(grads[step], jnp.float32), state, params)
        means = grads[: step + 1].mean(axis=0)
        np.testing.assert_allclose(updates, means.sum(axis=0), rtol=1e-5, atol=1e-6)
    assert int(state.count) == len(grads)
