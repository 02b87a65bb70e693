"""RotoGrad against NumPy re-implementations of the official `RotoGrad._rep_grad`, and end to end
on a Flax NNX model (the checks of the interoperability suite, which cannot host it: its update
needs the gradients with respect to the shared representation)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx
from helpers.loss_testing import rel_err

import camegrad_jax as cg
from camegrad_jax._rotograd import Rotation, RotoGrad, rotograd_scaling

T, K, B, D_IN, D = 8, 3, 5, 4, 6


def official_scaling(rep_grads, burn_in_period):
    """`RotoGrad._rep_grad`'s gradient for the backbone, step by step: (T, K, B, D) → (T, B, D)."""
    initial, out = None, []
    for counter, grads in enumerate(rep_grads):
        norms = np.maximum(np.linalg.norm(grads.reshape(len(grads), -1), axis=1), 1e-15)
        if initial is None or counter == burn_in_period:
            initial = norms
        ratios = norms / initial
        alphas = ratios / max(ratios.sum(), 1e-15)
        common = np.sum(alphas * norms)
        out.append(sum(g / n * common for g, n in zip(grads, norms, strict=True)))
    return np.array(out)


@functools.cache
def _scaling_run(burn_in_period):
    tx = rotograd_scaling(burn_in_period=burn_in_period, num_tasks=K)

    @jax.jit
    def run(param_grads, rep_grads):
        params = jnp.zeros(param_grads.shape[2:], param_grads.dtype)

        def body(state, step):
            updates, state = tx.update(step[0], state, params, representation_grads=step[1])
            return state, updates

        return jax.lax.scan(body, tx.init(params), (param_grads, rep_grads))[1]

    return run


@pytest.mark.parametrize("seed", range(3))
def test_backbone_update_matches_the_official_representation_gradient(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, D_IN))
    # Task gradients with respect to z = x @ W, with norms drifting differently over time.
    rep_grads = rng.normal(size=(T, K, B, D)) * np.exp(
        rng.normal(size=(1, K, 1, 1))
        + np.linspace(0, 1, T)[:, None, None, None] * rng.normal(size=(1, K, 1, 1))
    )
    param_grads = np.einsum("bi,tkbd->tkid", x, rep_grads)  # ∇_W L_k = xᵀ g_k
    updates = _scaling_run(3)(jnp.asarray(param_grads), jnp.asarray(rep_grads))
    expected = np.einsum("bi,tbd->tid", x, official_scaling(rep_grads, 3))
    assert rel_err(updates, expected) < 1e-5


def test_burn_in_resets_the_reference_norms():
    rep_grads = np.ones((T, K, B, D)) * np.array([1.0, 2.0, 4.0])[None, :, None, None]
    rep_grads[3:] *= np.array([1.0, 0.5, 0.25])[None, :, None, None]  # equal norms from step 3
    param_grads = rep_grads.sum(2)
    updates = np.asarray(_scaling_run(3)(jnp.asarray(param_grads), jnp.asarray(rep_grads)))
    expected = official_scaling(rep_grads, 3).sum(1)
    np.testing.assert_allclose(updates, expected, rtol=1e-5)


def test_scaling_is_equivariant_and_finite_at_extreme_scales():
    rng = np.random.default_rng(4)
    rep_grads = rng.normal(size=(T, K, B, D))
    param_grads = rep_grads.sum(2)
    base = np.asarray(_scaling_run(20)(jnp.asarray(param_grads), jnp.asarray(rep_grads)))
    for scale in [1e-10, 1e10]:
        scaled = _scaling_run(20)(jnp.asarray(param_grads * scale), jnp.asarray(rep_grads * scale))
        np.testing.assert_allclose(np.asarray(scaled) / scale, base, rtol=1e-4, atol=1e-6)
    zero = _scaling_run(20)(jnp.zeros_like(param_grads), jnp.zeros_like(rep_grads))
    np.testing.assert_array_equal(zero, 0.0)


