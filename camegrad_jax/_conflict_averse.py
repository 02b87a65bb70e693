r"""The conflict-averse direction (CAGrad's problem, CAME-Grad's Stage 1), from the Gram matrix.

With weighted task gradients :math:`h_i = \lambda_i g_i`, their mean :math:`g_0` and a radius c,
the direction maximises the worst task's improvement inside a ball around :math:`g_0`:

.. math::

  d^* = \arg\max_{\|d - g_0\| \le c\|g_0\|} \min_i \langle h_i, d\rangle
      = g_0 + \frac{c\|g_0\|}{\|g_{w^*}\|} g_{w^*}, \qquad
  w^* = \arg\min_{w \in \Delta_K} \langle g_w, g_0\rangle + c\|g_0\|\,\|g_w\|,

with :math:`g_w = \sum_i w_i h_i`. The dual is solved on :math:`G / \operatorname{tr} G` by
:func:`camegrad_jax.solve_dual`, so every tolerance is relative and the answer does not depend on
the gradients' scale. CAGrad and CAME-Grad both call this module; neither depends on the other.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from camegrad_jax import _dual
from camegrad_jax._diagnostics import quadratic_norm


class ConflictAverseDirection(NamedTuple):
    """The direction :math:`d^* = \\sum_i \\delta_i h_i` and the dual solve behind it."""

    coefficients: jax.Array  # (K,) δ on the weighted gradients h_i.
    dual_weights: jax.Array  # (K,) w* on the simplex.
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () the iterative solver's residual.
    duality_gap: jax.Array  # () certified sub-optimality on the trace-normalised scale.


def conflict_averse_direction(
    normalised_gram: jax.Array,
    c: jax.Array,
    init_weights: jax.Array,
    *,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> ConflictAverseDirection:
    """The conflict-averse direction's coefficients for a trace-normalised weighted Gram matrix.

    Args:
      normalised_gram: (K, K) Gram matrix of the weighted gradients divided by its trace.
      c: the radius, ≥ 0 (checked by the factories).
      init_weights: (K,) warm start of the dual on the simplex.
      solver, solver_tol, solver_maxiter: see :func:`camegrad_jax.solve_dual`.

    Examples:
      Two opposed tasks, the second twice as long; with c = 0 the direction is the mean g0
      itself (the coefficients are those of the h_i):

      >>> import jax.numpy as jnp
      >>> from camegrad_jax._conflict_averse import conflict_averse_direction
      >>> gram = jnp.array([[1.0, -2.0], [-2.0, 4.0]]) / 5.0  # h_2 = -2 h_1, trace-normalised
      >>> result = conflict_averse_direction(gram, jnp.asarray(0.0), jnp.array([0.5, 0.5]))
      >>> result.coefficients  # c = 0: the mean g0 itself
      Array([0.5, 0.5], dtype=float32)
    """
    num_tasks = normalised_gram.shape[0]
    centre = jnp.full((num_tasks,), 1.0 / num_tasks, normalised_gram.dtype)
    radius = c * quadratic_norm(centre, normalised_gram)
    solution = _dual.solve_dual(
        normalised_gram,
        radius,
        init_weights,
        solver=solver,
        tol=solver_tol,
        maxiter=solver_maxiter,
    )
    return ConflictAverseDirection(
        coefficients=solution.direction_coefficients,
        dual_weights=solution.weights,
        solver_iterations=solution.iterations,
        solver_error=solution.solver_error,
        duality_gap=solution.duality_gap,
    )
