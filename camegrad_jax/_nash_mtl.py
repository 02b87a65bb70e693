r"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022).

The Nash bargaining solution is :math:`d = \sum_i \alpha_i h_i` with :math:`G\alpha = 1/\alpha`,
α > 0. That system is the stationarity condition of the strictly convex, self-concordant

.. math::

  f(\alpha) = \tfrac12 \alpha^\top G \alpha - \textstyle\sum_i \log \alpha_i ,

so it is solved here by damped Newton steps on the K × K problem (Nesterov & Nemirovski's step
:math:`1/(1 + \lambda)` with λ the Newton decrement keeps α > 0 and converges from any start,
quadratically near the solution), inside ``jit``, instead of the official code's concave-convex
procedure with cvxpy/ECOS on the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)


class NashMTLState(NamedTuple):
    """Nash-MTL's own state (``MultiTaskState.method_state``)."""

    weights: jax.Array  # (K,) float32, α of the last solve (before max_norm), on the h_i.
    normalised_weights: jax.Array  # (K,) float32, α·sqrt(tr G): the next solve's warm start.
    step: jax.Array  # () int32, updates seen; α is recomputed when step % every == 0.
    solver_iterations: jax.Array  # () int32, Newton steps of the last solve.
    residual: jax.Array  # () float32, ‖Cβ − 1/β‖ / ‖1/β‖ of the last solve (see `solve_nash`).


class NashSolution(NamedTuple):
    weights: jax.Array  # (K,) α on the trace-normalised Gram matrix; 0 for zero gradients.
    iterations: jax.Array  # () int32.
    residual: jax.Array  # () relative residual of Cβ = 1/β (C the cosine matrix, β_i = ‖h_i‖α_i).


def _objective(alpha: jax.Array, gram: jax.Array) -> jax.Array:
    return 0.5 * alpha @ gram @ alpha - jnp.sum(jnp.log(alpha))