def test_bfloat16_and_inject_hyperparams():
    rng = np.random.default_rng(5)
    rep_grads = jnp.asarray(rng.normal(size=(K, B, D)), jnp.bfloat16)
    param_grads = rep_grads.sum(1)
    tx = optax.inject_hyperparams(rotograd_scaling)(burn_in_period=2, num_tasks=K)
    params = jnp.zeros(D, jnp.bfloat16)
    updates, state = jax.jit(tx.update)(
        param_grads, tx.init(params), params, representation_grads=rep_grads
    )
    assert updates.dtype == jnp.bfloat16
    assert state.inner_state.method_state.initial_norms.dtype == jnp.float32
    expected = official_scaling(np.asarray(rep_grads, float)[None], 2)[0].sum(0)
    assert rel_err(updates, expected) < 1e-2


def test_non_finite_representation_gradients_keep_state():
    tx = rotograd_scaling(num_tasks=2)
    params = jnp.zeros(3)
    bad = jnp.ones((2, 4, 3)).at[0, 0, 0].set(jnp.nan)
    updates, state = jax.jit(tx.update)(
        jnp.ones((2, 3)), tx.init(params), params, representation_grads=bad
    )
    assert np.all(np.isnan(updates))
    assert int(state.method_state.count) == 0


# ---------------------------------------------------------------------------------------------
# The rotations.
# ---------------------------------------------------------------------------------------------


def official_rotation_gradient(generators, rep_grads):
    """∂/∂A of Σ_k mean_b ‖R_k ḡ_b − ĝ_{k,b}‖² (ĝ, ḡ constant), R_k = expm(A_k − A_kᵀ) with A_k
    the strict lower triangle: the matrix gradient, pulled back through the exponential with the
    adjoint Fréchet derivative (scipy)."""
    k = len(generators)
    mean = rep_grads.mean(0)
    norms = np.linalg.norm(rep_grads.reshape(k, -1), axis=1)
    reference = np.mean(rep_grads * (np.linalg.norm(mean) / norms)[:, None, None], axis=0)
    out = []
    for a, g in zip(generators, rep_grads, strict=True):
        lower = np.tril(a, -1)
        skew = lower - lower.T
        rotation = scipy.linalg.expm(skew)
        rotated = g @ rotation.T  # ĝ_b = R g_b
        residual = reference @ rotation.T - rotated
        grad_rotation = 2 * residual.T @ reference / len(reference)
        grad_skew = scipy.linalg.expm_frechet(skew.T, grad_rotation, compute_expm=False)
        out.append(np.tril(grad_skew - grad_skew.T, -1))
    return np.array(out)


def test_rotation_loss_gradient_matches_the_official_objective():
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        module = RotoGrad(K, D, param_dtype=jnp.float64)
        generators = rng.normal(size=(K, D, D)) * 0.5
        module.generators[...] = jnp.asarray(generators)
        rep_grads = rng.normal(size=(K, B, D))
        rotation_grad = nnx.jit(
            nnx.grad(lambda m, g: m.rotation_loss(g), argnums=nnx.DiffState(0, Rotation))
        )
        grads = rotation_grad(module, jnp.asarray(rep_grads))
        expected = official_rotation_gradient(generators, rep_grads)
        assert rel_err(grads["generators"][...], expected) < 1e-10


@nnx.jit
def _rotation_checks(module, z):
    """The rotations, the rotated copies of z, and the task losses' gradient on the rotations."""
    task_loss_grad = nnx.grad(
        lambda m: jnp.sum(m(z) ** 2 * jnp.arange(z.shape[-1])), argnums=nnx.DiffState(0, Rotation)
    )(module)
    return module.rotations(), module(z), task_loss_grad["generators"][...]


