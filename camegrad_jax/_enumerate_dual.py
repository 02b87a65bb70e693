r"""Stage 1's dual without a loop: every support of the simplex solved exactly, in one batch.

The iterative solvers of :mod:`camegrad_jax._dual` run data-dependent ``while`` loops (projected
gradient steps, backtracking, rounds of polish). On an accelerator a loop's predicate may have
to reach the host at every iteration. For K ≤ 8 the dual has an exact, loop-free solution: its
optimum lies on one of the :math:`2^K - 1` faces of the simplex, and on a face S the
optimality conditions have a closed form (the active-set *polish* of :mod:`camegrad_jax._dual`):

.. math::

  G_{SS}\, z_S = t\mathbb{1} - (Gb)_S, \qquad z^\top G z = r^2, \qquad
  z \ge 0, \qquad (G(b + z))_i \ge t \ \ (i \notin S).

All faces are solved at once under ``vmap`` (255 eigendecompositions of 8 × 8 matrices at
K = 8). A face whose solution passes the polish's checks satisfies the KKT conditions of the
convex problem, so it is optimal; among those that pass, the lowest dual objective is kept. When
none passes (0 in the convex hull of the gradients, where the closed form divides by
:math:`\|g_w\| = 0`), the best candidate weights by the dual objective are kept and the
direction follows the same tie-break as the iterative solvers, with the projection onto the
dual cone found by the same enumeration (a non-negative least-squares problem in K variables).

Prefer it on accelerators and in programs that must not branch on data; prefer ``"jaxopt"``
(the default) or ``"apg"`` for K > 8, where 2^K faces cost more than a few iterations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from camegrad_jax import _cone, _dual

MAX_TASKS = 8


def check_num_tasks(num_tasks: int) -> None:
    """Raises `ValueError` for more tasks than the enumeration is offered for.

    Examples:
      >>> from camegrad_jax._enumerate_dual import check_num_tasks
      >>> check_num_tasks(9)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: Parameter `solver = "enumerate"` ... is offered for K ≤ 8; found K = 9. ...
    """
    if num_tasks > MAX_TASKS:
        raise ValueError(
            f'Parameter `solver = "enumerate"` solves the 2^K − 1 faces of the simplex at once '
            f"and is offered for K ≤ {MAX_TASKS}; found K = {num_tasks}. Use "
            '`solver = "jaxopt"` or `solver = "apg"`.'
        )


def _best(valid: jax.Array, scores: jax.Array) -> jax.Array:
    """Index of the lowest score among the valid rows, or among all rows if none is valid."""
    finite = jnp.where(jnp.isfinite(scores), scores, jnp.inf)
    return jnp.argmin(jnp.where(valid | ~jnp.any(valid), finite, jnp.inf))


def nonnegative_quadratic(gram: jax.Array, linear: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:math:`\\arg\\min_{\\mu \\ge 0} \\tfrac12 \\mu^\\top G \\mu + \\mu^\\top q` without a loop
    (K ≤ 8), and whether any support certified it: ``(mu, solved)``.

    The problem is solved exactly on each of the 2^K supports (the empty one too), and the valid
    solution of least objective is kept. No support is valid when the problem is unbounded below
    (some ν ≥ 0 has Gν = 0 and νᵀq < 0); μ is then the candidate of least objective. Pass G
    and q on a common scale (e.g. divided by trace G): the certificates' tolerances are relative
    to G's entries.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._enumerate_dual import nonnegative_quadratic
      >>> nonnegative_quadratic(jnp.eye(2), jnp.array([-1.0, 2.0]))  # μ = max(−q, 0)
      (Array([1., 0.], dtype=float32), Array(True, dtype=bool))
    """
    faces = _dual.every_support(gram.shape[0], with_empty=True)
    valid, mu = jax.vmap(lambda face: _cone.support_solve(face, gram, linear))(faces)
    objective = 0.5 * jnp.einsum("si,ij,sj->s", mu, gram, mu) + mu @ linear
    return mu[_best(valid, objective)], jnp.any(valid)


