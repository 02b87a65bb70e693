"""IMTL-G against the paper's closed form in parameter space, and its properties."""

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
from helpers.official_references import numpy_imtl_g

from camegrad_jax._imtl_g import imtl_g

DIM = 16
EPS32 = float(np.finfo(np.float32).eps)


@functools.cache
def four_tasks():
    rng = np.random.default_rng(0)
    properties = property_batch(rng, 4, DIM)
    random = batch_of(rng, 20, 4, DIM)
    weights = np.concatenate([np.ones((len(properties.names), 4)), rng.uniform(0.5, 4, (20, 4))])
    updates, state = run(imtl_g, np.concatenate([properties.grads, random]), task_weights=weights)
    n = len(properties.names)
    return properties, updates[:n], random, weights[n:], updates[n:], state.coefficients[n:]


def test_matches_paper_closed_form():
    _, _, random, weights, updates, coefficients = four_tasks()
    for grads, w, update, beta in zip(random, weights, updates, coefficients, strict=True):
        h = w[:, None] * grads
        # float32 solves G α ∝ d: the error grows with the condition number of G.
        tolerance = max(1e-5, EPS32 * np.linalg.cond(h @ h.T))
        assert rel_err(update, numpy_imtl_g(h)) <= tolerance
        # Equal projections on every task direction, and weights on h that sum to 1.
        projections = h @ update / np.linalg.norm(h, axis=1)
        np.testing.assert_allclose(projections, projections.mean(), rtol=tolerance)
        np.testing.assert_allclose(np.sum(np.asarray(beta) / w), 1.0, rtol=1e-5)


def test_properties_and_dependent_tasks():
    properties, updates, _, _, _, _ = four_tasks()
    check_properties(updates, properties)
    # A duplicated or zero task leaves the update of the remaining tasks unchanged.
    for name in ("duplicate", "one_zero"):
        i = properties.index(name)
        expected = numpy_imtl_g(properties.grads[i][:-1])
        assert rel_err(updates[i], expected) <= 1e-4, name


def test_bfloat16():
    check_bfloat16(imtl_g, batch_of(np.random.default_rng(1), 4, 4, DIM))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weights": [1.0, float("inf")]}, "`task_weights`"),
        ({"num_tasks": 2.5}, "`num_tasks`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        imtl_g(**kwargs)
