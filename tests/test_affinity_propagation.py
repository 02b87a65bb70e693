"""The JAX affinity propagation against a NumPy transcription of scikit-learn's, and its
shortcut for equal similarities. Each problem size compiles a clustering of its own: sizes
beyond the first are slow-marked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.affinity_propagation import numpy_affinity_propagation, partition

from camegrad_jax._affinity_propagation import affinity_propagation


def random_similarities(rng, n, count):
    """Half symmetric STGU-like matrices (unit diagonal), half -squared distances of points."""
    out = []
    for i in range(count):
        if i % 2:
            a = rng.normal(size=(n, n))
            s = (a + a.T) / 2
            np.fill_diagonal(s, 1.0)
        else:
            points = rng.normal(size=(n, 2)) + 3 * rng.integers(0, 3, size=(n, 1))
            s = -np.sum((points[:, None] - points[None]) ** 2, axis=-1)
        out.append(s)
    return np.stack(out)


class GivenNormal:
    """A `random_state` whose normal draws are given: the JAX port's own noise."""

    def __init__(self, draws):
        self.draws = np.asarray(draws, np.float64)

    def standard_normal(self, size):
        assert self.draws.shape == tuple(size)
        return self.draws


@pytest.mark.parametrize(
    ("n", "median"),
    [
        (4, True),
        pytest.param(5, False, marks=pytest.mark.slow),
        pytest.param(2, True, marks=pytest.mark.slow),
        pytest.param(6, True, marks=pytest.mark.slow),
        pytest.param(8, True, marks=pytest.mark.slow),
        pytest.param(3, False, marks=pytest.mark.slow),
    ],
)
def test_affinity_propagation_matches_sklearn_transcription(n, median):
    # With odd n the median of the n² similarities is one of them, a tie that only the
    # tie-breaking noise decides: those sizes take a preference between the smallest
    # similarity and the median instead. The reference gets the port's noise draws, since
    # where messages oscillate the 1e-16 noise decides where they settle.
    rng = np.random.default_rng(n)
    batch = random_similarities(rng, n, 12)
    flat = batch.reshape(len(batch), -1)
    preference = None if median else (flat.min(axis=1) + np.median(flat, axis=1)) / 2
    keys = jax.random.split(jax.random.PRNGKey(0), len(batch))
    run = jax.vmap(
        lambda s, key, p: affinity_propagation(s, key, preference=p, convergence_iter=15),
        in_axes=(0, 0, None if median else 0),
    )
    with jax.enable_x64(True):  # the reference's (and sklearn's) message precision
        result64 = jax.jit(run)(jnp.asarray(batch, jnp.float64), keys, preference)
        draws = np.asarray(jax.vmap(lambda key: jax.random.normal(key, (n, n), jnp.float64))(keys))
    result32 = jax.jit(run)(jnp.asarray(batch, jnp.float32), keys, preference)
    agree32 = 0
    for i, s in enumerate(batch):
        p = None if median else preference[i]
        centers, labels, converged = numpy_affinity_propagation(s, p, rng=GivenNormal(draws[i]))
        np.testing.assert_array_equal(result64.labels[i], labels)
        assert int(result64.num_clusters[i]) == len(centers)
        assert bool(result64.converged[i]) == converged
        agree32 += partition(result32.labels[i]) == partition(labels)
    # float32 messages: rounding may decide a near-degenerate problem differently.
    assert agree32 >= len(batch) - 2


def test_affinity_propagation_equal_similarities_shortcut():
    # 2 × 2: the median (1 + s) / 2 exceeds s = 0.3 (each its own cluster), not s = 1.4 (one).
    s = jnp.array([[[1.0, 0.3], [0.3, 1.0]], [[1.0, 1.4], [1.4, 1.0]]])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    result = jax.jit(jax.vmap(affinity_propagation))(s, keys)
    assert result.labels.tolist() == [[0, 1], [0, 0]]
    assert result.num_clusters.tolist() == [2, 1]
    assert affinity_propagation(jnp.ones((1, 1)), keys[0]).labels.tolist() == [0]