def solve_nash(gram: jax.Array, init: jax.Array, maxiter: int | jax.Array) -> NashSolution:
    r"""Solves :math:`G\alpha = 1/\alpha`, α > 0, for a trace-normalised Gram matrix.

    Tasks with a zero gradient (no solution: :math:`(G\alpha)_i = 0`) are left out and get
    α_i = 0. Where 0 lies in the convex hull of the other gradients there is no solution either
    (f is unbounded below); α then grows by less than a factor 2 per step, and ‖h_i‖α_i stays
    capped at 1/ε, so that everything remains finite. The Newton steps run on the cosine matrix
    (see the comment in the code), so a task whose gradient is orders of magnitude smaller than
    the others' is solved as accurately as they are.

    Args:
      gram: (K, K) Gram matrix divided by its trace.
      init: (K,) positive warm start (ignored where a guess from the task norms is better).
      maxiter: cap on the Newton steps (may be traced).

    Returns:
      A :class:`NashSolution`.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    eps = jnp.finfo(dtype).eps
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    # A zero gradient, or one so small that its Gram entries lose precision to underflow (a
    # squared norm below tiny/ε, trace G being 1). Not relative to the largest norm: a task a
    # million times smaller than another still has its exact equation on the cosine matrix.
    active = norms > jnp.sqrt(jnp.finfo(dtype).tiny / eps)
    both = active[:, None] & active[None, :]
    inverse_norms = jnp.where(active, 1.0 / jnp.where(active, norms, 1.0), 0.0)
    # Equilibrated: with D = diag(‖h_i‖), the cosine matrix C = D⁻¹GD⁻¹ and β = Dα, the system
    # Gα = 1/α is exactly Cβ = 1/β. The Newton steps run on C, whose conditioning does not
    # depend on how far apart the tasks' gradient norms are (on G, a task 1e6 times smaller
    # than another would be solved to a relative accuracy of 1e12·ε).
    cosine = gram * inverse_norms[:, None] * inverse_norms[None, :]
    # Inactive tasks get the decoupled equation β_i = 1/β_i, and are zeroed at the end.
    system = jnp.where(both, cosine, jnp.eye(num_tasks, dtype=dtype))
    lower, upper = eps, 1.0 / eps
    # β_i = 1 solves the orthogonal case (factor 1) and the collinear one (factor K^-1/2).
    guess = jnp.full((num_tasks,), num_tasks**-0.25, dtype)
    init = jnp.where(active, init * norms, init)
    init = jnp.clip(jnp.where(jnp.isfinite(init) & (init > 0), init, guess), lower, upper)
    start = jnp.where(_objective(init, system) < _objective(guess, system), init, guess)
    tol = jnp.sqrt(eps)

    def keep_going(carry):
        _, iteration, decrement = carry
        return (iteration < maxiter) & (decrement > tol)

    def newton_step(carry):
        beta, iteration, _ = carry
        gradient = system @ beta - 1.0 / beta
        hessian = system + jnp.diag(1.0 / beta**2)
        delta = -jnp.linalg.solve(hessian, gradient)
        decrement = jnp.sqrt(jnp.maximum(-gradient @ delta, 0.0))
        # Damped while far (the step stays inside the Dikin ellipsoid), full once close.
        step = jnp.where(decrement > 0.25, 1.0 / (1.0 + decrement), 1.0)
        beta = jnp.clip(beta + step * delta, lower, upper)
        return beta, iteration + 1, decrement

    beta, iterations, _ = lax.while_loop(
        keep_going,
        newton_step,
        (start.astype(dtype), jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, dtype)),
    )
    residual = jnp.linalg.norm(system @ beta - 1.0 / beta) / jnp.linalg.norm(1.0 / beta)
    return NashSolution(beta * inverse_norms, iterations, residual)


def nash_mtl_weighting(
    *, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20
) -> Weighting:
    """Nash-MTL's :class:`~camegrad_jax.Weighting` (see :func:`nash_mtl`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> NashMTLState:
        return NashMTLState(
            weights=jnp.ones((k,), jnp.float32),
            normalised_weights=jnp.ones((k,), jnp.float32),
            step=jnp.zeros((), jnp.int32),
            solver_iterations=jnp.zeros((), jnp.int32),
            residual=jnp.zeros((), jnp.float32),
        )

    def weighting(gram, state: NashMTLState, weights, **extra_args) -> WeightingResult:
        del extra_args
        dtype = gram.dtype
        weighted = _gram.weighted_gram(gram, weights)
        normalised, trace = _gram.trace_normalise(weighted)
        scale = jnp.sqrt(jnp.where(trace > 0, trace, 1.0))

        def solve(_):
            solution = solve_nash(normalised, state.normalised_weights.astype(dtype), optim_niter)
            return (
                solution.weights / scale,
                solution.weights,
                solution.iterations,
                solution.residual,
            )

        def reuse(_):
            return (
                state.weights.astype(dtype),
                state.normalised_weights.astype(dtype),
                jnp.asarray(0, jnp.int32),
                state.residual.astype(dtype),
            )

        recompute = state.step % jnp.asarray(update_weights_every, jnp.int32) == 0
        alpha, normalised_alpha, iterations, residual = lax.cond(recompute, solve, reuse, None)
        norm = jnp.sqrt(jnp.maximum(alpha @ weighted @ alpha, 0.0))
        max_norm_ = jnp.asarray(max_norm, dtype)
        clip = (max_norm_ > 0) & (norm > max_norm_)
        beta = jnp.where(clip, alpha * (max_norm_ / jnp.where(clip, norm, 1.0)), alpha)
        new_state = NashMTLState(
            weights=alpha,
            normalised_weights=normalised_alpha,
            step=state.step + 1,
            solver_iterations=iterations,
            residual=residual,
        )
        coefficients, new_state = _gram.guard_non_finite(gram, beta * weights, new_state, state)
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def nash_mtl(
    *,
    max_norm: float = 1.0,
    update_weights_every: int = 1,
    optim_niter: int = 20,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Nash-MTL as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` and their Gram matrix G, the Nash
    bargaining direction is

    .. math::

      d = \sum_i \alpha_i h_i, \qquad G\alpha = 1/\alpha,\ \alpha > 0
      \quad (\text{i.e. } \alpha_i \langle h_i, d\rangle = 1 \ \forall i),

    so that :math:`\|d\|^2 = \alpha^\top G \alpha = K`, whatever the gradients' scale. As in the
    official code (which clips the shared parameters' gradient with ``clip_grad_norm_``), d is
    then scaled down to norm ``max_norm`` when it is longer (no clipping when ``max_norm = 0``).
    α is recomputed every ``update_weights_every`` updates and reused in between, applied to the
    new gradients.

    Deviations from the official code (https://github.com/AvivNavon/nash-mtl), each deliberate:

    * α solves :math:`G\alpha = 1/\alpha` to round-off, by damped Newton steps on
      :math:`\tfrac12\alpha^\top G\alpha - \sum_i\log\alpha_i` in ``jit`` (see the module
      docstring), warm-started from the previous α; ``optim_niter`` caps the Newton steps (it
      caps the CCP iterations in the official code, which stops at a residual of 1e-3).
    * A task with a zero gradient gets α_i = 0 (the official solver fails there and keeps the
      previous α). Where 0 lies in the convex hull of the gradients (no solution exists) α stays
      finite and d is close to 0.

    The update is invariant to the gradients' scale (homogeneous of degree 0) and to the order
    of the tasks.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      max_norm: largest norm of the update on the shared parameters, ≥ 0 (0: no clipping).
      update_weights_every: recompute α every this many updates (a positive integer).
      optim_niter: cap on the Newton steps of one solve (a positive integer).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i` (unclipped).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`NashMTLState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import nash_mtl
      >>> tx = nash_mtl(max_norm=0.0, num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # α = (1, 1/4): every task improves by 1/α_i
      Array([1., 1.], dtype=float32)

    References:
      Navon et al., Multi-Task Learning as a Bargaining Game, ICML 2022.
      https://arxiv.org/abs/2202.01017
    """
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(max_norm, "max_norm"),
        _validation.check_positive_int(update_weights_every, "update_weights_every"),
        _validation.check_positive_int(optim_niter, "optim_niter"),
    )

    return stacked_gradient_transformation(
        nash_mtl_weighting(
            max_norm=max_norm, update_weights_every=update_weights_every, optim_niter=optim_niter
        ),
        name="nash_mtl",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
        gram_homogeneity=-0.5,  # Gα = 1/α: α scales like 1/‖g‖.
    )
