"""Shared by the tests of the scalarizations (IMTL-L, GLS, STCH, scale-invariant): each update
is the gradient of a scalar function of the task losses, Σ_i ∂F/∂L_i · g_i, so with the K unit
vectors as task gradients the update *is* ∂F/∂L, which the tests compare with central finite
differences of an independent NumPy F."""

from __future__ import annotations

import numpy as np

from helpers.loss_testing import run_steps


def numeric_gradient(fn, x, rel_step: float = 1e-6) -> np.ndarray:
    """Central finite differences of a scalar NumPy function, in float64."""
    x = np.asarray(x, np.float64)
    grad = np.empty_like(x)
    for i in range(x.size):
        step = rel_step * max(abs(x[i]), 1.0)
        up, down = x.copy(), x.copy()
        up[i] += step
        down[i] -= step
        grad[i] = (fn(up) - fn(down)) / (2 * step)
    return grad


def loss_derivatives(factory, values, **kwargs):
    """The update for unit task gradients at each of T steps of losses (T, K): ∂F/∂L, (T, K)."""
    values = np.asarray(values, np.float64)
    steps, k = values.shape
    grads = np.broadcast_to(np.eye(k), (steps, k, k))
    updates, states, final = run_steps(factory, grads, values, **kwargs)
    return np.asarray(updates, np.float64), states, final
