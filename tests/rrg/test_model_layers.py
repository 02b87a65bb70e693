"""The model's layers on their own: the decoder's attention mask (the layers inside the model are
tested through it in test_model.py, whose tiny model is compiled once there)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from camegrad_jax.rrg.model_layers import decoder_attention_mask
from camegrad_jax.rrg.tokenizer import BOS_ID, EOS_ID, PAD_ID


def test_decoder_attention_mask() -> None:
    tokens = jnp.asarray([[BOS_ID, 5, EOS_ID, PAD_ID], [BOS_ID, 6, 7, EOS_ID]])
    expected = np.tril(np.ones((4, 4), bool))[None] & (np.asarray(tokens) != PAD_ID)[:, None, :]
    np.testing.assert_array_equal(decoder_attention_mask(tokens)[:, 0], expected)
