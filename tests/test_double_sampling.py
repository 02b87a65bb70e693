"""The cross Gram matrix of two gradient samples against NumPy, and the samples' checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax._double_sampling import _check_samples, cross_gram


def test_cross_gram_sums_the_inner_products_of_every_leaf():
    rng = np.random.default_rng(0)
    first = [rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 2))]
    second = [rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 2))]
    expected = sum(
        a.reshape(3, -1) @ b.reshape(3, -1).T for a, b in zip(first, second, strict=True)
    )
    result = cross_gram(
        [jnp.asarray(a) for a in first], [jnp.asarray(b) for b in second], jnp.float32
    )
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert result.dtype == jnp.float32


def test_samples_must_be_a_pair_shaped_like_the_gradients():
    grads = {"w": jnp.zeros((2, 3))}
    first, second = _check_samples((grads, grads), grads, "sdmgrad")
    assert first is grads and second is grads
    with pytest.raises(ValueError, match="sdmgrad: `weight_gradients` should be a pair"):
        _check_samples(grads, grads, "sdmgrad")
    with pytest.raises(ValueError, match="tree structure and shapes"):
        _check_samples((grads, {"w": jnp.zeros((2, 4))}), grads, "sdmgrad")
