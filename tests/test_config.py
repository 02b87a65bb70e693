"""ConFIG against the official update written in NumPy (least squares for any K, the two-task
closed form), torchjd's fixed value, and its properties."""

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
from helpers.official_references import numpy_config, unit

from camegrad_jax._config import config

DIM = 16
# torchjd's tests/unit/aggregation/test_values.py: ConFIG() on J_base.
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
TORCHJD_OUTPUT = np.array([0.1588, 2.0706, 2.0706])


def numpy_config_double(g1, g2, w1=1.0, w2=1.0):
    """The official two-task closed form ``ConFIG_update_double`` (orthogonal components)."""
    u1, u2 = unit(g1), unit(g2)
    cos = u1 @ u2
    or_1 = unit(g2 - np.linalg.norm(g2) * cos * u1)  # g2 without its component along g1
    or_2 = unit(g1 - np.linalg.norm(g1) * cos * u2)
    coef_1 = (or_2 @ u1) / (w1 / w2 * (or_1 @ u2))
    direction = unit(coef_1 * or_1 + or_2)
    return (w1 * g1 @ direction + w2 * g2 @ direction) * direction


@functools.cache
def problems():
    """One compiled run per K: the property batch, random problems with task weights."""
    rng = np.random.default_rng(0)
    out = {}
    for k in (2, 4):
        properties = property_batch(rng, k, DIM)
        random = batch_of(rng, 12, k, DIM)
        n = len(properties.names)
        weights = np.concatenate([np.ones((n, k)), rng.uniform(0.5, 4, (12, k))])
        updates, _ = run(config, np.concatenate([properties.grads, random]), task_weights=weights)
        out[k] = (properties, updates[:n], random, weights[n:], updates[n:])
    return out


@pytest.mark.parametrize("k", [2, 4])
def test_matches_official_update(k):
    _, _, random, weights, updates = problems()[k]
    for grads, w, update in zip(random, weights, updates, strict=True):
        assert rel_err(update, numpy_config(grads, w)) <= 1e-5
        if k == 2:
            assert rel_err(update, numpy_config_double(*grads, *w)) <= 1e-5
        # Independent gradients: cos(g_i, g) ∝ w_i, so no conflict.
        cosines = grads @ update / np.linalg.norm(grads, axis=1) / np.linalg.norm(update)
        np.testing.assert_allclose(cosines / w, np.mean(cosines / w), rtol=1e-4)


@pytest.mark.parametrize("k", [2, 4])
def test_properties(k):
    properties, updates, *_ = problems()[k]
    check_properties(updates, properties, non_conflicting=True)
    for name in ("duplicate", "one_zero"):
        i = properties.index(name)
        assert rel_err(updates[i], numpy_config(properties.grads[i])) <= 1e-4, name


def test_torchjd_value():
    updates, _ = run(config, J_BASE[None])
    np.testing.assert_allclose(updates[0], TORCHJD_OUTPUT, atol=1e-4)
    assert rel_err(updates[0], numpy_config(J_BASE)) <= 1e-6


def test_bfloat16():
    check_bfloat16(config, batch_of(np.random.default_rng(2), 4, 3, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": [1.0, -1.0]}, "`task_weights`"),
        ({"num_tasks": 0}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)
