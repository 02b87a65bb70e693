"""The projection onto the dual cone of the task gradients against SciPy's NNLS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import references

from camegrad_jax._cone import project_onto_dual_cone


def test_dual_cone_projection_matches_nnls():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(6)
    for k in (2, 3, 5):
        h = references.conflicting_gradients(rng, k, 30)
        c = rng.normal(size=k)
        with jax.enable_x64(True):
            coefficients = np.asarray(project_onto_dual_cone(jnp.asarray(h @ h.T), jnp.asarray(c)))
        mu, _ = scipy_optimize.nnls(h.T, -(c @ h))
        expected = (c + mu) @ h
        assert np.all(h @ expected >= -1e-10)
        np.testing.assert_allclose(coefficients @ h, expected, rtol=1e-7, atol=1e-9)
