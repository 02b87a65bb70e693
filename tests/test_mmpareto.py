"""MMPareto against a NumPy re-implementation of the official training step, and its numerics."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.loss_testing import rel_err, run_steps
from helpers.official_references import official_min_norm_of_two

import camegrad_jax as cg
from camegrad_jax._mmpareto import mmpareto

# ---------------------------------------------------------------------------------------------
# The official code (GeWu-Lab/MMPareto_ICML2024, code/MMPareto.py and min_norm_solvers.py) for
# one encoder shared by two losses, in NumPy.
# ---------------------------------------------------------------------------------------------


def official_step(leaves, gamma=1.5):
    """leaves: list of (2, ...) gradients of the two losses on the encoder's tensors."""
    flat = [np.concatenate([leaf[i].ravel() for leaf in leaves]) for i in range(2)]
    norms = np.linalg.norm(flat[0]) * np.linalg.norm(flat[1])
    cosine = flat[0] @ flat[1] / max(norms, 1e-8)
    if cosine > 0:
        k = [0.5, 0.5]
    else:
        c = official_min_norm_of_two(flat[0] @ flat[0], flat[0] @ flat[1], flat[1] @ flat[1])
        k = [c, 1 - c]
    out = []
    for leaf in leaves:
        three = leaf[0] + leaf[1]
        new = 2 * k[0] * leaf[0] + 2 * k[1] * leaf[1]
        diff = np.linalg.norm(three) / np.linalg.norm(new)
        out.append(diff * new * gamma if diff > 1 else new * gamma)
    return out


def tree_of(leaves):
    return {"w": jnp.asarray(leaves[0], jnp.float32), "b": jnp.asarray(leaves[1], jnp.float32)}


_UPDATE = jax.jit(
    lambda grads, gamma: mmpareto(gamma=gamma, num_tasks=2).update(
        grads, mmpareto(num_tasks=2).init(None), None
    )
)


@pytest.mark.parametrize("case", ["conflicting", "aligned", "one_zero", "random"])
@pytest.mark.parametrize("seed", range(3))
def test_matches_the_official_step_on_a_two_task_encoder(case, seed):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5))
    if case == "conflicting":
        w[1] -= 2 * w[0]
        b[1] -= 2 * b[0]
    elif case == "aligned":
        w[1] = w[0] + 0.3 * w[1]
        b[1] = b[0] + 0.3 * b[1]
    elif case == "one_zero":
        w[0], b[0] = 0.0, 0.0
    gamma = float(rng.uniform(0.5, 2.0))
    expected = official_step([w, b], gamma)
    updates, _ = _UPDATE(tree_of([w, b]), gamma)
    assert rel_err(updates["w"], expected[0]) < 1e-5
    assert rel_err(updates["b"], expected[1]) < 1e-5


