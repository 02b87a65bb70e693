r"""Projection onto the dual cone of the task gradients, from the Gram matrix alone.

For a vector :math:`v = \sum_i c_i h_i` in the span of the task gradients, the nearest vector
that conflicts with no task,

.. math::

  \Pi(v) = \arg\min_{d:\ \langle h_i, d\rangle \ge 0\ \forall i} \|d - v\|,

is :math:`v + \sum_i \mu_i h_i` with :math:`\mu = \arg\min_{\mu \ge 0} \tfrac12 \mu^\top G \mu +
\mu^\top G c` (a non-negative least-squares problem in K variables). It serves CAME-Grad's
Stage 1 where the conflict-averse dual degenerates (0 in the convex hull of the gradients), and
UPGrad-style methods that project every gradient onto this cone.

Solved by FISTA on the non-negative orthant with step 1/λ_max(G) and finished, as the Stage 1
dual is, by an exact solve on the support that is kept only when it verifiably holds, each
optimality condition checked against its own task's round-off (and, for K ≤ 8, by the exact
solve on every support where the iterations found none that holds).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from camegrad_jax import _gram

# Up to this many tasks, iterations that end without a verified support fall back to trying
# every support (2^K of them, in one batch).
MAX_TASKS_ALL_SUPPORTS = 8


def _support_solve(mu, gram, linear):
    """Exact NNLS solution on the support of `mu`, and whether it satisfies the KKT conditions."""
    support = mu > jnp.finfo(gram.dtype).eps * jnp.maximum(jnp.max(mu), 1.0)
    return support_solve(support, gram, linear)


def support_solve(support, gram, linear):
    """Exact NNLS solution on a given support (a (K,) bool mask): ``(valid, mu)``."""
    eps = jnp.finfo(gram.dtype).eps
    exact = jnp.where(support, -_gram.restricted_pseudo_inverse(gram, support) @ linear, 0.0)
    exact = jnp.where(support, exact, 0.0)
    gradient = gram @ exact + linear
    # Each row's own round-off, as in `_dual.polish_on_support`: G_ij carries eps·‖h_i‖‖h_j‖,
    # so row i of the gradient carries eps·‖h_i‖·(Σ_j ‖h_j‖|μ_j| + the size of q in those units)
    # and μ_j matters on the scale of ‖h_j‖. A tolerance shared by all rows would accept a wrong
    # support for a task whose gradient is orders of magnitude smaller than the others'.
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    positive = norms > 0
    linear_reach = jnp.max(jnp.abs(linear) / jnp.where(positive, norms, 1.0))
    reach = 64 * eps * (norms @ jnp.abs(exact) + linear_reach)
    tolerance = norms * reach
    valid = (
        jnp.all(jnp.isfinite(exact))
        & jnp.all(exact * norms >= -reach)
        & jnp.all(jnp.where(support, jnp.abs(gradient) <= tolerance, gradient >= -tolerance))
    )
    return valid, jnp.maximum(exact, 0.0)


@functools.partial(jax.jit, static_argnames=("maxiter",))
def project_onto_dual_cone(
    gram: jax.Array, coefficients: jax.Array, maxiter: int = 500
) -> jax.Array:
    r"""Coefficients of :math:`\Pi(\sum_i c_i h_i)` in terms of the :math:`h_i`.

    Args:
      gram: (K, K) Gram matrix of the :math:`h_i` (any scale; normalised internally).
      coefficients: (K,) coefficients c of the vector to project.
      maxiter: iteration cap of the first-order phase.

    Returns:
      (K,) coefficients :math:`c + \mu` with :math:`\mu \ge 0`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._cone import project_onto_dual_cone
      >>> h = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> project_onto_dual_cone(h @ h.T, jnp.array([1.0, 0.0]))  # h_1 → h_1 + h_2 / 2
      Array([1. , 0.5], dtype=float32)
    """
    dtype = gram.dtype
    trace = jnp.trace(gram)
    gram_n = gram / jnp.where(trace > 0, trace, 1.0)
    linear = gram_n @ coefficients
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(gram_n)[-1], jnp.finfo(dtype).tiny)
    tol = 16 * jnp.finfo(dtype).eps

    # The exact solve is tried first (at μ = 0: maybe nothing conflicts) and then every few
    # iterations; it ends the loop once it holds. One copy of it is compiled.
    def keep_going(carry):
        _, _, _, iteration, error, valid, _ = carry
        return (iteration < maxiter) & (error > tol) & ~valid

    def step(carry):
        mu, extrapolated, momentum, iteration, _, _, _ = carry
        new = jnp.maximum(extrapolated - (gram_n @ extrapolated + linear) / lipschitz, 0.0)
        new = jnp.where(iteration == 0, mu, new)  # iteration 0: only the exact solve at μ = 0
        next_momentum = 0.5 * (1 + jnp.sqrt(1 + 4 * momentum**2))
        extrapolated = new + ((momentum - 1) / next_momentum) * (new - mu)
        error = lipschitz * jnp.linalg.norm(new - mu)
        error = jnp.where(iteration == 0, jnp.inf, error)
        valid, exact = lax.cond(
            iteration % 8 == 0,
            lambda: _support_solve(new, gram_n, linear),
            lambda: (jnp.asarray(False), new),
        )
        return new, extrapolated, next_momentum, iteration + 1, error, valid, exact

    zeros = jnp.zeros_like(coefficients)
    start = (
        zeros,
        zeros,
        jnp.asarray(1.0, dtype),
        jnp.asarray(0),
        jnp.asarray(jnp.inf, dtype),
        jnp.asarray(False),
        zeros,
    )
    mu, _, _, _, _, valid, exact = lax.while_loop(keep_going, step, start)
    if coefficients.shape[0] <= MAX_TASKS_ALL_SUPPORTS:
        # Where the iterations found no support that verifiably holds (gradient norms orders of
        # magnitude apart make them slow to identify it), every support is tried at once.
        from camegrad_jax._enumerate_dual import nonnegative_quadratic  # It builds on this one.

        exact, valid = lax.cond(
            valid, lambda: (exact, valid), lambda: nonnegative_quadratic(gram_n, linear)
        )
    return coefficients + jnp.where(valid, exact, mu)
