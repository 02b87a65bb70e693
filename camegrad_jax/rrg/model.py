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
task. Other auxiliary tasks (PromptMRG's prompts, image–report alignment) are subclasses that
override `RRGModel.task_losses` or `RRGModel.teacher_forced`, in `camegrad_jax.rrg.aux_tasks`.

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

The layers are in `camegrad_jax.rrg.model_layers`; decoding (`greedy_decode`,
`beam_search_decode`) and the label head's probabilities are in `camegrad_jax.rrg.decoding`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from camegrad_jax.rrg.model_layers import (
    Cache,
    DecoderLayer,
    DropoutKeys,
    EncoderLayer,
    VisualEncoder,
    decoder_attention_mask,
    dropout,
    sinusoidal_positions,
)
from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS, POSITIVE
from camegrad_jax.rrg.tokenizer import EOS_ID, PAD_ID

__all__ = [
    "BaseProbs",
    "ModelConfig",
    "RRGModel",
    "classification_loss",
    "loss_vector",
    "losses",
    "losses_with_aux",
    "report_loss",
    "shared_parameter_mask",
]


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
        tokens = tokens + sinusoidal_positions(patches, d)[None, None]
        tokens = tokens + self.view_embedding(jnp.arange(views))[None, :, None]
        keys = DropoutKeys(dropout_key, 1 + EncoderLayer.DROPOUT_SITES * len(self.encoder_layers))
        x = dropout(tokens.reshape(batch, views * patches, d), self.config.dropout, keys())
        for layer in self.encoder_layers:
            x = layer(x, keys)
        keys.check_all_used()
        return self.encoder_norm(x)

    def cross_kv(self, memory: jax.Array) -> list[Cache]:
        """Cross-attention keys/values of every decoder layer, computed once per image."""
        return [layer.cross_attention.project_kv(memory) for layer in self.decoder_layers]

    def _embed_tokens(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        table = sinusoidal_positions(self.config.max_len, self.config.d_model)
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
        keys = DropoutKeys(dropout_key, 1 + DecoderLayer.DROPOUT_SITES * len(self.decoder_layers))
        x = dropout(
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
        no_dropout = DropoutKeys(None, DecoderLayer.DROPOUT_SITES * len(self.decoder_layers))
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

    def task_losses(
        self, batch: dict[str, jax.Array], *, train: bool, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`[L_lm, L_cls]` and the label probabilities; see `losses_with_aux`, which checks the
        arguments and calls this. A model with another auxiliary task overrides it (see
        `camegrad_jax.rrg.aux_tasks`)."""
        tokens = batch["tokens"]
        lm_logits, cls_logits = self.teacher_forced(batch, train=train, dropout_key=dropout_key)
        lm = report_loss(lm_logits, tokens[:, 1:], self.config.label_smoothing)
        base_probs = self.base_probs[...] if train else None
        cls = classification_loss(cls_logits, batch["labels"], base_probs)
        aux = {"cls_probs": jax.nn.softmax(cls_logits, axis=-1)}
        return jnp.stack([lm, cls]), aux

    def teacher_forced(
        self, batch: dict[str, jax.Array], *, train: bool, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """`(lm_logits, cls_logits)` of a batch by teacher forcing (what `task_losses` scores)."""
        del train  # The plain model's forward pass is the same in both modes but for dropout.
        return self(batch["images"], batch["tokens"][:, :-1], dropout_key=dropout_key)


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
    return model.task_losses(batch, train=train, dropout_key=dropout_key)


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
