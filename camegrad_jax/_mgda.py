r"""MGDA: the min-norm point of the convex hull of the task gradients (Sener & Koltun, 2018).

The min-norm weights solve :math:`\min_{w\in\Delta_K} w^\top G w`, which is Stage 1's dual
(:mod:`camegrad_jax._dual`) with the centre b = 0 and radius 1: the same simplex solvers, exact
active-set polish, certificate and warm start serve both methods.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _dual, _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)

Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")


class MGDAState(NamedTuple):
    """MGDA's own state (``MultiTaskState.method_state``)."""

    dual_weights: jax.Array  # (K,) float32, min-norm weights w*; warm start of the next solve.
    min_norm: jax.Array  # () float32, ‖Σ_i w*_i ĥ_i‖ of the (normalised) weighted gradients.
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () float32, the iterative solver's residual (0 once polished).
    duality_gap: jax.Array  # () float32, certified sub-optimality (relative to the trace).


def _normalisers(normalization, weighted, task_weights, losses, dtype):
    """n_i of the official code's ``gradient_normalizers``, for the weighted tasks λ_i L_i."""
    if normalization == "none":
        return jnp.ones_like(task_weights)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(weighted), 0.0))
    if normalization == "l2":
        return norms
    if losses is None:
        raise ValueError(
            f"mgda with `normalization = {normalization!r}` needs the task losses: pass "
            "`value=losses` (shape (K,)) to `update`."
        )
    losses = jnp.asarray(losses, dtype)
    if losses.shape != task_weights.shape:
        raise ValueError(
            f"mgda: `value` should hold one loss per task, shape {task_weights.shape}; found "
            f"shape {losses.shape}."
        )
    weighted_losses = task_weights * losses
    return weighted_losses if normalization == "loss" else weighted_losses * norms


class MGDAWeights(NamedTuple):
    """MGDA's K × K part: everything but the pass over the gradients."""

    coefficients: jax.Array  # (K,) on the raw gradients: the update is Σ_i coefficients_i g_i.
    dual_weights: jax.Array  # (K,) min-norm weights w* of the normalised weighted gradients.
    min_norm: jax.Array  # () ‖Σ_i w*_i ĥ_i‖.
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () the iterative solver's residual.
    duality_gap: jax.Array  # () certified sub-optimality (relative to the trace).


