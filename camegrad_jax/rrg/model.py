"""The reference report-generation model: one visual encoder, a report decoder and a label head.

A small Flax NNX port of the R2Gen / PromptMRG model family, sized for a CPU:

- a convolutional **visual encoder** (stride-2 conv blocks with GroupNorm, so the model holds no
  mutable batch statistics) turns each view into a grid of patch features;
- **task 1, report generation**: the patch features of every view (concatenated along the token
  axis, with a learned view embedding) go through a pre-LN transformer encoder whose output is the
  memory of a pre-LN transformer decoder's cross-attention; the decoder is trained by teacher
  forcing with label-smoothed next-token cross-entropy;
- **task 2, clinical classification**: the patch features max-pooled over patches and views feed
  a linear head with a 4-way softmax for each of the 14 CheXpert observations, trained with logit
  adjustment of the positive class (as PromptMRG does).

Only the visual encoder is shared by the two losses (see `shared_parameter_mask`). The losses
stay separate, as the vector `[L_lm, L_cls]`, so a multi-task optimizer can take one gradient per
task.

The model holds no random state: dropout draws from a key passed to each call, and the losses
are pure functions of `(params, batch, key)`. For per-task gradients under `jax.jit`::

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def task_jacobian(params, rest, batch, key):
        def vector(p):
            return loss_vector(graphdef, p, rest, batch, train=True, dropout_key=key)
        value, pullback = jax.vjp(vector, params)
        (jacobian,) = jax.vmap(pullback)(jnp.eye(value.shape[0], dtype=value.dtype))
        return value, jacobian  # jacobian: params with a leading task axis of size 2

Any key works; on a CPU, keys made with `jax.random.key(seed, impl="rbg")` compile the dropout
masks several times faster than the default threefry keys.

Decoding (`greedy_decode`, `beam_search_decode`) runs under `jax.jit` with a key/value cache and
fixed-shape `lax.while_loop`s, and returns token arrays laid out like the training tokens:
`[BOS, w1, ..., EOS, PAD, ...]`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS, POSITIVE
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID

__all__ = [
    "BaseProbs",
    "ModelConfig",
    "RRGModel",
    "beam_search_decode",
    "classification_loss",
    "classification_probs",
    "decoder_attention_mask",
    "greedy_decode",
    "loss_vector",
    "losses",
    "losses_with_aux",
    "report_loss",
    "shared_parameter_mask",
]

# Masked attention logits and banned tokens get this finite value rather than -inf, so that a
# fully masked row stays finite and scores can still be compared and ordered.
_NEG = -1e9

Cache = tuple[jax.Array, jax.Array]  # keys, values: (batch, heads, length, head_dim)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes of the reference model; the defaults are the CPU-sized reference setup.

    Attributes:
      vocab_size: number of token ids, special tokens included.
      image_size: side of the square grayscale input (64 or 128).
      conv_features: output channels of each stride-2 conv block; the last one is the width of
        the pooled vector read by the classification head.
      norm_groups: GroupNorm groups in every conv block.
      max_views: largest number of views per study (2 for IU X-Ray, 1 for MIMIC-CXR).
      d_model: transformer width.
      num_heads: attention heads.
      d_ff: feed-forward hidden width.
      num_encoder_layers: transformer encoder layers over the patch tokens.
      num_decoder_layers: transformer decoder layers.
      dropout: dropout rate of the transformer (embeddings, residual branches, attention
        weights, feed-forward hidden layer).
      max_len: longest token sequence, BOS and EOS included; also the default decode length.
      label_smoothing: label smoothing of the report loss.
      head_init_std: standard deviation of the classification head's initial weights.
    """

    vocab_size: int
    image_size: int = 64
    conv_features: tuple[int, ...] = (32, 64, 128, 128)
    norm_groups: int = 8
    max_views: int = 2
    d_model: int = 128
    num_heads: int = 4
    d_ff: int = 256
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.1
    max_len: int = 60
    label_smoothing: float = 0.1
    head_init_std: float = 1e-3

    def __post_init__(self) -> None:
        if self.vocab_size <= EOS_ID:
            raise ValueError(
                f"`vocab_size` must exceed the special token ids. Found `vocab_size = "
                f"{self.vocab_size}`."
            )
        if not self.conv_features:
            raise ValueError("`conv_features` must name at least one conv block.")
        if self.image_size % 2 ** len(self.conv_features):
            raise ValueError(
                f"`image_size` must be divisible by 2 ** len(conv_features) = "
                f"{2 ** len(self.conv_features)}. Found `image_size = {self.image_size}`."
            )
        for features in self.conv_features:
            if features % self.norm_groups:
                raise ValueError(
                    f"Every entry of `conv_features` must be divisible by `norm_groups = "
                    f"{self.norm_groups}`. Found `conv_features = {self.conv_features}`."
                )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"`d_model` must be divisible by `num_heads`. Found `d_model = {self.d_model}`, "
                f"`num_heads = {self.num_heads}`."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must lie in [0, 1). Found `dropout = {self.dropout}`.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"`label_smoothing` must lie in [0, 1). Found `label_smoothing = "
                f"{self.label_smoothing}`."
            )
        if self.max_len < 2:
            raise ValueError(f"`max_len` must be at least 2. Found `max_len = {self.max_len}`.")
        if self.max_views < 1:
            raise ValueError(f"`max_views` must be positive. Found `max_views = {self.max_views}`.")

    @property
    def patches_per_view(self) -> int:
        """Number of patch tokens the visual encoder makes from one view."""
        side = self.image_size // 2 ** len(self.conv_features)
        return side * side