def test_reproduces_the_official_audio_visual_setup_with_three_losses():
    # Losses (multimodal, audio, visual); the audio encoder gets no gradient from the visual loss
    # and vice versa; the heads get every loss. The official code runs its rule per encoder.
    rng = np.random.default_rng(7)
    audio, visual, head = rng.normal(size=(3, 6)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2))
    audio[2], visual[1] = 0.0, 0.0
    audio[1] -= 1.5 * audio[0]  # the audio encoder's two losses conflict, the visual's do not
    grads = {k: jnp.asarray(v, jnp.float32) for k, v in (("a", audio), ("v", visual), ("h", head))}
    params = jax.tree.map(lambda g: jnp.zeros(g.shape[1:]), grads)
    tx = optax.multi_transform(
        {
            "audio": mmpareto(num_tasks=3),
            "visual": mmpareto(num_tasks=3),
            "head": cg.linear_scalarization(),
        },
        {"a": "audio", "v": "visual", "h": "head"},
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    (expected_audio,) = official_step([audio[[0, 1]]])
    (expected_visual,) = official_step([visual[[0, 2]]])
    assert rel_err(updates["a"], expected_audio) < 1e-5
    assert rel_err(updates["v"], expected_visual) < 1e-5
    np.testing.assert_allclose(updates["h"], head.sum(0), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Three or more tasks: the exact min-norm point, by enumeration of supports.
# ---------------------------------------------------------------------------------------------


def exact_min_norm_weights(gram):
    k = len(gram)
    best, best_value = None, np.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            s = list(support)
            system = np.block([[gram[np.ix_(s, s)], np.ones((size, 1))], [np.ones((1, size)), 0]])
            try:
                solution = np.linalg.solve(system, np.r_[np.zeros(size), 1.0])
            except np.linalg.LinAlgError:
                continue
            w = np.zeros(k)
            w[s] = solution[:size]
            if np.all(w >= -1e-12) and w @ gram @ w < best_value - 1e-15:
                best, best_value = w, w @ gram @ w
    return best


def reference_many_tasks(grads, gamma, task_weights):
    h = task_weights[:, None] * grads
    gram = h @ h.T
    joint = h.sum(0)
    if np.all(gram[~np.eye(len(h), dtype=bool)] > 0):
        direction = joint
    else:
        direction = len(h) * exact_min_norm_weights(gram) @ h
    return gamma * max(np.linalg.norm(joint) / np.linalg.norm(direction), 1.0) * direction


@pytest.mark.parametrize("num_tasks", [4])
def test_many_tasks_use_the_exact_min_norm_point(num_tasks):
    rng = np.random.default_rng(num_tasks)
    with jax.enable_x64(True):
        for _ in range(4):
            grads = rng.normal(size=(num_tasks, 9)) + rng.uniform(-0.5, 0.5) * rng.normal(size=9)
            grads *= np.exp(rng.uniform(-1, 1, size=(num_tasks, 1)))
            weights = rng.uniform(0.5, 2, num_tasks)
            expected = reference_many_tasks(grads, 1.3, weights)
            updates, _, _ = run_steps(
                mmpareto, grads[None], dtype=jnp.float64, gamma=1.3, task_weights=weights
            )
            assert rel_err(updates[0], expected) < 1e-9


def test_many_tasks_in_float32():
    rng = np.random.default_rng(11)
    grads = rng.normal(size=(2, 4, 30))
    grads[:, 3] -= 1.5 * grads[:, 0]
    grads[1, 3] = -grads[1, 0] - 0.5 * grads[1, 1]  # 0 in the convex hull: d = 0
    updates, _, _ = run_steps(mmpareto, grads, gamma=1.5)
    assert rel_err(updates[0], reference_many_tasks(grads[0], 1.5, np.ones(4))) < 1e-4
    # No direction is common to all tasks; round-off is not amplified to the joint magnitude.
    assert np.linalg.norm(updates[1]) < 1e-5 * np.linalg.norm(grads[1].sum(0))


# ---------------------------------------------------------------------------------------------
# Properties and extreme inputs.
# ---------------------------------------------------------------------------------------------


def conflicting_steps(seed):
    """Two steps of three task gradients in R^12 (the shape every run below shares)."""
    grads = np.random.default_rng(seed).normal(size=(2, 3, 12))
    grads[:, 2] -= 2 * grads[:, 0]
    return grads


@pytest.mark.parametrize("scale", [1e-10, 1e-4, 1e4, 1e10])
def test_scaling_all_gradients_scales_update(scale):
    grads = conflicting_steps(1)
    base, _, _ = run_steps(mmpareto, grads, gamma=1.5)
    scaled, _, _ = run_steps(mmpareto, grads * scale, gamma=1.5)
    np.testing.assert_allclose(np.asarray(scaled) / scale, base, rtol=1e-4, atol=1e-6)


def test_permuting_tasks_leaves_update_unchanged():
    grads = conflicting_steps(2)
    base, _, _ = run_steps(mmpareto, grads, gamma=1.5)
    permuted, _, _ = run_steps(mmpareto, grads[:, [2, 0, 1]], gamma=1.5)
    np.testing.assert_allclose(permuted, base, rtol=1e-4, atol=1e-6)


def test_zero_and_exactly_opposite_gradients():
    g = np.random.default_rng(3).normal(size=12)
    cases = np.stack([np.zeros((3, 12)), np.stack([g, -g, np.zeros(12)])])
    updates, states, _ = run_steps(mmpareto, cases, gamma=1.5)
    np.testing.assert_array_equal(updates[0], 0.0)
    # The min-norm point of {g, −g} is 0: no direction, no magnitude to restore.
    np.testing.assert_allclose(updates[1], 0.0, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(states.coefficients)))


def test_no_conflict_gives_gamma_times_the_sum():
    rng = np.random.default_rng(4)
    base = rng.normal(size=12)
    grads = base + 0.2 * rng.normal(size=(2, 3, 12))
    updates, states, _ = run_steps(mmpareto, grads, gamma=1.7)
    np.testing.assert_allclose(updates, 1.7 * grads.sum(1), rtol=1e-5)
    np.testing.assert_allclose(states.coefficients, 1.0)


def test_bfloat16_keeps_dtypes():
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5))
    w[1] -= 2 * w[0]
    grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree_of([w, b]))
    updates, state = jax.jit(mmpareto(num_tasks=2).update)(grads, mmpareto(num_tasks=2).init(None))
    assert updates["w"].dtype == jnp.bfloat16
    assert state.coefficients.dtype == jnp.float32
    w32, b32 = (np.asarray(grads[k], float) for k in ("w", "b"))
    expected = official_step([w32, b32])
    assert rel_err(updates["w"], expected[0]) < 1e-2


def test_nan_gradients_propagate():
    grads = conflicting_steps(3)
    grads[:, 0, 1] = np.nan
    updates, _, _ = run_steps(mmpareto, grads, gamma=1.5)
    assert np.all(np.isnan(updates))


def test_shared_mask_leaves_the_heads_unscaled():
    rng = np.random.default_rng(6)
    enc, head = rng.normal(size=(2, 6)), rng.normal(size=(2, 3))
    enc[1] -= 2 * enc[0]
    tx = mmpareto(num_tasks=2, shared_mask={"enc": True, "head": False})
    params = {"enc": jnp.zeros(6), "head": jnp.zeros(3)}
    grads = {"enc": jnp.asarray(enc, jnp.float32), "head": jnp.asarray(head, jnp.float32)}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    (expected,) = official_step([enc])
    assert rel_err(updates["enc"], expected) < 1e-5
    np.testing.assert_allclose(updates["head"], head.sum(0), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": -1.0}, "`gamma`"),
        ({"gamma": float("inf")}, "`gamma`"),
        ({"task_weights": [1.0, 0.0]}, "`task_weights`"),
        ({"num_tasks": 2, "task_weights": [1.0, 2.0, 3.0]}, "num_tasks"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mmpareto(**kwargs)
