"""The layers of the reference report-generation model (:mod:`camegrad_jax.rrg.model`).

A convolutional visual encoder (stride-2 conv blocks with GroupNorm, so the model holds no
mutable batch statistics), and pre-LN transformer encoder and decoder layers whose attention
takes an optional key/value cache for decoding. No layer holds random state: dropout draws from
keys handed out by a :class:`DropoutKeys`, split once per forward pass.

Example:
  >>> from camegrad_jax.rrg.model_layers import decoder_attention_mask
  >>> import jax.numpy as jnp
  >>> decoder_attention_mask(jnp.array([[1, 5, 0]]))[0, 0].astype(int).tolist()
  [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from camegrad_jax.rrg.tokenizer import PAD_ID

if TYPE_CHECKING:  # The configuration lives with the model, which imports these layers.
    from camegrad_jax.rrg.model import ModelConfig

__all__ = [
    "MASKED_LOGIT",
    "Cache",
    "ConvBlock",
    "DecoderLayer",
    "DropoutKeys",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "VisualEncoder",
    "decoder_attention_mask",
    "dropout",
    "sinusoidal_positions",
]

# Masked attention logits and banned tokens get this finite value rather than -inf, so that a
# fully masked row stays finite and scores can still be compared and ordered.
MASKED_LOGIT = -1e9

Cache = tuple[jax.Array, jax.Array]  # keys, values: (batch, heads, length, head_dim)


class DropoutKeys:
    """The dropout keys of one forward pass, split from one key up front and handed out in turn.

    One split for the whole pass rather than one per layer: on a CPU each split site adds
    noticeably to compile time. With `key=None` every key is None, which turns dropout off.
    """

    def __init__(self, key: jax.Array | None, count: int):
        self._keys = None if key is None else jax.random.split(key, count)
        self._count = count
        self._used = 0

    def __call__(self) -> jax.Array | None:
        if self._used == self._count:
            raise RuntimeError(f"All {self._count} dropout keys are used; count the sites again.")
        self._used += 1
        return None if self._keys is None else self._keys[self._used - 1]

    def check_all_used(self) -> None:
        """Fail when keys are left over: the site count of some layer is wrong."""
        if self._used != self._count:
            raise RuntimeError(f"{self._used} of {self._count} dropout keys used.")


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout driven by an explicit key; the identity when `key` is None."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def sinusoidal_positions(length: int, width: int) -> jax.Array:
    """The sine/cosine position table of Vaswani et al., shape (length, width)."""
    positions = np.arange(length, dtype=np.float64)[:, None]
    frequencies = np.exp(-math.log(10000.0) * np.arange(0, width, 2) / width)
    table = np.zeros((length, width))
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: width // 2])
    return jnp.asarray(table, dtype=jnp.float32)


class ConvBlock(nnx.Module):
    """A stride-2 conv that halves the grid, then a stride-1 conv; each with GroupNorm and GELU."""

    def __init__(self, in_features: int, out_features: int, groups: int, *, rngs: nnx.Rngs):
        self.down = nnx.Conv(in_features, out_features, (3, 3), strides=2, rngs=rngs)
        self.down_norm = nnx.GroupNorm(out_features, num_groups=groups, rngs=rngs)
        self.refine = nnx.Conv(out_features, out_features, (3, 3), rngs=rngs)
        self.refine_norm = nnx.GroupNorm(out_features, num_groups=groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.gelu(self.down_norm(self.down(x)))
        return jax.nn.gelu(self.refine_norm(self.refine(x)))


class VisualEncoder(nnx.Module):
    """The shared conv stack: images (N, H, W, 1) to a patch grid (N, H/2^k, W/2^k, C)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        widths = (1, *config.conv_features)
        self.blocks = nnx.List(
            [
                ConvBlock(w_in, w_out, config.norm_groups, rngs=rngs)
                for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        for block in self.blocks:
            images = block(images)
        return images


class MultiHeadAttention(nnx.Module):
    """Scaled dot-product attention whose keys/values are projected separately, for caching."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nnx.Linear(d_model, d_model, rngs=rngs)
        self.key = nnx.Linear(d_model, d_model, rngs=rngs)
        self.value = nnx.Linear(d_model, d_model, rngs=rngs)
        self.out = nnx.Linear(d_model, d_model, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        x = x.reshape(batch, length, self.num_heads, width // self.num_heads)
        return x.transpose(0, 2, 1, 3)

    def project_kv(self, x: jax.Array) -> Cache:
        """Keys and values (batch, heads, length, head_dim) of the sequence `x`."""
        return self._heads(self.key(x)), self._heads(self.value(x))

    def __call__(
        self,
        x: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        mask: jax.Array | None,
        dropout_keys: DropoutKeys,
    ) -> jax.Array:
        """Attend from `x` (batch, T, d) to `keys`/`values`; `mask` broadcasts to (b, h, T, S)."""
        queries = self._heads(self.query(x))
        scores = jnp.einsum("bhtd,bhsd->bhts", queries, keys) / math.sqrt(queries.shape[-1])
        if mask is not None:
            scores = jnp.where(mask, scores, MASKED_LOGIT)
        weights = dropout(jax.nn.softmax(scores, axis=-1), self.dropout, dropout_keys())
        mixed = jnp.einsum("bhts,bhsd->bhtd", weights, values)
        batch, _, length, _ = mixed.shape
        return self.out(mixed.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class FeedForward(nnx.Module):
    """Position-wise two-layer ReLU network."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, *, rngs: nnx.Rngs):
        self.dropout = dropout
        self.hidden = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.out = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: jax.Array, dropout_keys: DropoutKeys) -> jax.Array:
        return self.out(dropout(jax.nn.relu(self.hidden(x)), self.dropout, dropout_keys()))


class EncoderLayer(nnx.Module):
    """Pre-LN self-attention and feed-forward over the patch tokens."""

    DROPOUT_SITES = 4

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.dropout = config.dropout
        self.attention_norm = nnx.LayerNorm(d, rngs=rngs)
        self.attention = MultiHeadAttention(d, config.num_heads, config.dropout, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(d, rngs=rngs)
        self.ff = FeedForward(d, config.d_ff, config.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, dropout_keys: DropoutKeys) -> jax.Array:
        h = self.attention_norm(x)
        attended = self.attention(h, *self.attention.project_kv(h), None, dropout_keys)
        x = x + dropout(attended, self.dropout, dropout_keys())
        return x + dropout(self.ff(self.ff_norm(x), dropout_keys), self.dropout, dropout_keys())


class DecoderLayer(nnx.Module):
    """Pre-LN masked self-attention, cross-attention to the visual memory, and feed-forward."""

    DROPOUT_SITES = 6

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.dropout = config.dropout
        self.self_norm = nnx.LayerNorm(d, rngs=rngs)
        self.self_attention = MultiHeadAttention(d, config.num_heads, config.dropout, rngs=rngs)
        self.cross_norm = nnx.LayerNorm(d, rngs=rngs)
        self.cross_attention = MultiHeadAttention(d, config.num_heads, config.dropout, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(d, rngs=rngs)
        self.ff = FeedForward(d, config.d_ff, config.dropout, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        self_mask: jax.Array,
        cross_kv: Cache,
        dropout_keys: DropoutKeys,
        cache: Cache | None = None,
        position: jax.Array | int = 0,
    ) -> tuple[jax.Array, Cache]:
        """Run the layer on `x` (batch, T, d).

        Teacher forcing passes the whole sequence and no `cache`. Incremental decoding passes one
        token (T = 1) at `position` and the `cache` of earlier keys/values, into which the
        token's own key/value are written; the returned cache is the updated one.
        """
        h = self.self_norm(x)
        self_kv = self.self_attention.project_kv(h)
        if cache is not None:
            start = (0, 0, position, 0)
            self_kv = tuple(
                jax.lax.dynamic_update_slice(c, n, start)
                for c, n in zip(cache, self_kv, strict=True)
            )
        attended = self.self_attention(h, *self_kv, self_mask, dropout_keys)
        x = x + dropout(attended, self.dropout, dropout_keys())
        attended = self.cross_attention(self.cross_norm(x), *cross_kv, None, dropout_keys)
        x = x + dropout(attended, self.dropout, dropout_keys())
        x = x + dropout(self.ff(self.ff_norm(x), dropout_keys), self.dropout, dropout_keys())
        return x, self_kv


def decoder_attention_mask(input_tokens: jax.Array) -> jax.Array:
    """Self-attention mask (B, 1, T, T) of the decoder: True where query t may see key s.

    Causal (s <= t) and key padding (token s is not PAD). With right padding the padding part
    changes only the outputs at PAD positions, which carry no loss; it keeps them well defined.
    """
    length = input_tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None, None] & (input_tokens != PAD_ID)[:, None, None, :]