def test_rotations_are_proper_and_only_rotate_the_leading_features():
    rng = np.random.default_rng(7)
    module = RotoGrad(2, 3)
    module.generators[...] = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
    z = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    rotations, copies, task_loss_grad = _rotation_checks(module, z)
    rotations = np.asarray(rotations, float)
    for r in rotations:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-5)
        assert np.linalg.det(r) > 0
    assert copies.shape == (2, 4, 5)
    np.testing.assert_allclose(
        copies[:, :, :3], np.einsum("kij,bj->kbi", rotations, z[:, :3]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(copies[:, :, 3:], jnp.broadcast_to(z[:, 3:], (2, 4, 2)))
    # The task losses do not train the rotations (the official `R.detach()`).
    np.testing.assert_array_equal(task_loss_grad, 0.0)
    identity, _, _ = _rotation_checks(RotoGrad(2, 3), z)
    np.testing.assert_allclose(identity, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-7)


class _Model(nnx.Module):
    def __init__(self, rngs):
        self.backbone = nnx.Linear(D_IN, D, rngs=rngs)
        self.rotograd = RotoGrad(2, D)
        self.heads = nnx.Linear(D, 2, rngs=rngs)

    def representation(self, x):
        return jnp.tanh(self.backbone(x))

    def predict(self, z):
        copies = self.rotograd(z)  # (2, batch, D)
        return (
            jnp.einsum("kbd,dk->kb", copies, self.heads.kernel[...]) + self.heads.bias[...][:, None]
        )


def test_trains_an_nnx_model_end_to_end():
    model = _Model(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (32, D_IN))
    targets = jnp.stack([jnp.sin(x.sum(1)), -jnp.sin(x.sum(1)) + x[:, 0]])

    def backbone_only(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key == "backbone", params)

    tx = optax.chain(rotograd_scaling(num_tasks=2, shared_mask=backbone_only), optax.adam(1e-2))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rotation_optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=Rotation)

    @nnx.jit
    def train_step(model, optimizer, rotation_optimizer):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def losses(params, probe):
            m = nnx.merge(graphdef, params, rest)
            preds = m.predict(m.representation(x) + probe)
            return jnp.mean((preds - targets) ** 2, axis=1)

        probe = jnp.zeros((32, D))
        values, (grads, rep_grads) = cg.task_gradients(lambda pp: losses(*pp), (params, probe))
        optimizer.update(model, grads, representation_grads=rep_grads)
        rotation_grads = nnx.grad(
            lambda m: m.rotograd.rotation_loss(rep_grads), argnums=nnx.DiffState(0, Rotation)
        )(model)
        rotation_optimizer.update(model, rotation_grads)
        return values

    first = train_step(model, optimizer, rotation_optimizer)
    for _ in range(60):
        last = train_step(model, optimizer, rotation_optimizer)
    assert float(jnp.sum(last)) < 0.7 * float(jnp.sum(first))
    rotations = np.asarray(model.rotograd.rotations(), float)
    assert not np.allclose(rotations, np.eye(D))  # the rotations moved
    np.testing.assert_allclose(
        rotations @ np.swapaxes(rotations, 1, 2),
        np.broadcast_to(np.eye(D), rotations.shape),
        atol=1e-5,
    )


# ---------------------------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------------------------


def test_missing_or_misshapen_representation_grads():
    tx = rotograd_scaling(num_tasks=2)
    params = jnp.zeros(3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="`representation_grads=...`"):
        tx.update(jnp.ones((2, 3)), state, params)
    with pytest.raises(ValueError, match="K = 2"):
        tx.update(jnp.ones((2, 3)), state, params, representation_grads=jnp.ones((3, 4, 3)))
    module = RotoGrad(2, 3)
    with pytest.raises(ValueError, match="K = 2"):
        module.rotation_loss(jnp.ones((3, 4, 3)))
    with pytest.raises(ValueError, match="rotation_size = 3"):
        module(jnp.ones((4, 2)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: rotograd_scaling(burn_in_period=0), "`burn_in_period`"),
        (lambda: rotograd_scaling(burn_in_period=2.5), "`burn_in_period`"),
        (lambda: rotograd_scaling(task_weights=[1.0, -1.0]), "`task_weights`"),
        (lambda: RotoGrad(0, 3), "`num_tasks`"),
        (lambda: RotoGrad(2, 0), "`rotation_size`"),
    ],
)
def test_bad_hyperparameters_raise_named_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()
