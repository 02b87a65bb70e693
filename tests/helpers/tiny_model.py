"""The tiny report-generation model configuration and random batches the model tests share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from camegrad_jax.rrg.model import ModelConfig
from camegrad_jax.rrg.observations import NUM_LABEL_CLASSES, NUM_OBSERVATIONS
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID

# Small enough to compile in seconds; every part of the reference model is still there.
TINY = ModelConfig(
    vocab_size=24,
    image_size=16,
    conv_features=(8, 16),
    norm_groups=4,
    d_model=32,
    num_heads=2,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    max_len=12,
)
BATCH = 3


def make_batch(
    views: int = 2, *, seed: int = 0, max_words: int = TINY.max_len - 2
) -> dict[str, jax.Array]:
    """Random images/labels and tokens `[BOS, words..., EOS, PAD...]` of `TINY.max_len`."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(BATCH, views, TINY.image_size, TINY.image_size, 1))
    tokens = np.full((BATCH, TINY.max_len), PAD_ID)
    tokens[:, 0] = BOS_ID
    for row, words in enumerate(rng.integers(1, max_words + 1, size=BATCH)):
        tokens[row, 1 : words + 1] = rng.integers(EOS_ID + 1, TINY.vocab_size, size=words)
        tokens[row, words + 1] = EOS_ID
    labels = rng.integers(0, NUM_LABEL_CLASSES, size=(BATCH, NUM_OBSERVATIONS))
    return {
        "images": jnp.asarray(images, jnp.float32),
        "tokens": jnp.asarray(tokens, jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
    }