def mgda_weights(
    gram: jax.Array,
    *,
    normalization: Normalization = "none",
    losses: jax.Array | None = None,
    task_weights: Any = None,
    init_weights: jax.Array | None = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> MGDAWeights:
    r"""MGDA's coefficients from the Gram matrix of the raw task gradients.

    The min-norm point of the convex hull of the normalised weighted gradients
    :math:`\hat h_i = \lambda_i g_i / n_i` (see :func:`mgda` for :math:`n_i`), applied to the
    weighted gradients :math:`h_i`, as the official code does.

    Args:
      gram: (K, K) Gram matrix of the *unweighted* task gradients (the same convention as
        :func:`camegrad_weights`).
      normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"`` (see :func:`mgda`).
      losses: (K,) loss values, needed by ``"loss"`` and ``"loss+"``.
      task_weights: (K,) static weights λ (default all ones).
      init_weights: (K,) warm start on the simplex (default uniform).
      solver, solver_tol, solver_maxiter: see :func:`camegrad_jax.solve_dual`.

    Returns:
      :class:`MGDAWeights`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import mgda_weights
      >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal, norms 1 and 2
      >>> mgda_weights(gram).coefficients  # the min-norm point weighs the shorter one more
      Array([0.8, 0.2], dtype=float32)
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    weights = _validation.weights_vector(task_weights, num_tasks, dtype)
    if init_weights is None:
        init_weights = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    weighted = _gram.weighted_gram(gram, weights)
    normalisers = _normalisers(normalization, weighted, weights, losses, dtype)
    inverse = jnp.where(normalisers > 0, 1.0 / jnp.where(normalisers > 0, normalisers, 1), 0)
    normalised, trace = _gram.trace_normalise(_gram.weighted_gram(weighted, inverse))
    solution = _dual.solve_dual(
        normalised,
        jnp.asarray(1.0, dtype),
        init_weights,
        solver=solver,
        tol=solver_tol,
        maxiter=solver_maxiter,
        centre=jnp.zeros((num_tasks,), dtype),
    )
    min_weights = solution.weights
    return MGDAWeights(
        # As the official code: w* found on the normalised gradients weighs the weighted ones.
        coefficients=min_weights * weights,
        dual_weights=min_weights,
        min_norm=jnp.sqrt(jnp.maximum(min_weights @ normalised @ min_weights * trace, 0.0)),
        solver_iterations=solution.iterations,
        solver_error=solution.solver_error,
        duality_gap=solution.duality_gap,
    )


def mgda_weighting(
    *,
    normalization: Normalization = "none",
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> Weighting:
    """MGDA's :class:`~camegrad_jax.Weighting` (see :func:`mgda`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> MGDAState:
        return MGDAState(
            dual_weights=jnp.full((k,), 1.0 / k, jnp.float32),
            min_norm=jnp.zeros((), jnp.float32),
            solver_iterations=jnp.zeros((), jnp.int32),
            solver_error=jnp.zeros((), jnp.float32),
            duality_gap=jnp.zeros((), jnp.float32),
        )

    def weighting(gram, state: MGDAState, weights, **extra_args) -> WeightingResult:
        result = mgda_weights(
            gram,
            normalization=normalization,
            losses=extra_args.get("value"),
            task_weights=weights,
            init_weights=state.dual_weights,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        )
        new_state = MGDAState(*result[1:])
        coefficients, new_state = _gram.guard_non_finite(
            gram, result.coefficients, new_state, state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def mgda(
    *,
    normalization: Normalization = "none",
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> optax.GradientTransformationExtraArgs:
    r"""MGDA's min-norm direction as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` and optional normalisers
    :math:`n_i` (:math:`\hat h_i = h_i / n_i`):

    .. math::

      w^\star = \arg\min_{w\in\Delta_K} \Big\|\sum_i w_i \hat h_i\Big\|^2, \qquad
      g = \sum_i w^\star_i h_i .

    Without normalisation g is the min-norm point of the convex hull of the :math:`h_i`: it
    conflicts with no task (:math:`\langle h_i, g\rangle \ge \|g\|^2`), and it is 0 exactly at a
    Pareto-stationary point.

    Normalisation (``normalization``), optional and "not included in the paper" in the official
    code, which finds w* on the normalised gradients and applies it to the unnormalised losses;
    this transformation does the same (LibMTL applies w* to the normalised gradients instead):

    * ``"none"``: :math:`n_i = 1`;
    * ``"l2"``: :math:`n_i = \|h_i\|`;
    * ``"loss"``: :math:`n_i = \lambda_i L_i`;
    * ``"loss+"``: :math:`n_i = \lambda_i L_i \|h_i\|` (MGDA-UB's recommended choice).

    The loss-based ones need the (positive) task losses, passed as ``update(..., value=losses)``
    as optax does for value-based transformations. A task whose normaliser is 0 (zero gradient,
    zero loss) enters the min-norm problem as a zero gradient.

    The min-norm problem is solved as Stage 1's dual with centre 0 and radius 1
    (:func:`camegrad_jax.solve_dual`): projected-gradient iterations on the simplex, finished by
    an exact active-set solve that is kept only when it verifiably satisfies the optimality
    conditions; the official code's Frank-Wolfe iterations stop at a tolerance instead.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      normalization: ``"none"`` (default), ``"l2"``, ``"loss"`` or ``"loss+"``.
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.
      solver: ``"jaxopt"``, ``"apg"`` or ``"enumerate"`` (K ≤ 8, loop-free; see
        :func:`camegrad_jax.solve_dual`).
      solver_tol: tolerance of the iterations (default by dtype).
      solver_maxiter: iteration cap of the iterations.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with an :class:`MGDAState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import mgda
      >>> tx = mgda(num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"]  # the point of the segment nearest 0
      Array([0.8, 0.4], dtype=float32)

    References:
      Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018.
      https://arxiv.org/abs/1810.04650 (code: https://github.com/isl-org/MultiObjectiveOptimization)

      Désidéri, Multiple-gradient descent algorithm (MGDA) for multiobjective optimization,
      Comptes Rendus Mathematique 2012.
    """
    _validation.check_choice(normalization, NORMALIZATIONS, "normalization")
    hyperparams_valid = _validation.all_valid(
        _dual.check_solver_options(solver, solver_tol, solver_maxiter),
    )

    return stacked_gradient_transformation(
        mgda_weighting(
            normalization=normalization,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        ),
        name="mgda",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
