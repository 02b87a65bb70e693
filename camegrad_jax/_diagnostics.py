"""Diagnostics every stacked-gradient method can afford: all of them are read off the Gram matrix.

These are the quantities the CAME-Grad paper analyses (Figure 3, Appendix A): how often the task
gradients conflict, and how much of their energy the joint gradient loses ("magnitude collapse").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class GradientStats(NamedTuple):
    """Per-step statistics of the (weighted) task gradients h_i and of the update."""

    cosine_similarity: jax.Array  # (K, K) cos(h_i, h_j); 0 where a gradient is zero.
    any_conflict: jax.Array  # () bool, whether some pair has negative cosine similarity.
    task_norms: jax.Array  # (K,) ‖h_i‖.
    joint_norm: jax.Array  # () ‖g_lin‖ = ‖Σ_i h_i‖.
    update_norm: jax.Array  # () ‖Σ_i β_i h_i‖ (the shared leaves' update).
    magnitude_collapse_ratio: jax.Array  # () ‖g_lin‖ / Σ_i ‖h_i‖, in [0, 1]; 1 when none collapse.


def quadratic_norm(coefficients: jax.Array, gram: jax.Array) -> jax.Array:
    """‖Σ_i c_i h_i‖ from the Gram matrix, clipped at 0 against round-off."""
    return jnp.sqrt(jnp.maximum(coefficients @ gram @ coefficients, 0.0))


def gradient_stats(
    gram: jax.Array, coefficients: jax.Array, task_weights: jax.Array
) -> GradientStats:
    """Statistics from the Gram matrix of the raw gradients g_i, the update Σ_i coefficients_i g_i
    and the task weights λ (h_i = λ_i g_i).

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import gradient_stats
      >>> g = jnp.array([[3.0, 0.0], [0.0, 4.0]])  # orthogonal: no conflict, ‖g_lin‖ = 5
      >>> stats = gradient_stats(g @ g.T, jnp.ones(2), jnp.ones(2))
      >>> stats.joint_norm, stats.magnitude_collapse_ratio  # 5 / (3 + 4)
      (Array(5., dtype=float32), Array(0.71428573, dtype=float32))
    """
    raw_norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    outer = raw_norms[:, None] * raw_norms[None, :]
    # Positive weights do not change angles: cos(h_i, h_j) = cos(g_i, g_j).
    cosine = jnp.where(outer > 0, gram / jnp.where(outer > 0, outer, 1.0), 0.0)
    cosine = jnp.clip(cosine, -1.0, 1.0)
    norms = task_weights * raw_norms
    joint = quadratic_norm(task_weights, gram)
    total = jnp.sum(norms)
    return GradientStats(
        cosine_similarity=cosine,
        any_conflict=jnp.any(cosine < 0),
        task_norms=norms,
        joint_norm=joint,
        update_norm=quadratic_norm(coefficients, gram),
        magnitude_collapse_ratio=jnp.where(total > 0, joint / jnp.where(total > 0, total, 1), 1.0),
    )


def empty_stats(num_tasks: int, dtype: jnp.dtype = jnp.float32) -> GradientStats:
    """Statistics before the first update (zeros with the right shapes, for the initial state)."""
    return GradientStats(
        cosine_similarity=jnp.zeros((num_tasks, num_tasks), dtype),
        any_conflict=jnp.asarray(False),
        task_norms=jnp.zeros((num_tasks,), dtype),
        joint_norm=jnp.zeros((), dtype),
        update_norm=jnp.zeros((), dtype),
        magnitude_collapse_ratio=jnp.ones((), dtype),
    )
