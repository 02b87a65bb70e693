"""Decoding the reference model: greedy and beam search, and the label head's probabilities.

Both decoders run under `jax.jit` with a key/value cache and fixed-shape `lax.while_loop`s, and
return token arrays laid out like the training tokens: `[BOS, w1, ..., EOS, PAD, ...]`. PAD and
BOS are never generated.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from flax import nnx
  >>> from camegrad_jax.rrg.decoding import greedy_decode
  >>> from camegrad_jax.rrg.model import ModelConfig, RRGModel
  >>> config = ModelConfig(vocab_size=12, image_size=16, conv_features=(8, 16), norm_groups=4,
  ...     d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1, num_decoder_layers=1, max_len=6)
  >>> model = RRGModel(config, rngs=nnx.Rngs(0))
  >>> tokens = greedy_decode(model, jnp.zeros((3, 2, 16, 16, 1)))
  >>> tokens.shape, bool((tokens[:, 0] == 1).all())
  ((3, 6), True)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from camegrad_jax.rrg.model import RRGModel
from camegrad_jax.rrg.model_layers import MASKED_LOGIT, Cache
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = ["beam_search_decode", "classification_probs", "greedy_decode"]


@nnx.jit
def classification_probs(model: RRGModel, images: jax.Array) -> jax.Array:
    """Label probabilities (B, 14, 4) at inference: softmax without logit adjustment.

    PromptMRG adds `log(base_probs)` in training only and takes the plain softmax at test time.
    """
    return jax.nn.softmax(model.classification_logits(model.visual_features(images)), axis=-1)


def _next_token_log_probs(logits: jax.Array) -> jax.Array:
    """Log-probabilities with PAD and BOS banned, as they never follow a generated token."""
    logits = logits.at[:, PAD_ID].set(MASKED_LOGIT).at[:, BOS_ID].set(MASKED_LOGIT)
    return jax.nn.log_softmax(logits, axis=-1)


def _start_decoding(
    model: RRGModel, images: jax.Array, copies: int, max_len: int
) -> tuple[list[Cache], list[Cache]]:
    """Empty self-attention caches and the cross-attention keys/values, `copies` per image."""
    memory = model.encode(model.visual_features(images))
    memory = jnp.repeat(memory, copies, axis=0)
    batch = memory.shape[0]
    heads = model.config.num_heads
    shape = (batch, heads, max_len, model.config.d_model // heads)
    caches = [(jnp.zeros(shape), jnp.zeros(shape)) for _ in model.decoder_layers]
    return caches, model.cross_kv(memory)


def _check_decode_length(model: RRGModel, max_len: int | None) -> int:
    max_len = model.config.max_len if max_len is None else max_len
    if not 2 <= max_len <= model.config.max_len:
        raise ValueError(
            f"`max_len` must lie in [2, {model.config.max_len}]. Found `max_len = {max_len}`."
        )
    return max_len


@functools.partial(nnx.jit, static_argnames=("max_len",))
def greedy_decode(model: RRGModel, images: jax.Array, max_len: int | None = None) -> jax.Array:
    """Greedy decoding, stopping at EOS.

    Args:
      model: the model (dropout is off in decoding).
      images: float (B, V, H, W, 1).
      max_len: length of the output, BOS included; defaults to `config.max_len`.

    Returns:
      The token ids, int32 of shape (B, max_len), laid out as `[BOS, w1, ..., EOS, PAD, ...]`;
      a report that reaches `max_len` without EOS fills every position. PAD and BOS are never
      generated.
    """
    max_len = _check_decode_length(model, max_len)
    batch = images.shape[0]
    caches, cross_kv = _start_decoding(model, images, 1, max_len)
    tokens = jnp.full((batch, max_len), PAD_ID, jnp.int32).at[:, 0].set(BOS_ID)
    finished = jnp.zeros((batch,), bool)

    def keep_going(state):
        position, _, finished, _ = state
        return (position < max_len) & ~finished.all()

    def step(state):
        position, tokens, finished, caches = state
        logits, caches = model.decode_step(tokens[:, position - 1], position - 1, caches, cross_kv)
        chosen = jnp.argmax(_next_token_log_probs(logits), axis=-1).astype(jnp.int32)
        chosen = jnp.where(finished, PAD_ID, chosen)
        tokens = tokens.at[:, position].set(chosen)
        return position + 1, tokens, finished | (chosen == EOS_ID), caches

    _, tokens, _, _ = jax.lax.while_loop(keep_going, step, (1, tokens, finished, caches))
    return tokens


@functools.partial(nnx.jit, static_argnames=("beam_size", "max_len"))
def beam_search_decode(
    model: RRGModel,
    images: jax.Array,
    beam_size: int = 3,
    max_len: int | None = None,
    length_penalty: float = 1.0,
) -> jax.Array:
    """Beam search, stopping at EOS, returning the best hypothesis of each image.

    Hypotheses are ranked by `sum(log p) / length ** length_penalty`, with `length` the number of
    generated tokens (EOS counted, BOS not): 1.0 (the default, as Hugging Face `generate` used by
    PromptMRG) divides by the length, 0.0 ranks by the summed log-probability (R2Gen's default).

    As in Hugging Face's beam search: each step expands the `beam_size` live hypotheses, takes
    the `2 * beam_size` best continuations, moves those ending in EOS that rank within the top
    `beam_size` to a pool of finished hypotheses (the best `beam_size` are kept), and continues
    the best `beam_size` others. An image is done when its pool is full and no live hypothesis,
    scored at its current length, beats the pool's worst; at `max_len`, live hypotheses join the
    pool. With `beam_size=1` this is exactly greedy decoding.

    Args:
      model: the model (dropout is off in decoding).
      images: float (B, V, H, W, 1).
      beam_size: number of hypotheses kept per image.
      max_len: length of the output, BOS included; defaults to `config.max_len`.
      length_penalty: exponent of the length normalisation.

    Returns:
      int32 (B, max_len) laid out as `greedy_decode`'s output.
    """
    if beam_size < 1:
        raise ValueError(f"`beam_size` must be positive. Found `beam_size = {beam_size}`.")
    if model.config.vocab_size - 2 < 2 * beam_size:
        raise ValueError(
            f"`beam_size` needs a vocabulary of at least 2 * beam_size + 2 ids. Found "
            f"`beam_size = {beam_size}`, `vocab_size = {model.config.vocab_size}`."
        )
    max_len = _check_decode_length(model, max_len)
    batch, beams, vocab = images.shape[0], beam_size, model.config.vocab_size
    caches, cross_kv = _start_decoding(model, images, beams, max_len)
    start = jnp.full((batch, beams, max_len), PAD_ID, jnp.int32).at[:, :, 0].set(BOS_ID)
    # Only the first copy of the start is live, so the first step does not expand duplicates.
    live_log_probs = jnp.full((batch, beams), MASKED_LOGIT).at[:, 0].set(0.0)
    finished_scores = jnp.full((batch, beams), MASKED_LOGIT)
    done = jnp.zeros((batch,), bool)

    def normalise(log_probs, length):
        return log_probs / jnp.asarray(length, jnp.float32) ** length_penalty

    def gather(x, index):  # x (batch, n, ...) indexed by index (batch, k) along axis 1
        return jax.vmap(lambda row, i: row[i])(x, index)

    def keep_going(state):
        position, *_, done = state
        return (position < max_len) & ~done.all()

    def step(state):
        position, live, live_log_probs, caches, finished, finished_scores, done = state
        logits, caches = model.decode_step(
            live[:, :, position - 1].reshape(-1), position - 1, caches, cross_kv
        )
        log_probs = _next_token_log_probs(logits).reshape(batch, beams, vocab)
        candidates = (live_log_probs[..., None] + log_probs).reshape(batch, beams * vocab)
        top_log_probs, top_index = jax.lax.top_k(candidates, 2 * beams)
        parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        extended = gather(live, parent).at[:, :, position].set(token)
        ends = token == EOS_ID

        # Finished pool: an EOS continuation counts only if it ranks within the top `beams`.
        new_scores = jnp.where(
            ends & (jnp.arange(2 * beams) < beams), normalise(top_log_probs, position), MASKED_LOGIT
        )
        pool_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        pool_scores, pool_index = jax.lax.top_k(pool_scores, beams)
        pool = gather(jnp.concatenate([finished, extended], axis=1), pool_index)
        finished = jnp.where(done[:, None, None], finished, pool)
        finished_scores = jnp.where(done[:, None], finished_scores, pool_scores)

        live_log_probs, keep = jax.lax.top_k(jnp.where(ends, MASKED_LOGIT, top_log_probs), beams)
        live = gather(extended, keep)
        flat_parent = (gather(parent, keep) + beams * jnp.arange(batch)[:, None]).reshape(-1)
        caches = jax.tree.map(lambda c: c[flat_parent], caches)

        pool_full = (finished_scores > MASKED_LOGIT / 2).all(axis=1)
        live_hopeless = normalise(live_log_probs.max(axis=1), position) <= finished_scores.min(1)
        done = done | (pool_full & live_hopeless)
        return position + 1, live, live_log_probs, caches, finished, finished_scores, done

    state = (1, start, live_log_probs, caches, start, finished_scores, done)
    _, live, live_log_probs, _, finished, finished_scores, done = jax.lax.while_loop(
        keep_going, step, state
    )
    # Images still running at max_len let their live hypotheses compete with the finished ones.
    live_scores = jnp.where(done[:, None], MASKED_LOGIT, normalise(live_log_probs, max_len - 1))
    scores = jnp.concatenate([finished_scores, live_scores], axis=1)
    hypotheses = jnp.concatenate([finished, live], axis=1)
    return gather(hypotheses, jnp.argmax(scores, axis=1)[:, None])[:, 0]
