"""The auxiliary-task variants of the reference model: what pulls against report generation.

The paper's Table D.1 groups its eight backbones by the kind of auxiliary task trained beside
the report decoder, and finds CAME-Grad's best α follows that kind (rigid constraints: small α;
soft ones: large α). The reference model (`camegrad_jax.rrg.model`) ports one kind; this module
adds small ports of two more, chosen with ``TrainConfig.aux`` (``camegrad-rrg --aux``):

- ``"classification"``: `RRGModel` itself, the 14-label head beside the decoder (the default).
- ``"classification-prompt"`` (`PromptedRRGModel`, PromptMRG's diagnosis-driven prompts): the
  same head, and its answers become 14 prompt tokens the decoder reads. Training feeds the
  gold labels as prompts (teacher forcing, as PromptMRG's data loader writes its training
  prompts from the labels); decoding feeds the head's own predictions (arg-max, no logit
  adjustment), so at inference the report follows the classifier.
- ``"alignment"`` (`AlignedRRGModel`, REVTAF's alignment and WCL's contrastive loss): the label
  head is replaced by a symmetric InfoNCE loss between the image embedding and the embedding of
  the study's report by a small text encoder, over the batch. With ``weak=True``
  (``--alignment-weak``), studies whose 14 labels agree count as positives of one another
  (WCL's weak supervision by label similarity) instead of the exact pair only.

Every variant returns a two-entry loss vector ``[L_lm, L_aux]`` (the second slot is what the
logs call ``cls``), and only the visual encoder is shared by both losses, so
`camegrad_jax.rrg.model.shared_parameter_mask` is the mask of every variant.

``"prototype"`` (XProNet's cross-modal prototypes) is not ported: see `NOT_PORTED`.

Deviations from the official code:

- PromptMRG prepends its prompt tokens to the decoder's text input; here they are appended to
  the decoder's cross-attention memory, so the decoder reads them at every position and the
  key/value-cached decoding of `camegrad_jax.rrg.model` is reused unchanged. Each prompt token
  is a learned embedding of the answer (blank, positive, negative, uncertain) plus one of the
  observation, as PromptMRG's ``[BLA]``/``[POS]``/``[NEG]``/``[UNC]`` words at fixed positions.
- REVTAF and WCL encode reports with a pretrained text model (BERT-size); here a one-layer
  pre-LN transformer over the report tokens (its own embedding table), mean-pooled over the
  non-PAD tokens. The temperature is fixed (`ALIGNMENT_TEMPERATURE`), not learned.
- WCL clusters reports by their labels and treats same-cluster pairs as positives; here the
  "cluster" of a study is its exact 14-label vector, and the targets of each row are uniform
  over its positives (the study itself included).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from camegrad_jax.rrg.model import ModelConfig, RRGModel, report_loss
from camegrad_jax.rrg.model_layers import (
    DropoutKeys,
    FeedForward,
    MultiHeadAttention,
    sinusoidal_positions,
)
from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS
from camegrad_jax.rrg.tokenizer import PAD_ID

__all__ = [
    "ALIGNMENT_TEMPERATURE",
    "AUX_TASKS",
    "NOT_PORTED",
    "AlignedRRGModel",
    "PromptedRRGModel",
    "alignment_targets",
    "build_model",
    "contrastive_alignment_loss",
    "retrieval_metrics",
]

CLASSIFICATION = "classification"
CLASSIFICATION_PROMPT = "classification-prompt"
ALIGNMENT = "alignment"
AUX_TASKS: tuple[str, ...] = (CLASSIFICATION, CLASSIFICATION_PROMPT, ALIGNMENT)

# The paper's families the reference setup does not port, and why.
NOT_PORTED: Mapping[str, str] = {
    "prototype": (
        "XProNet's cross-modal prototype matrix is initialised from k-means clusters of "
        "pretrained image and report features of the whole training set (one cluster set per "
        "label combination), read through a memory-querying module in both the encoder and the "
        "decoder, and trained with a multi-label contrastive loss over prototypes. Without the "
        "pretrained features the initialisation that makes the prototypes meaningful cannot be "
        "reproduced, and what would remain (a learned memory and a contrastive loss) is the "
        "`alignment` variant under another name."
    ),
}

# Cosine similarities are divided by this before the softmax (CLIP's learned temperature
# settles near 0.01; WCL and REVTAF use 0.05 to 0.1 for batches of tens of studies).
ALIGNMENT_TEMPERATURE = 0.1


class PromptedRRGModel(RRGModel):
    """`RRGModel` whose decoder also reads 14 prompt tokens, one answer per observation.

    Training prompts are the gold labels; at inference (`encode` without labels, which is what
    the decoding functions call) they are the label head's arg-max answers.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        d = config.d_model
        self.answer_embedding = nnx.Embed(
            NUM_LABEL_CLASSES, d, embedding_init=nnx.initializers.normal(1.0), rngs=rngs
        )
        self.observation_embedding = nnx.Embed(
            NUM_OBSERVATIONS, d, embedding_init=nnx.initializers.normal(1.0), rngs=rngs
        )
        # The memory leaves the encoder layer-normed; the prompts join it at the same scale.
        self.prompt_norm = nnx.LayerNorm(d, rngs=rngs)

    def prompts(self, answers: jax.Array) -> jax.Array:
        """Prompt tokens (B, 14, d) of the answers (B, 14) in {0, 1, 2, 3}."""
        observations = self.observation_embedding(jnp.arange(NUM_OBSERVATIONS))
        return self.prompt_norm(self.answer_embedding(answers) + observations[None])

    def encode(
        self,
        features: jax.Array,
        dropout_key: jax.Array | None = None,
        answers: jax.Array | None = None,
    ) -> jax.Array:
        """The visual memory (B, V * P, d) followed by the 14 prompt tokens of ``answers``
        (default: the label head's arg-max answers, as at inference)."""
        memory = super().encode(features, dropout_key)
        if answers is None:
            answers = jnp.argmax(self.classification_logits(features), axis=-1)
        return jnp.concatenate([memory, self.prompts(answers)], axis=1)

    def teacher_forced(
        self, batch: dict[str, jax.Array], *, train: bool, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        """Logits with the gold labels as prompts in training, the predicted ones otherwise."""
        encoder_key, decoder_key = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        features = self.visual_features(batch["images"])
        answers = batch["labels"] if train else None
        memory = self.encode(features, encoder_key, answers)
        lm_logits = self.decode(batch["tokens"][:, :-1], self.cross_kv(memory), decoder_key)
        return lm_logits, self.classification_logits(features)


class _TextEncoderLayer(nnx.Module):
    """Pre-LN self-attention over the report tokens (PAD keys masked) and feed-forward."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.attention_norm = nnx.LayerNorm(d, rngs=rngs)
        self.attention = MultiHeadAttention(d, config.num_heads, 0.0, rngs=rngs)
        self.ff_norm = nnx.LayerNorm(d, rngs=rngs)
        self.ff = FeedForward(d, config.d_ff, 0.0, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        no_dropout = DropoutKeys(None, 2)
        h = self.attention_norm(x)
        x = x + self.attention(h, *self.attention.project_kv(h), mask, no_dropout)
        return x + self.ff(self.ff_norm(x), no_dropout)


class AlignedRRGModel(RRGModel):
    """`RRGModel` whose auxiliary task is image–report alignment instead of the label head.

    Attributes beyond `RRGModel`'s (which loses `classifier`): `image_projection` (pooled visual
    features to the joint space), `text_embedding`, `text_layer`, `text_norm`,
    `text_projection` (the report encoder), and `weak` (label-similarity positives).
    """

    def __init__(self, config: ModelConfig, *, weak: bool = False, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        del self.classifier  # No label head: the alignment loss is the auxiliary task.
        d = config.d_model
        self.weak = weak
        self.image_projection = nnx.Linear(config.conv_features[-1], d, rngs=rngs)
        self.text_embedding = nnx.Embed(
            config.vocab_size, d, embedding_init=nnx.initializers.normal(d**-0.5), rngs=rngs
        )
        self.text_layer = _TextEncoderLayer(config, rngs=rngs)
        self.text_norm = nnx.LayerNorm(d, rngs=rngs)
        self.text_projection = nnx.Linear(d, d, rngs=rngs)

    def image_embedding(self, features: jax.Array) -> jax.Array:
        """Image embedding (B, d) from the conv features (B, V, P, C), max-pooled as the label
        head's input is (see `RRGModel.classification_logits`)."""
        return self.image_projection(features.max(axis=(1, 2)))

    def report_embedding(self, tokens: jax.Array) -> jax.Array:
        """Report embedding (B, d) of the token ids (B, T), mean-pooled over non-PAD tokens."""
        d = self.config.d_model
        present = tokens != PAD_ID
        x = self.text_embedding(tokens) * jnp.sqrt(jnp.float32(d))
        x = x + sinusoidal_positions(tokens.shape[1], d)[None]
        x = self.text_norm(self.text_layer(x, present[:, None, None, :]))
        weights = present[..., None].astype(x.dtype)
        pooled = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
        return self.text_projection(pooled)

    def task_losses(
        self, batch: dict[str, jax.Array], *, train: bool, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`[L_lm, L_align]` and the batch's image–report similarity logits."""
        del train  # No logit adjustment here: both modes differ by dropout only.
        encoder_key, decoder_key = (
            (None, None) if dropout_key is None else jax.random.split(dropout_key)
        )
        tokens = batch["tokens"]
        features = self.visual_features(batch["images"])
        memory = self.encode(features, encoder_key)
        lm_logits = self.decode(tokens[:, :-1], self.cross_kv(memory), decoder_key)
        lm = report_loss(lm_logits, tokens[:, 1:], self.config.label_smoothing)
        targets = alignment_targets(batch["labels"], weak=self.weak)
        align, logits = contrastive_alignment_loss(
            self.image_embedding(features), self.report_embedding(tokens), targets
        )
        return jnp.stack([lm, align]), {"alignment_logits": logits}


def alignment_targets(labels: jax.Array, *, weak: bool) -> jax.Array:
    """Target distribution (B, B) over the reports of a batch, for each image.

    Args:
      labels: int (B, 14), the studies' labels.
      weak: False: each image's own report only (the identity). True: every report whose 14
        labels equal the image's, uniformly (WCL's weak positives; the own report included).
    """
    batch = labels.shape[0]
    if not weak:
        return jnp.eye(batch, dtype=jnp.float32)
    same = (labels[:, None, :] == labels[None, :, :]).all(axis=-1).astype(jnp.float32)
    return same / same.sum(axis=1, keepdims=True)


def contrastive_alignment_loss(
    image_embeddings: jax.Array,
    report_embeddings: jax.Array,
    targets: jax.Array,
    temperature: float = ALIGNMENT_TEMPERATURE,
) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE between the images and the reports of a batch.

    With unit-normalised embeddings, ``S = I Rᵀ / τ``, the loss is the mean of the image→report
    cross-entropy ``−Σ_j T_ij log softmax(S_i·)_j`` and the report→image one (``Sᵀ``, ``Tᵀ``),
    each averaged over the batch.

    Args:
      image_embeddings, report_embeddings: float (B, D).
      targets: (B, B) rows summing to 1 (`alignment_targets`).
      temperature: τ.

    Returns:
      ``(loss, S)``: the scalar loss (float32) and the logits ``S`` (B, B).
    """
    images = image_embeddings.astype(jnp.float32)
    reports = report_embeddings.astype(jnp.float32)
    images = images / jnp.maximum(jnp.linalg.norm(images, axis=-1, keepdims=True), 1e-12)
    reports = reports / jnp.maximum(jnp.linalg.norm(reports, axis=-1, keepdims=True), 1e-12)
    logits = images @ reports.T / temperature
    image_to_report = -(targets * jax.nn.log_softmax(logits, axis=1)).sum(axis=1).mean()
    report_to_image = -(targets.T * jax.nn.log_softmax(logits.T, axis=1)).sum(axis=1).mean()
    return 0.5 * (image_to_report + report_to_image), logits


def build_model(
    aux: str, config: ModelConfig, *, rngs: nnx.Rngs, alignment_weak: bool = False
) -> RRGModel:
    """The model of the auxiliary-task variant ``aux`` (a name of `AUX_TASKS`)."""
    if aux == CLASSIFICATION:
        return RRGModel(config, rngs=rngs)
    if aux == CLASSIFICATION_PROMPT:
        return PromptedRRGModel(config, rngs=rngs)
    if aux == ALIGNMENT:
        return AlignedRRGModel(config, weak=alignment_weak, rngs=rngs)
    raise ValueError(f"`aux` should be one of {AUX_TASKS}. Found `aux = {aux!r}`.")


@nnx.jit
def _embeddings(
    model: AlignedRRGModel, images: jax.Array, tokens: jax.Array
) -> tuple[jax.Array, jax.Array]:
    return model.image_embedding(model.visual_features(images)), model.report_embedding(tokens)


def retrieval_metrics(
    model: AlignedRRGModel,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    batch_size: int = 64,
) -> dict[str, float]:
    """Image→report retrieval over a whole split: recall@1 and @5 of each image's own report
    among all the split's reports, ranked by cosine similarity of the embeddings.

    Args:
      model: an alignment model.
      images: float (N, V, H, W, 1); tokens: int (N, T), the reference reports.
      batch_size: every batch is padded to it (one compilation).

    Returns:
      ``{"retrieval_r1", "retrieval_r5"}``.
    """
    image_parts, report_parts = [], []
    count = len(images)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        pad = batch_size - (stop - start)
        batch_images = np.concatenate([images[start:stop], np.zeros((pad, *images.shape[1:]))])
        batch_tokens = np.concatenate(
            [tokens[start:stop], np.full((pad, tokens.shape[1]), PAD_ID, tokens.dtype)]
        )
        image_part, report_part = jax.device_get(_embeddings(model, batch_images, batch_tokens))
        image_parts.append(image_part[: stop - start])
        report_parts.append(report_part[: stop - start])
    image_emb = np.concatenate(image_parts).astype(np.float64)
    report_emb = np.concatenate(report_parts).astype(np.float64)
    image_emb /= np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    report_emb /= np.maximum(np.linalg.norm(report_emb, axis=1, keepdims=True), 1e-12)
    similarity = image_emb @ report_emb.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1)  # Reports strictly closer than the own one.
    return {"retrieval_r1": float(np.mean(rank < 1)), "retrieval_r5": float(np.mean(rank < 5))}
