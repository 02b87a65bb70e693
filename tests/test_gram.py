"""The Gram-matrix helpers against NumPy: ΛGΛ, the trace normalisation, the pseudo-inverses
(full, rank-deficient, restricted to a support) and the guard against non-finite matrices."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from camegrad_jax._gram import (
    guard_non_finite,
    pseudo_inverse_psd,
    restricted_pseudo_inverse,
    trace_normalise,
    weighted_gram,
)


def random_gram(rng, num_tasks, rank):
    grads = rng.normal(size=(rank, 6))
    grads = np.concatenate([grads, rng.normal(size=(num_tasks - rank, rank)) @ grads])
    return grads @ grads.T


def test_weighted_gram_is_the_gram_of_the_weighted_gradients():
    rng = np.random.default_rng(0)
    grads, weights = rng.normal(size=(3, 5)), np.array([0.5, 2.0, 1.5])
    expected = (weights[:, None] * grads) @ (weights[:, None] * grads).T
    result = weighted_gram(jnp.asarray(grads @ grads.T), jnp.asarray(weights))
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_trace_normalise_divides_by_the_trace_and_keeps_a_zero_matrix():
    gram = jnp.array([[1.0, 0.5], [0.5, 3.0]])
    normalised, trace = trace_normalise(gram)
    np.testing.assert_allclose(normalised, np.asarray(gram) / 4.0)
    assert float(trace) == 4.0
    zeros, zero_trace = trace_normalise(jnp.zeros((2, 2)))
    assert float(zero_trace) == 0.0
    assert np.all(np.asarray(zeros) == 0.0)


def test_pseudo_inverse_psd_matches_numpy_on_full_and_deficient_rank():
    rng = np.random.default_rng(1)
    for rank in (4, 2):
        gram = random_gram(rng, 4, rank)
        np.testing.assert_allclose(
            pseudo_inverse_psd(jnp.asarray(gram, jnp.float32)),
            np.linalg.pinv(gram, hermitian=True),
            rtol=2e-3,
            atol=2e-3 * np.abs(np.linalg.pinv(gram)).max(),
        )


def test_pseudo_inverse_psd_keeps_a_tiny_independent_task():
    # The cosine equilibration keeps a gradient 1e-4 times shorter than the other's.
    grads = np.array([[1.0, 0.0], [0.0, 1e-4]])
    inverse = pseudo_inverse_psd(jnp.asarray(grads @ grads.T, jnp.float32))
    np.testing.assert_allclose(inverse, np.diag([1.0, 1e8]), rtol=1e-5)


def test_restricted_pseudo_inverse_inverts_the_support_block_and_zeros_the_rest():
    rng = np.random.default_rng(2)
    gram = random_gram(rng, 4, 4)
    support = np.array([True, False, True, True])
    expected = np.zeros((4, 4))
    expected[np.ix_(support, support)] = np.linalg.inv(gram[np.ix_(support, support)])
    result = restricted_pseudo_inverse(jnp.asarray(gram, jnp.float32), jnp.asarray(support))
    np.testing.assert_allclose(result, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_guard_non_finite_poisons_the_coefficients_and_keeps_the_state():
    coefficients, old, new = jnp.ones(2), {"w": jnp.zeros(2)}, {"w": jnp.ones(2)}
    kept, state = guard_non_finite(jnp.array([[1.0, jnp.nan], [0.0, 1.0]]), coefficients, new, old)
    assert np.all(np.isnan(kept))
    np.testing.assert_array_equal(state["w"], old["w"])
    passed, state = guard_non_finite(jnp.eye(2), coefficients, new, old)
    np.testing.assert_array_equal(passed, coefficients)
    np.testing.assert_array_equal(state["w"], new["w"])
