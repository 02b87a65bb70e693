"""Tests of the reference report-generation model (`camegrad_jax.rrg.model`).

Compiling is the slow part on a CPU, so the tests share a few jitted functions called with the
same shapes (batches of `BATCH` studies, two views, `TINY.max_len` tokens).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.tiny_model import BATCH, TINY, make_batch

from camegrad_jax.rrg.decoding import beam_search_decode, classification_probs, greedy_decode
from camegrad_jax.rrg.model import (
    BaseProbs,
    ModelConfig,
    RRGModel,
    classification_loss,
    loss_vector,
    losses_with_aux,
    report_loss,
    shared_parameter_mask,
)
from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS, POSITIVE
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID

forward = nnx.jit(lambda model, images, inputs: model(images, inputs))
memory = nnx.jit(lambda model, images: model.encode(model.visual_features(images)))
jit_losses = nnx.jit(losses_with_aux, static_argnames=("train",))


@functools.partial(jax.jit, static_argnums=0)
def task_jacobian(graphdef, params, rest, batch, key):
    """The loss vector and its Jacobian (one gradient per task), the pattern optimizers use."""

    def vector(p):
        return loss_vector(graphdef, p, rest, batch, train=True, dropout_key=key)

    value, pullback = jax.vjp(vector, params)
    (jacobian,) = jax.vmap(pullback)(jnp.eye(value.shape[0], dtype=value.dtype))
    return value, jacobian


def rbg_key(seed: int) -> jax.Array:
    # RBG keys compile random number generation several times faster than the default
    # threefry keys on a CPU; the model only splits keys and draws from them, whatever their
    # implementation.
    return jax.random.key(seed, impl="rbg")


def make_model(seed: int) -> RRGModel:
    return RRGModel(TINY, rngs=nnx.Rngs(rbg_key(seed)))


@pytest.fixture(scope="module")
def model() -> RRGModel:
    return make_model(0)


@pytest.fixture(scope="module")
def trained() -> tuple[RRGModel, jax.Array, jax.Array]:
    """A model after 30 plain Adam steps on the sum of the losses of `make_batch()`.

    Returns the model and the loss vectors before and after. Having memorised reports of varied
    lengths, it is also the model the decoding tests use: a random one hardly ever emits EOS.
    """
    model = make_model(3)
    batch = make_batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def apply(jacobian, opt_state, params):
        grads = jax.tree.map(lambda rows: rows.sum(axis=0), jacobian)  # gradient of the sum
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    first = task_jacobian(graphdef, params, rest, batch, rbg_key(0))[0]
    for step in range(30):
        _, jacobian = task_jacobian(graphdef, params, rest, batch, rbg_key(step))
        params, opt_state = apply(jacobian, opt_state, params)
    last = task_jacobian(graphdef, params, rest, batch, rbg_key(99))[0]
    nnx.update(model, params)
    return model, first, last


@pytest.fixture(scope="module")
def reporter(trained: tuple[RRGModel, jax.Array, jax.Array]) -> RRGModel:
    return trained[0]


@pytest.mark.parametrize("views", [1, 2])
def test_shapes(model: RRGModel, views: int) -> None:
    batch = make_batch(views)
    lm_logits, cls_logits = forward(model, batch["images"], batch["tokens"][:, :-1])
    assert lm_logits.shape == (BATCH, TINY.max_len - 1, TINY.vocab_size)
    assert cls_logits.shape == (BATCH, NUM_OBSERVATIONS, NUM_LABEL_CLASSES)

    values, aux = jit_losses(model, batch, train=False)
    assert values.shape == (2,) and values.dtype == jnp.float32
    assert np.isfinite(values).all()
    assert aux["cls_probs"].shape == (BATCH, NUM_OBSERVATIONS, NUM_LABEL_CLASSES)
    np.testing.assert_allclose(aux["cls_probs"].sum(-1), 1.0, rtol=1e-5)
    probs = classification_probs(model, batch["images"])
    np.testing.assert_allclose(probs, aux["cls_probs"], rtol=1e-5)
    assert greedy_decode(model, batch["images"]).shape == (BATCH, TINY.max_len)


def test_views_are_told_apart(model: RRGModel) -> None:
    # Swapping the two views permutes the memory tokens, plus the learned view embedding.
    images = make_batch()["images"]
    original = memory(model, images)
    swapped = memory(model, images[:, ::-1])
    patches = TINY.patches_per_view
    unswapped = jnp.concatenate([swapped[:, patches:], swapped[:, :patches]], axis=1)
    assert not np.allclose(original, unswapped, atol=1e-6)


def test_classification_pools_every_view(model: RRGModel) -> None:
    images = make_batch()["images"]
    probs = classification_probs(model, images)
    for view in range(2):
        changed = images.at[:, view].multiply(-1.0)
        assert not np.allclose(classification_probs(model, changed), probs, atol=1e-7)


def test_causal_mask(model: RRGModel) -> None:
    batch = make_batch()
    inputs = batch["tokens"][:, :-1].at[:, 1:].set(5)  # no PAD, so only causality masks keys
    changed_at = 4
    logits, _ = forward(model, batch["images"], inputs)
    logits_changed, _ = forward(model, batch["images"], inputs.at[:, changed_at].set(7))
    np.testing.assert_array_equal(logits[:, :changed_at], logits_changed[:, :changed_at])
    later_gap = np.abs(logits[:, changed_at:] - logits_changed[:, changed_at:]).max(axis=-1)
    assert (later_gap > 1e-6).all()


def test_report_loss_ignores_pad_targets() -> None:
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.asarray([[4, 5, EOS_ID, PAD_ID, PAD_ID], [6, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
    loss = report_loss(logits, targets, 0.1)
    noise = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
    on_pad = (targets == PAD_ID)[..., None]
    np.testing.assert_allclose(report_loss(logits + 5 * noise * on_pad, targets, 0.1), loss)
    assert not np.isclose(report_loss(logits + 5 * noise * ~on_pad, targets, 0.1), loss)

    # Mean over the 5 counted targets, and the smoothed target (1 - eps) one_hot + eps / vocab.
    smoothed = optax.smooth_labels(jax.nn.one_hot(targets, 7), 0.1)
    per_token = optax.softmax_cross_entropy(logits, smoothed)
    np.testing.assert_allclose(loss, per_token[~on_pad[..., 0]].mean(), rtol=1e-6)


def test_model_loss_unchanged_by_extra_padding(model: RRGModel) -> None:
    batch = make_batch(max_words=4)  # EOS at position 5 at the latest
    short = dict(batch, tokens=batch["tokens"][:, :6])
    # Equal up to float32 round-off: the two programs sum over different token counts.
    np.testing.assert_allclose(
        jit_losses(model, batch, train=False)[0],
        jit_losses(model, short, train=False)[0],
        rtol=1e-6,
    )


def test_classification_head_init(model: RRGModel) -> None:
    kernel = np.asarray(model.classifier.kernel[...])
    assert kernel.shape == (TINY.conv_features[-1], NUM_OBSERVATIONS * NUM_LABEL_CLASSES)
    assert abs(kernel.std() - 1e-3) < 1e-4
    assert abs(kernel.mean()) < 1e-4
    np.testing.assert_array_equal(model.classifier.bias[...], 0.0)
    # Such a head starts out almost uniform over the 4 classes.
    probs = classification_probs(model, make_batch()["images"])
    np.testing.assert_allclose(probs, 1 / NUM_LABEL_CLASSES, atol=0.02)


def test_logit_adjustment_only_at_train_time() -> None:
    model = make_model(5)
    batch = make_batch()
    key = rbg_key(0)
    # The label branch has no dropout, so its train-time loss is deterministic.
    np.testing.assert_allclose(  # base_probs starts at ones: no adjustment
        jit_losses(model, batch, train=True, dropout_key=key)[0][1],
        jit_losses(model, batch, train=False)[0][1],
        rtol=1e-6,
    )
    base_probs = jnp.linspace(0.05, 1.0, NUM_OBSERVATIONS)
    model.set_base_probs(base_probs)
    (eval_losses, aux) = jit_losses(model, batch, train=False)
    train_losses, _ = jit_losses(model, batch, train=True, dropout_key=key)
    _, cls_logits = forward(model, batch["images"], batch["tokens"][:, :-1])

    np.testing.assert_allclose(
        eval_losses[1], classification_loss(cls_logits, batch["labels"]), rtol=1e-6
    )
    adjusted = cls_logits.at[..., POSITIVE].add(jnp.log(base_probs))
    expected = optax.softmax_cross_entropy_with_integer_labels(adjusted, batch["labels"]).mean()
    np.testing.assert_allclose(train_losses[1], expected, rtol=1e-6)
    assert not np.isclose(train_losses[1], eval_losses[1])
    # Reported probabilities are never adjusted.
    np.testing.assert_allclose(aux["cls_probs"], jax.nn.softmax(cls_logits), rtol=1e-5)
    np.testing.assert_allclose(
        classification_probs(model, batch["images"]), jax.nn.softmax(cls_logits), rtol=1e-5
    )
    # The prior is state, not a parameter: optimizers built on `nnx.Param` never see it.
    assert "base_probs" not in nnx.state(model, nnx.Param)
    assert "base_probs" in nnx.state(model, BaseProbs)
    with pytest.raises(ValueError, match="base_probs"):
        model.set_base_probs(jnp.ones(3))


def test_dropout_is_driven_by_the_key(model: RRGModel) -> None:
    batch = make_batch()
    key = rbg_key(1)
    first = jit_losses(model, batch, train=True, dropout_key=key)[0]
    np.testing.assert_array_equal(first, jit_losses(model, batch, train=True, dropout_key=key)[0])
    other = jit_losses(model, batch, train=True, dropout_key=rbg_key(2))[0]
    assert not np.isclose(first[0], other[0])
    np.testing.assert_array_equal(
        jit_losses(model, batch, train=False, dropout_key=key)[0],
        jit_losses(model, batch, train=False)[0],
    )
    with pytest.raises(ValueError, match="dropout_key"):
        losses_with_aux(model, batch, train=True)


def test_task_jacobian_is_the_derivative_of_the_loss_vector(model: RRGModel) -> None:
    batch = make_batch()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = rbg_key(0)
    value, jacobian = task_jacobian(graphdef, params, rest, batch, key)
    assert value.shape == (2,)
    # Central differences along a random unit direction; the same key fixes the dropout masks.
    rng = np.random.default_rng(7)
    leaves, treedef = jax.tree.flatten(params)
    direction = [rng.normal(size=x.shape).astype(np.float32) for x in leaves]
    norm = np.sqrt(sum(np.sum(d**2) for d in direction))
    direction = treedef.unflatten([jnp.asarray(d / norm) for d in direction])
    step = 1e-2

    def shifted(sign):
        moved = jax.tree.map(lambda p, d: p + sign * step * d, params, direction)
        return task_jacobian(graphdef, moved, rest, batch, key)[0]

    finite_difference = (shifted(1.0) - shifted(-1.0)) / (2 * step)
    directional = sum(
        jnp.tensordot(j, d, axes=d.ndim)
        for j, d in zip(jax.tree.leaves(jacobian), jax.tree.leaves(direction), strict=True)
    )
    np.testing.assert_allclose(directional, finite_difference, rtol=1e-2, atol=1e-4)


def test_shared_parameter_mask_marks_exactly_the_conv_encoder(model: RRGModel) -> None:
    mask = shared_parameter_mask(model)
    params = nnx.state(model, nnx.Param)
    assert jax.tree.structure(mask) == jax.tree.structure(nnx.as_pure(params))
    flat_mask = dict(nnx.to_flat_state(mask))
    assert all(shared == (path[0] == "visual_encoder") for path, shared in flat_mask.items())
    assert any(flat_mask.values())

    # The leaves that both task gradients touch are exactly the masked ones.
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, jacobian = task_jacobian(graphdef, params, rest, make_batch(), rbg_key(0))
    touched = {
        path: bool(jnp.all(jnp.any(rows.reshape(2, -1) != 0, axis=1)))
        for path, rows in nnx.to_flat_state(nnx.as_pure(jacobian))
    }
    assert touched == flat_mask
    # The mask is a tree prefix of the Variable-wrapped parameters too.
    sizes = jax.tree.map(lambda shared, p: p.size * shared, mask, params)
    assert sum(jax.tree.leaves(sizes)) > 0


@nnx.jit
def incremental_logits(model: RRGModel, images: jax.Array, tokens: jax.Array) -> jax.Array:
    """Next-token logits (B, T, vocab) computed one position at a time with the cache."""
    cross_kv = model.cross_kv(memory(model, images))
    batch, length = tokens.shape
    shape = (batch, TINY.num_heads, length, TINY.d_model // TINY.num_heads)
    caches = [(jnp.zeros(shape), jnp.zeros(shape)) for _ in model.decoder_layers]

    def step(caches, position):
        logits, caches = model.decode_step(tokens[:, position], position, caches, cross_kv)
        return caches, logits

    _, logits = jax.lax.scan(step, caches, jnp.arange(length))
    return logits.swapaxes(0, 1)


def test_incremental_decoding_matches_teacher_forcing(model: RRGModel) -> None:
    batch = make_batch()
    inputs = batch["tokens"][:, :-1].at[:, 1:].set(jnp.arange(4, 4 + TINY.max_len - 2))
    expected, _ = forward(model, batch["images"], inputs)
    np.testing.assert_allclose(
        incremental_logits(model, batch["images"], inputs), expected, rtol=1e-4, atol=1e-5
    )


def test_greedy_matches_argmax_of_full_sequence_logits(reporter: RRGModel) -> None:
    images = make_batch()["images"]
    tokens = np.asarray(greedy_decode(reporter, images))
    lm_logits, _ = forward(reporter, images, jnp.asarray(tokens[:, :-1]))
    lm_logits = np.array(lm_logits)
    lm_logits[..., [PAD_ID, BOS_ID]] = -np.inf  # decoding never generates these
    lengths = []
    for row in range(BATCH):
        ends = np.flatnonzero(tokens[row] == EOS_ID)
        last = ends[0] if ends.size else TINY.max_len - 1
        lengths.append(last)
        np.testing.assert_array_equal(
            np.argmax(lm_logits[row, :last], axis=-1), tokens[row, 1 : last + 1]
        )
    assert max(lengths) >= 5  # enough steps for the key/value cache to matter
    assert min(lengths) < TINY.max_len - 1  # and a report that stops at EOS


def assert_valid_reports(tokens: np.ndarray, max_len: int) -> None:
    assert tokens.shape == (BATCH, max_len) and tokens.dtype == np.int32
    assert (tokens[:, 0] == BOS_ID).all()
    for row in tokens:
        ends = np.flatnonzero(row == EOS_ID)
        last = ends[0] if ends.size else max_len - 1
        assert not np.isin(row[1:last], [PAD_ID, BOS_ID, EOS_ID]).any()
        assert (row[last + 1 :] == PAD_ID).all()


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_of_one_is_greedy(reporter: RRGModel, length_penalty: float) -> None:
    images = make_batch()["images"]
    np.testing.assert_array_equal(
        beam_search_decode(reporter, images, 1, length_penalty=length_penalty),
        greedy_decode(reporter, images),
    )


def summed_log_prob(model: RRGModel, images: jax.Array, tokens: np.ndarray) -> np.ndarray:
    """Log-probability of each generated report under decoding's distribution (no PAD/BOS)."""
    lm_logits, _ = forward(model, images, jnp.asarray(tokens[:, :-1]))
    lm_logits = lm_logits.at[..., PAD_ID].set(-1e9).at[..., BOS_ID].set(-1e9)
    log_probs = np.asarray(jax.nn.log_softmax(lm_logits, axis=-1))
    picked = np.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    return (picked * (tokens[:, 1:] != PAD_ID)).sum(axis=1)


def test_beam_search_outputs_are_valid_reports(reporter: RRGModel) -> None:
    images = make_batch()["images"]
    greedy = np.asarray(greedy_decode(reporter, images))
    assert_valid_reports(greedy, TINY.max_len)
    assert (greedy == EOS_ID).any()
    beams = np.asarray(beam_search_decode(reporter, images, 3, length_penalty=0.0))
    assert_valid_reports(beams, TINY.max_len)
    assert_valid_reports(np.asarray(beam_search_decode(reporter, images, 4, 7)), 7)
    # Ranked by summed log-probability, the wider search does at least as well as greedy here
    # (beam search guarantees it only in most cases, so this checks this fixed example).
    assert (
        summed_log_prob(reporter, images, beams) >= summed_log_prob(reporter, images, greedy) - 1e-4
    ).all()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="d_model"):
        ModelConfig(vocab_size=10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig(vocab_size=10, image_size=60)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelConfig(vocab_size=2)
    assert ModelConfig(vocab_size=10).patches_per_view == 16


def test_losses_fall_with_adam(trained: tuple[RRGModel, jax.Array, jax.Array]) -> None:
    _, first, last = trained
    assert (last < 0.8 * first).all(), (first, last)
