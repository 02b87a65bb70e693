"""The conflict-averse direction against an exact NumPy enumeration of active sets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import references

from camegrad_jax._conflict_averse import conflict_averse_direction


# Compiles the dual solver (~5 s); CAGrad's and CAME-Grad's tests cover it in the default run.
@pytest.mark.slow
def test_direction_matches_the_enumerated_reference():
    # Three tasks, one compilation of the dual solver shared by both radii.
    rng = np.random.default_rng(3)
    for c in (0.4, 0.8):
        h = references.conflicting_gradients(rng, 3, 12)
        gram = h @ h.T
        with jax.enable_x64(True):
            result = jax.jit(conflict_averse_direction)(
                jnp.asarray(gram / np.trace(gram)),
                jnp.asarray(c),
                jnp.full(3, 1.0 / 3),
            )
            np.testing.assert_allclose(np.sum(np.asarray(result.dual_weights)), 1.0, rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(result.coefficients) @ h,
            references.conflict_averse_direction(h, c),
            rtol=1e-4,
            atol=1e-6 * np.linalg.norm(h),
        )
