"""K × K helpers shared by the Gram-based weightings (MGDA, IMTL-G, Nash-MTL, Aligned-MTL...).

Each weighting receives the Gram matrix of the *raw* task gradients g_i and acts on the weighted
gradients h_i = λ_i g_i, whose Gram matrix is ΛGΛ. Working on ΛGΛ / trace(ΛGΛ) makes every
tolerance relative, so that the methods are scale-equivariant from 1e-10 to 1e10.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def weighted_gram(gram: jax.Array, task_weights: jax.Array) -> jax.Array:
    """ΛGΛ: the Gram matrix of h_i = λ_i g_i."""
    return gram * task_weights[:, None] * task_weights[None, :]


def trace_normalise(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(G / trace G, trace G), with G returned unchanged (all zeros) when its trace is 0."""
    trace = jnp.trace(gram)
    return gram / jnp.where(trace > 0, trace, 1.0), trace


def pseudo_inverse_psd(gram: jax.Array, rtol: float | None = None) -> jax.Array:
    """Pseudo-inverse of a symmetric positive semi-definite matrix by eigendecomposition.

    Eigenvalues at most ``rtol · λ_max`` count as zero (default 8 K ε, above the round-off of an
    exactly singular matrix, e.g. one with two identical tasks).

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._gram import pseudo_inverse_psd
      >>> twins = jnp.ones((2, 2))  # two identical unit tasks: eigenvalues 2 and 0
      >>> [round(x, 4) for x in pseudo_inverse_psd(twins).ravel().tolist()]
      [0.25, 0.25, 0.25, 0.25]
    """
    if rtol is None:
        rtol = 8 * gram.shape[0] * float(jnp.finfo(gram.dtype).eps)

    def spectral_inverse(matrix):
        eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
        kept = eigenvalues > rtol * jnp.max(eigenvalues)
        inverse = jnp.where(kept, 1.0 / jnp.where(eigenvalues > 0, eigenvalues, 1.0), 0)
        return (eigenvectors * inverse) @ eigenvectors.T, jnp.all(kept)

    # When the gradients are linearly independent, G⁻¹ = D⁻¹C⁻¹D⁻¹ with D = diag ‖h_i‖ and C the
    # cosine matrix: inverting C keeps a task whose gradient is orders of magnitude smaller than
    # the others' (G's own spectrum would drop it below the cutoff). Dependent gradients (a
    # singular C) take the Moore–Penrose pseudo-inverse of G itself.
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    inverse_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    cosine = gram * inverse_norms[:, None] * inverse_norms[None, :]
    cosine_inverse, invertible = spectral_inverse(cosine)
    equilibrated = cosine_inverse * inverse_norms[:, None] * inverse_norms[None, :]
    return jnp.where(invertible & jnp.all(norms > 0), equilibrated, spectral_inverse(gram)[0])


def restricted_pseudo_inverse(gram: jax.Array, support: jax.Array) -> jax.Array:
    """The pseudo-inverse of G restricted to a support S (a (K,) bool mask), 0 outside S.

    G_SS is equilibrated to its cosine matrix D⁻¹G_SS D⁻¹ (D = diag ‖h_i‖) before the
    eigenvalue cutoff: a cutoff relative to G's largest eigenvalue would discard a task whose
    gradient is orders of magnitude smaller than the others'. The rows and columns outside S
    carry the identity while the eigendecomposition runs, so the system stays square.
    """
    num_tasks = gram.shape[0]
    eps = jnp.finfo(gram.dtype).eps
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    inverse_norms = jnp.where(support & (norms > 0), 1.0 / jnp.where(norms > 0, norms, 1.0), 1.0)
    both = support[:, None] & support[None, :]
    equilibrated = gram * inverse_norms[:, None] * inverse_norms[None, :]
    restricted = jnp.where(both, equilibrated, jnp.eye(num_tasks, dtype=gram.dtype))
    eigenvalues, eigenvectors = jnp.linalg.eigh(restricted)
    cutoff = num_tasks * eps * jnp.max(jnp.abs(eigenvalues))
    inverse = jnp.where(jnp.abs(eigenvalues) > cutoff, 1.0 / eigenvalues, 0.0)
    pinv = (eigenvectors * inverse) @ eigenvectors.T
    return jnp.where(both, pinv * inverse_norms[:, None] * inverse_norms[None, :], 0.0)


def guard_non_finite(
    gram: jax.Array, coefficients: jax.Array, new_state: Any, previous_state: Any
) -> tuple[jax.Array, Any]:
    """A non-finite Gram matrix (NaN or inf in the gradients) poisons the coefficients, so that a
    downstream ``optax.apply_if_finite`` rejects the step, and leaves the method's state as it
    was, so that one bad batch does not corrupt the warm starts of the following steps."""
    finite = jnp.all(jnp.isfinite(gram))
    coefficients = jnp.where(finite, coefficients, jnp.nan)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, previous_state)
    return coefficients, state