class BaseProbs(nnx.Variable):
    """Per-observation prior of the positive class for logit adjustment, shape (14,).

    A `Variable` but not a `Param`: it is split off with the non-trainable state, so an optimizer
    built with `wrt=nnx.Param` never sees or updates it.
    """


class _DropoutKeys:
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


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout driven by an explicit key; the identity when `key` is None."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _sinusoidal_positions(length: int, width: int) -> jax.Array:
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
        dropout_keys: _DropoutKeys,
    ) -> jax.Array:
        """Attend from `x` (batch, T, d) to `keys`/`values`; `mask` broadcasts to (b, h, T, S)."""
        queries = self._heads(self.query(x))
        scores = jnp.einsum("bhtd,bhsd->bhts", queries, keys) / math.sqrt(queries.shape[-1])
        if mask is not None:
            scores = jnp.where(mask, scores, _NEG)
        weights = _dropout(jax.nn.softmax(scores, axis=-1), self.dropout, dropout_keys())
        mixed = jnp.einsum("bhts,bhsd->bhtd", weights, values)
        batch, _, length, _ = mixed.shape
        return self.out(mixed.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class FeedForward(nnx.Module):
    """Position-wise two-layer ReLU network."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, *, rngs: nnx.Rngs):
        self.dropout = dropout
        self.hidden = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.out = nnx.Linear(d_ff, d_model, rngs=rngs)

    def __call__(self, x: jax.Array, dropout_keys: _DropoutKeys) -> jax.Array:
        return self.out(_dropout(jax.nn.relu(self.hidden(x)), self.dropout, dropout_keys()))


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

    def __call__(self, x: jax.Array, dropout_keys: _DropoutKeys) -> jax.Array:
        h = self.attention_norm(x)
        attended = self.attention(h, *self.attention.project_kv(h), None, dropout_keys)
        x = x + _dropout(attended, self.dropout, dropout_keys())
        return x + _dropout(self.ff(self.ff_norm(x), dropout_keys), self.dropout, dropout_keys())


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
        dropout_keys: _DropoutKeys,
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
        x = x + _dropout(attended, self.dropout, dropout_keys())
        attended = self.cross_attention(self.cross_norm(x), *cross_kv, None, dropout_keys)
        x = x + _dropout(attended, self.dropout, dropout_keys())
        x = x + _dropout(self.ff(self.ff_norm(x), dropout_keys), self.dropout, dropout_keys())
        return x, self_kv


def decoder_attention_mask(input_tokens: jax.Array) -> jax.Array:
    """Self-attention mask (B, 1, T, T) of the decoder: True where query t may see key s.

    Causal (s <= t) and key padding (token s is not PAD). With right padding the padding part
    changes only the outputs at PAD positions, which carry no loss; it keeps them well defined.
    """
    length = input_tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    return causal[None, None] & (input_tokens != PAD_ID)[:, None, None, :]


class RRGModel(nnx.Module):
    """The reference radiology-report-generation model (see the module docstring).

    Attributes that matter outside: `visual_encoder` (the only part both losses share),
    `classifier` (the label head) and `base_probs` (a `BaseProbs` variable, all ones until set,
    which makes logit adjustment the identity).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.d_model
        self.visual_encoder = VisualEncoder(config, rngs=rngs)
        visual_width = config.conv_features[-1]
        self.classifier = nnx.Linear(
            visual_width,
            NUM_OBSERVATIONS * NUM_LABEL_CLASSES,
            kernel_init=nnx.initializers.normal(config.head_init_std),
            bias_init=nnx.initializers.zeros_init(),
            rngs=rngs,
        )
        self.base_probs = BaseProbs(jnp.ones((NUM_OBSERVATIONS,), jnp.float32))
        # The report branch gets its own projection of the shared features (R2Gen's att_embed),
        # so that nothing past the conv stack is shared with the label head.
        self.patch_projection = nnx.Linear(visual_width, d, rngs=rngs)
        self.view_embedding = nnx.Embed(
            config.max_views, d, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.encoder_layers = nnx.List(
            [EncoderLayer(config, rngs=rngs) for _ in range(config.num_encoder_layers)]
        )
        self.encoder_norm = nnx.LayerNorm(d, rngs=rngs)
        # Std d^-1/2 so that the embeddings scaled by sqrt(d) have unit variance, like the
        # sinusoidal positions they are added to.
        self.token_embedding = nnx.Embed(
            config.vocab_size, d, embedding_init=nnx.initializers.normal(d**-0.5), rngs=rngs
        )
        self.decoder_layers = nnx.List(
            [DecoderLayer(config, rngs=rngs) for _ in range(config.num_decoder_layers)]
        )
        self.decoder_norm = nnx.LayerNorm(d, rngs=rngs)
        self.lm_head = nnx.Linear(d, config.vocab_size, rngs=rngs)

    def set_base_probs(self, base_probs: jax.Array | np.ndarray) -> None:
        """Store the positive-class prior (14,) used by logit adjustment during training.

        `base_probs` is the training positive rate over its maximum, floored above zero
        (`camegrad_jax.rrg.data.base_probs`, or `RRGDataset.base_probs()`).
        """
        base_probs = jnp.asarray(base_probs, jnp.float32)
        if base_probs.shape != (NUM_OBSERVATIONS,):
            raise ValueError(
                f"`base_probs` must have shape ({NUM_OBSERVATIONS},). Found shape "
                f"{base_probs.shape}."
            )
        self.base_probs[...] = base_probs

    def visual_features(self, images: jax.Array) -> jax.Array:
        """Shared conv features of each view, (B, V, patches_per_view, C).

        Args:
          images: float (B, V, H, W, 1).
        """
        batch, views, height, width, channels = images.shape
        if views > self.config.max_views:
            raise ValueError(f"Got {views} views but `max_views = {self.config.max_views}`.")
        grid = self.visual_encoder(images.reshape(batch * views, height, width, channels))
        return grid.reshape(batch, views, -1, grid.shape[-1])

    def classification_logits(self, features: jax.Array) -> jax.Array:
        """Unadjusted label logits (B, 14, 4) from the conv features (B, V, P, C), max-pooled
        over patches and views.

        Max, not mean: each conv block ends in a per-sample GroupNorm, which fixes every group's
        mean over the grid, so a global average keeps little of what a study shows (measured on
        the default synthetic run: the label head stayed at chance, macro AUC 0.51, and the
        shared encoder never learned what the decoder needed). A finding is local; the maximum
        over patches and views keeps it.
        """
        pooled = features.max(axis=(1, 2))
        return self.classifier(pooled).reshape(-1, NUM_OBSERVATIONS, NUM_LABEL_CLASSES)

    def encode(self, features: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """Transformer memory (B, V * P, d) from the conv features (B, V, P, C)."""
        batch, views, patches, _ = features.shape
        d = self.config.d_model
        tokens = self.patch_projection(features)
        tokens = tokens + _sinusoidal_positions(patches, d)[None, None]
        tokens = tokens + self.view_embedding(jnp.arange(views))[None, :, None]
        keys = _DropoutKeys(dropout_key, 1 + EncoderLayer.DROPOUT_SITES * len(self.encoder_layers))
        x = _dropout(tokens.reshape(batch, views * patches, d), self.config.dropout, keys())
        for layer in self.encoder_layers:
            x = layer(x, keys)
        keys.check_all_used()
        return self.encoder_norm(x)

    def cross_kv(self, memory: jax.Array) -> list[Cache]:
        """Cross-attention keys/values of every decoder layer, computed once per image."""
        return [layer.cross_attention.project_kv(memory) for layer in self.decoder_layers]

    def _embed_tokens(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        table = _sinusoidal_positions(self.config.max_len, self.config.d_model)
        return self.token_embedding(tokens) * math.sqrt(self.config.d_model) + table[positions]

    def decode(
        self,
        input_tokens: jax.Array,
        cross_kv: list[Cache],
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced next-token logits (B, T, vocab) for `input_tokens` (B, T).

        Position t attends to positions <= t that are not PAD (causal + key padding mask).
        """
        length = input_tokens.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"Got {length} tokens but `max_len = {self.config.max_len}`.")
        mask = decoder_attention_mask(input_tokens)
        keys = _DropoutKeys(dropout_key, 1 + DecoderLayer.DROPOUT_SITES * len(self.decoder_layers))
        x = _dropout(
            self._embed_tokens(input_tokens, jnp.arange(length)), self.config.dropout, keys()
        )
        for layer, kv in zip(self.decoder_layers, cross_kv, strict=True):
            x, _ = layer(x, mask, kv, keys)
        keys.check_all_used()
        return self.lm_head(self.decoder_norm(x))

    def decode_step(
        self,
        tokens: jax.Array,
        position: jax.Array,
        caches: list[Cache],
        cross_kv: list[Cache],
    ) -> tuple[jax.Array, list[Cache]]:
        """Logits (N, vocab) of the token after `tokens` (N,) placed at `position`.

        `caches` holds, per decoder layer, the self-attention keys/values (N, heads, L, head_dim)
        of the earlier positions; the updated caches are returned. No dropout: inference only.
        """
        length = caches[0][0].shape[2]
        x = self._embed_tokens(tokens[:, None], position)
        mask = (jnp.arange(length) <= position)[None, None, None, :]
        no_dropout = _DropoutKeys(None, DecoderLayer.DROPOUT_SITES * len(self.decoder_layers))
        new_caches = []
        for layer, kv, cache in zip(self.decoder_layers, cross_kv, caches, strict=True):
            x, cache = layer(x, mask, kv, no_dropout, cache=cache, position=position)
            new_caches.append(cache)
        return self.lm_head(self.decoder_norm(x))[:, 0], new_caches

    def __call__(
        self,
        images: jax.Array,
        input_tokens: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Teacher-forced forward pass of both tasks.

        Args:
          images: float (B, V, H, W, 1).
          input_tokens: int (B, T), the decoder inputs (`tokens[:, :-1]` of a batch).
          dropout_key: PRNG key for dropout; None disables dropout.

        Returns:
          `(lm_logits, cls_logits)`: next-token logits (B, T, vocab) and unadjusted label logits
          (B, 14, 4).
        """
        encoder_key, decoder_key = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        features = self.visual_features(images)
        memory = self.encode(features, encoder_key)
        lm_logits = self.decode(input_tokens, self.cross_kv(memory), decoder_key)
        return lm_logits, self.classification_logits(features)


def report_loss(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Label-smoothed next-token cross-entropy, averaged over the non-PAD targets.

    The smoothed target is `(1 - eps) * one_hot + eps / vocab` (PyTorch's `label_smoothing`).

    Args:
      logits: float (B, T, vocab).
      targets: int (B, T); PAD targets carry no loss.
      label_smoothing: eps in [0, 1).

    Returns:
      Scalar loss (0 when every target is PAD).
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    per_token = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(axis=-1)
    counted = (targets != PAD_ID).astype(per_token.dtype)
    return (per_token * counted).sum() / jnp.maximum(counted.sum(), 1.0)


def classification_loss(
    logits: jax.Array, labels: jax.Array, base_probs: jax.Array | None = None
) -> jax.Array:
    """4-way cross-entropy of each observation, averaged over batch x 14.

    Args:
      logits: float (B, 14, 4), unadjusted.
      labels: int (B, 14) in {0, 1, 2, 3}.
      base_probs: the positive-class prior (14,); when given, `log(base_probs)` is added to the
        positive logits first (logit adjustment, training only).

    Returns:
      Scalar loss.
    """
    if base_probs is not None:
        logits = logits.at[..., POSITIVE].add(jnp.log(base_probs))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def losses_with_aux(
    model: RRGModel,
    batch: dict[str, jax.Array],
    *,
    train: bool,
    dropout_key: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss vector `[L_lm, L_cls]` and auxiliary outputs, from one forward pass.

    Args:
      model: the model.
      batch: `{"images": (B, V, H, W, 1), "tokens": (B, T), "labels": (B, 14)}`.
      train: training mode: dropout on (needs `dropout_key` when the rate is positive) and
        logit adjustment on. Evaluation mode uses neither.
      dropout_key: PRNG key for dropout; ignored when `train` is False.

    Returns:
      `(losses, aux)`: float32 (2,) `[L_lm, L_cls]`, and `{"cls_probs": (B, 14, 4)}`, the label
      probabilities without logit adjustment (what inference reports).
    """
    if not train:
        dropout_key = None
    elif dropout_key is None and model.config.dropout > 0.0:
        raise ValueError("`train=True` needs a `dropout_key` when `config.dropout > 0`.")
    tokens = batch["tokens"]
    lm_logits, cls_logits = model(batch["images"], tokens[:, :-1], dropout_key=dropout_key)
    lm = report_loss(lm_logits, tokens[:, 1:], model.config.label_smoothing)
    base_probs = model.base_probs[...] if train else None
    cls = classification_loss(cls_logits, batch["labels"], base_probs)
    aux = {"cls_probs": jax.nn.softmax(cls_logits, axis=-1)}
    return jnp.stack([lm, cls]), aux


def losses(
    model: RRGModel,
    batch: dict[str, jax.Array],
    *,
    train: bool,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """The loss vector `[L_lm, L_cls]`, float32 (2,); see `losses_with_aux`."""
    return losses_with_aux(model, batch, train=train, dropout_key=dropout_key)[0]


def loss_vector(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    batch: dict[str, jax.Array],
    *,
    train: bool = True,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """`losses` as a pure function of the parameters, for `jax.vjp`/`jax.jacrev` under `jax.jit`.

    `graphdef, params, rest = nnx.split(model, nnx.Param, ...)`; `rest` carries `base_probs`.
    Nothing is mutated, so the function can be differentiated, vmapped and jitted freely; the
    same `dropout_key` gives the same dropout masks to both losses (one forward pass).
    """
    model = nnx.merge(graphdef, params, rest)
    return losses(model, batch, train=train, dropout_key=dropout_key)


def shared_parameter_mask(model: RRGModel) -> nnx.State:
    """Boolean mask over `nnx.state(model, nnx.Param)`: True for the parameters of both losses.

    Those are exactly the visual encoder's (the conv stack). The mask has a bool where the
    parameter state has a `Param`, so it is a tree prefix of `nnx.state(model, nnx.Param)` and
    has the same structure as `nnx.as_pure` of it (what `nnx.Optimizer` hands to optax);
    `jax.tree.map(f, mask, params)` works with either.
    """
    return nnx.map_state(lambda path, _: path[0] == "visual_encoder", nnx.state(model, nnx.Param))


@nnx.jit
def classification_probs(model: RRGModel, images: jax.Array) -> jax.Array:
    """Label probabilities (B, 14, 4) at inference: softmax without logit adjustment.

    PromptMRG adds `log(base_probs)` in training only and takes the plain softmax at test time.
    """
    return jax.nn.softmax(model.classification_logits(model.visual_features(images)), axis=-1)


def _next_token_log_probs(logits: jax.Array) -> jax.Array:
    """Log-probabilities with PAD and BOS banned, as they never follow a generated token."""
    logits = logits.at[:, PAD_ID].set(_NEG).at[:, BOS_ID].set(_NEG)
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
    live_log_probs = jnp.full((batch, beams), _NEG).at[:, 0].set(0.0)
    finished_scores = jnp.full((batch, beams), _NEG)
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
            ends & (jnp.arange(2 * beams) < beams), normalise(top_log_probs, position), _NEG
        )
        pool_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        pool_scores, pool_index = jax.lax.top_k(pool_scores, beams)
        pool = gather(jnp.concatenate([finished, extended], axis=1), pool_index)
        finished = jnp.where(done[:, None, None], finished, pool)
        finished_scores = jnp.where(done[:, None], finished_scores, pool_scores)

        live_log_probs, keep = jax.lax.top_k(jnp.where(ends, _NEG, top_log_probs), beams)
        live = gather(extended, keep)
        flat_parent = (gather(parent, keep) + beams * jnp.arange(batch)[:, None]).reshape(-1)
        caches = jax.tree.map(lambda c: c[flat_parent], caches)

        pool_full = (finished_scores > _NEG / 2).all(axis=1)
        live_hopeless = normalise(live_log_probs.max(axis=1), position) <= finished_scores.min(1)
        done = done | (pool_full & live_hopeless)
        return position + 1, live, live_log_probs, caches, finished, finished_scores, done

    state = (1, start, live_log_probs, caches, start, finished_scores, done)
    _, live, live_log_probs, _, finished, finished_scores, done = jax.lax.while_loop(
        keep_going, step, state
    )
    # Images still running at max_len let their live hypotheses compete with the finished ones.
    live_scores = jnp.where(done[:, None], _NEG, normalise(live_log_probs, max_len - 1))
    scores = jnp.concatenate([finished_scores, live_scores], axis=1)
    hypotheses = jnp.concatenate([finished, live], axis=1)
    return gather(hypotheses, jnp.argmax(scores, axis=1)[:, None])[:, 0]
