"""The small three-task problem that the mesh checks (sharding_check.py, multiprocess_check.py)
run sharded and on one device. Import it only after setting XLA_FLAGS: it imports jax."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def problem():
    """``(params, x, losses)``: a two-layer trunk and three heads, K = 3 (fixed seeds, so every
    process builds the same values)."""
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "w1": jax.random.normal(keys[0], (64, 256)) / 8,
        "w2": jax.random.normal(keys[1], (256, 64)) / 16,
        "heads": jax.random.normal(keys[2], (3, 64)) / 8,
    }
    x = jax.random.normal(keys[3], (64, 64))

    def losses(p, x):
        z = jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"])
        out = z @ p["heads"].T
        return jnp.stack(
            [
                jnp.mean(out[:, 0] ** 2),
                jnp.mean((out[:, 1] - 1) ** 2),
                jnp.mean((out[:, 2] + out[:, 0]) ** 2),
            ]
        )

    return params, x, losses
