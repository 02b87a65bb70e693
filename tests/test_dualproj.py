"""DualProj against the projection computed in parameter space by SciPy's NNLS, torchjd's fixed
values, and its properties."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers.gradient_method_checks import (
    batch_of,
    check_bfloat16,
    check_properties,
    property_batch,
    rel_err,
    run,
)

from camegrad_jax._dualproj import dualproj

DIM = 16
# torchjd's tests/unit/aggregation/test_values.py: DualProj() on J_base, and its weighting.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
TORCHJD_OUTPUT = np.array([0.5563, 1.1109, 1.1109])
TORCHJD_WEIGHTS = np.array([0.6109, 0.5000])


def numpy_dualproj(h):
    """Π(mean h), Π(v) = v + Hᵀμ with μ = argmin_{μ ≥ 0} ‖v + Hᵀμ‖ (the projection's dual)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    mean = h.mean(axis=0)
    mu, _ = scipy_optimize.nnls(h.T, -mean)
    return mean + h.T @ mu


def torchjd_weights(h, reg_eps):
    """torchjd's DualProjWeighting: argmin_{w ≥ 1/K} wᵀ(G / tr G + reg_eps I)w, solved by SciPy
    on the bounded quadratic (in weight space, unlike `numpy_dualproj`)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    gram = h @ h.T
    gram = gram / np.trace(gram) + reg_eps * np.eye(len(h))
    lower = np.full(len(h), 1.0 / len(h))
    result = scipy_optimize.minimize(
        lambda w: w @ gram @ w,
        lower,
        jac=lambda w: 2 * gram @ w,
        bounds=[(x, None) for x in lower],
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    return result.x


@functools.cache
def three_tasks():
    """One compiled run: the property batch and 15 random problems with task weights."""
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 3, DIM)
    random = batch_of(rng, 15, 3, DIM)
    n = len(properties.names)
    weights = np.concatenate([np.ones((n, 3)), rng.uniform(0.5, 4, (15, 3))])
    updates, _ = run(dualproj, np.concatenate([properties.grads, random]), task_weights=weights)
    return properties, updates[:n], random, weights[n:], updates[n:]


def test_matches_nnls_projection():
    _, _, random, weights, updates = three_tasks()
    for grads, w, update in zip(random, weights, updates, strict=True):
        h = w[:, None] * grads
        assert rel_err(update, numpy_dualproj(h)) <= 1e-5
        assert np.all(h @ update >= -1e-6 * np.linalg.norm(h, axis=1) * np.linalg.norm(update))
        # The projection moves the mean only when the mean conflicts with a task.
        if np.all(h @ h.mean(axis=0) >= 0):
            assert rel_err(update, h.mean(axis=0)) <= 1e-6


def test_properties():
    properties, updates, *_ = three_tasks()
    check_properties(updates, properties, non_conflicting=True)
    for name in ("duplicate", "one_zero"):
        i = properties.index(name)
        assert rel_err(updates[i], numpy_dualproj(properties.grads[i])) <= 1e-5


def test_torchjd_values():
    # torchjd regularises the trace-normalised Gram matrix with reg_eps = 1e-4 before its QP;
    # its values are that QP's (checked here), and this module's are the limit reg_eps → 0,
    # 1e-3 away on this problem.
    np.testing.assert_allclose(torchjd_weights(J_BASE, 1e-4), TORCHJD_WEIGHTS, atol=1e-4)
    np.testing.assert_allclose(torchjd_weights(J_BASE, 1e-4) @ J_BASE, TORCHJD_OUTPUT, atol=1e-4)
    updates, state = run(dualproj, J_BASE[None])
    exact = torchjd_weights(J_BASE, 0.0)
    np.testing.assert_allclose(state.coefficients[0], exact, atol=1e-6)
    np.testing.assert_allclose(updates[0], exact @ J_BASE, atol=1e-5)
    np.testing.assert_allclose(updates[0], TORCHJD_OUTPUT, atol=1e-3)


def test_bfloat16():
    check_bfloat16(dualproj, batch_of(np.random.default_rng(2), 4, 3, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": [1.0, 0.0]}, "`task_weights`"),
        ({"num_tasks": -2}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dualproj(**kwargs)