def project_by_enumeration(gram: jax.Array, coefficients: jax.Array) -> jax.Array:
    """:func:`camegrad_jax._cone.project_onto_dual_cone` without a loop (K ≤ 8).

    The non-negative least-squares problem :math:`\\min_{\\mu \\ge 0} \\tfrac12 \\mu^\\top G
    \\mu + \\mu^\\top G c` is solved by :func:`nonnegative_quadratic` (maybe nothing conflicts:
    the empty support is one of the candidates).
    """
    trace = jnp.trace(gram)
    normalised = gram / jnp.where(trace > 0, trace, 1.0)
    mu, _ = nonnegative_quadratic(normalised, normalised @ coefficients)
    return coefficients + mu


def solve_by_enumeration(
    gram: jax.Array, radius: jax.Array, init: jax.Array, centre: jax.Array | None = None
) -> _dual.DualSolution:
    """Stage 1's dual on a trace-normalised Gram matrix, every face of the simplex at once.

    Args:
      gram: (K, K) trace-normalised Gram matrix, K ≤ 8.
      radius: r on the same scale (r = 0: d is the centre and the weights stay ``init``).
      init: (K,) weights returned when r = 0 (the warm start plays no other part).
      centre: (K,) the centre b (default uniform), as in :func:`camegrad_jax.solve_dual`.

    Returns:
      A :class:`camegrad_jax.DualSolution` with ``iterations = 0``; ``polished`` says whether a
      face certified the optimum, and ``solver_error`` is 0 then, else the gradient-mapping
      norm of the dual at the weights kept.
    """
    num_tasks = gram.shape[0]
    check_num_tasks(num_tasks)
    dtype = gram.dtype
    radius = jnp.asarray(radius, dtype)
    init = init.astype(dtype)
    faces = _dual.every_support(num_tasks)
    # On a face the r = 0 problem is degenerate; solve with r = 1 there and discard the result.
    live_radius = jnp.where(radius > 0, radius, 1.0)
    valid, weights, directions = jax.vmap(
        lambda face: _dual.polish_on_support(face, gram, live_radius, centre)
    )(faces)
    # Candidates where no face certifies: each face's clipped solution and its uniform weights.
    uniform_on_face = faces / jnp.sum(faces, axis=1, keepdims=True)
    candidates = jnp.concatenate([weights, uniform_on_face.astype(dtype)])
    objective = jax.vmap(lambda w: _dual.dual_objective(w, gram, live_radius, centre))(candidates)
    chosen = _best(jnp.concatenate([valid, jnp.zeros_like(valid)]), objective)
    certified = jnp.any(valid)
    best_weights = candidates[chosen]
    exact_direction = directions[jnp.minimum(chosen, faces.shape[0] - 1)]
    direction = jnp.where(
        certified,
        exact_direction,
        _dual._closed_form_direction(best_weights, gram, live_radius, centre),
    )
    direction = _dual._prefer_nearest_non_conflicting(
        direction,
        gram,
        live_radius,
        centre,
        support=certified & (best_weights > 0),
        project=project_by_enumeration,
    )
    gradient = jax.grad(_dual.dual_objective)(best_weights, gram, live_radius, centre)
    mapping = best_weights - _dual._project(best_weights - gradient)
    error = jnp.where(certified, 0.0, jnp.linalg.norm(mapping))

    live = radius > 0
    weights = jnp.where(live, best_weights, init)
    direction = jnp.where(live, direction, _dual._centre(gram, centre))
    gap = _dual._duality_gap(weights, direction, gram, radius, centre)
    return _dual.DualSolution(
        weights=weights,
        direction_coefficients=direction,
        iterations=jnp.asarray(0, jnp.int32),
        solver_error=jnp.where(live, error, 0.0).astype(dtype),
        duality_gap=jnp.where(live, gap, 0.0).astype(dtype),
        polished=live & certified,
    )
