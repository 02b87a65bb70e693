r"""CAME-Grad: Conflict-Averse Magnitude-Enhanced Gradient Descent.

The whole algorithm, as the paper writes it, on weighted task gradients :math:`h_i = \lambda_i g_i`
with joint gradient :math:`g_{lin} = \sum_i h_i` and mean :math:`g_0 = g_{lin} / K`:

* **Stage 1 — conflict-averse direction rectification** (Eq. 8–10, CAGrad):
  :math:`d = \arg\max_{\|d - g_0\| \le c\|g_0\|} \min_i \langle h_i, d\rangle`, through the dual on
  the simplex (:mod:`camegrad_jax._dual`).
* **Stage 2 — magnitude-enhanced energy injection** (Eq. 11–12):
  :math:`M = \gamma \|g_{lin}\|`, :math:`\tilde g = M\, d / \|d\|`.
* **Stage 3 — adaptive gradient fusion** (Eq. 13–14):
  :math:`g = (1 - \alpha)\, \tilde g + \alpha\, \gamma\, g_{lin}`.

Every stage is linear in the :math:`h_i`, so the update is :math:`g = \sum_i \beta_i h_i` with β
computed from the K × K Gram matrix alone (:func:`camegrad_weights`). The transformation makes one
pass over the stacked gradients to form G and one to form the weighted sum.
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
    split_leaves,
    stacked_gradient_transformation,
    stored,
)
from camegrad_jax._conflict_averse import conflict_averse_direction
from camegrad_jax._diagnostics import quadratic_norm

Enhance = bool | Literal["noise"]


class CameGradWeights(NamedTuple):
    """The K × K part of CAME-Grad: everything but the two passes over the gradients."""

    coefficients: jax.Array  # (K,) β ⊙ λ: the update is Σ_i coefficients_i g_i (raw gradients).
    dual_weights: jax.Array  # (K,) Stage 1's w* on the simplex.
    direction_norm: jax.Array  # () ‖d‖, Stage 1's rectified direction.
    joint_norm: jax.Array  # () ‖g_lin‖.
    noise_norm: jax.Array  # () expected norm of the noise to add (enhance="noise" only, else 0).
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () the iterative solver's residual.
    duality_gap: jax.Array  # () certified sub-optimality of d on the trace-normalised scale.


def _noise_floor(coefficients: jax.Array, gram: jax.Array) -> jax.Array:
    # ‖Σ c_i h_i‖² computed from G carries round-off of about eps·(Σ|c_i|‖h_i‖)²: a norm below
    # a few sqrt(eps) times that scale is indistinguishable from 0.
    eps = jnp.finfo(gram.dtype).eps
    scale = jnp.abs(coefficients) @ jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    return 4 * jnp.sqrt(eps) * scale


def camegrad_weights(
    gram: jax.Array,
    *,
    c: float | jax.Array = 0.5,
    gamma: float | jax.Array = 1.5,
    alpha: float | jax.Array = 0.2,
    task_weights: Any = None,
    rectify: bool = True,
    enhance: Enhance = True,
    fuse: bool = True,
    init_weights: jax.Array | None = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
) -> CameGradWeights:
    r"""CAME-Grad's coefficients from the Gram matrix of the raw task gradients.

    Args:
      gram: (K, K) matrix :math:`G_{ij} = \langle g_i, g_j\rangle` of the *unweighted* task
        gradients, float32 or float64.
      c: trust-region radius of Stage 1, ≥ 0 (``rho`` in the reference code).
      gamma: gain of Stage 2, ≥ 0 (``kappa``).
      alpha: fusion coefficient of Stage 3, in [0, 1] (``nu``).
      task_weights: (K,) static weights λ (default all ones).
      rectify, enhance, fuse: switch Stages 1, 2, 3 off as the paper's ablations do;
        ``enhance="noise"`` is the paper's Setting B (see :func:`camegrad`).
      init_weights: (K,) warm start for the dual (default uniform).
      solver, solver_tol, solver_maxiter: see :func:`camegrad_jax.solve_dual`.

    Returns:
      :class:`CameGradWeights`; ``coefficients`` already include λ, so the update on the shared
      parameters is :math:`\sum_i \text{coefficients}_i\, g_i`.
    """
    num_tasks = gram.shape[0]
    dtype = gram.dtype
    weights = _validation.weights_vector(task_weights, num_tasks, dtype)
    # Work on G / trace(G): every tolerance below is then relative, so the answer is
    # scale-equivariant from 1e-10 to 1e10 (an absolute ε would set the units).
    normalised, trace = _gram.trace_normalise(_gram.weighted_gram(gram, weights))
    scale = jnp.sqrt(jnp.where(trace > 0, trace, 0.0))
    c, gamma, alpha = (jnp.asarray(v, dtype) for v in (c, gamma, alpha))
    centre = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    ones = jnp.ones((num_tasks,), dtype)
    if init_weights is None:
        init_weights = centre

    # Stage 1: conflict-averse direction rectification, d = Σ_i direction_i h_i.
    if rectify:
        stage1 = conflict_averse_direction(
            normalised,
            c,
            init_weights,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        )
        direction, dual_weights = stage1.coefficients, stage1.dual_weights
        iterations, solver_error, gap = (
            stage1.solver_iterations,
            stage1.solver_error,
            stage1.duality_gap,
        )
    else:
        direction = centre  # Without Stage 1, d = g0.
        dual_weights = init_weights.astype(dtype)
        iterations, solver_error, gap = (
            jnp.asarray(0, jnp.int32),
            jnp.asarray(0.0, dtype),
            jnp.asarray(0.0, dtype),
        )

    # Stage 2: magnitude-enhanced energy injection, target magnitude M = γ‖g_lin‖.
    joint_norm = quadratic_norm(ones, normalised)
    direction_norm = quadratic_norm(direction, normalised)
    target = gamma * joint_norm
    noise_norm = jnp.zeros((), dtype)
    if enhance is True:
        resolvable = direction_norm > _noise_floor(direction, normalised)
        gain = jnp.where(resolvable, target / jnp.where(resolvable, direction_norm, 1.0), 0.0)
        enhanced = gain * direction
        anchor = gamma
    elif enhance == "noise":
        # Setting B: isotropic noise whose expected norm is the energy Stage 2 would inject.
        enhanced = direction
        noise_norm = jnp.maximum(target - direction_norm, 0.0)
        anchor = gamma
    else:
        enhanced = direction  # Without Stage 2: g̃ = d, and Stage 3 anchors on g_lin itself.
        anchor = jnp.asarray(1.0, dtype)

    # Stage 3: adaptive gradient fusion with the (enhanced) joint gradient.
    if fuse:
        beta = (1 - alpha) * enhanced + alpha * anchor * ones
        noise_norm = (1 - alpha) * noise_norm
    else:
        beta = enhanced

    # A non-finite Gram matrix (NaN or inf in the gradients) must poison the whole update, so
    # that a downstream `optax.apply_if_finite` rejects the step; the guards above would
    # otherwise turn part of it into finite numbers.
    beta = jnp.where(jnp.all(jnp.isfinite(gram)), beta, jnp.nan)
    return CameGradWeights(
        coefficients=beta * weights,
        dual_weights=dual_weights,
        direction_norm=direction_norm * scale,
        joint_norm=joint_norm * scale,
        noise_norm=noise_norm * scale,
        solver_iterations=iterations,
        solver_error=solver_error,
        duality_gap=gap,
    )


class CameGradState(NamedTuple):
    """CAME-Grad's own state (``MultiTaskState.method_state``): warm start and Stage 1/2 values."""

    dual_weights: jax.Array  # (K,) float32, w* of the last step; warm start of the next solve.
    direction_norm: jax.Array  # () float32, ‖d‖ of Stage 1.
    noise_norm: jax.Array  # () float32, expected norm of Setting B's noise (0 otherwise).
    solver_iterations: jax.Array  # () int32.
    solver_error: jax.Array  # () float32, the iterative solver's residual.
    duality_gap: jax.Array  # () float32, certified sub-optimality of Stage 1 (relative to tr G).
    key: jax.Array  # PRNG key; consumed only by enhance="noise".


def _check_enhance(enhance: Any) -> None:
    if not (isinstance(enhance, bool) or enhance == "noise"):
        raise ValueError(
            f"Parameter `enhance` should be True, False or 'noise'. Found `enhance = {enhance!r}`."
        )


def camegrad_weighting(
    *,
    c: float = 0.5,
    gamma: float = 1.5,
    alpha: float = 0.2,
    rectify: bool = True,
    enhance: Enhance = True,
    fuse: bool = True,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
    seed: int = 0,
) -> Weighting:
    """CAME-Grad's :class:`~camegrad_jax.Weighting` (see :func:`camegrad`, which checks the
    hyper-parameters): from the Gram matrix of the raw task gradients, the method's state and
    the task weights to coefficients on the raw gradients and the new state."""

    def init_method_state(k: int) -> CameGradState:
        return CameGradState(
            dual_weights=jnp.full((k,), 1.0 / k, jnp.float32),
            direction_norm=jnp.zeros((), jnp.float32),
            noise_norm=jnp.zeros((), jnp.float32),
            solver_iterations=jnp.zeros((), jnp.int32),
            solver_error=jnp.zeros((), jnp.float32),
            duality_gap=jnp.zeros((), jnp.float32),
            key=jax.random.PRNGKey(seed),
        )

    def weighting(gram, state: CameGradState, weights, **extra_args) -> WeightingResult:
        del extra_args  # Tolerated, as by any chain member that does not need them.
        result = camegrad_weights(
            gram,
            c=c,
            gamma=gamma,
            alpha=alpha,
            task_weights=weights,
            rectify=rectify,
            enhance=enhance,
            fuse=fuse,
            init_weights=state.dual_weights,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
        )
        new_state = CameGradState(
            dual_weights=result.dual_weights,
            direction_norm=result.direction_norm,
            noise_norm=result.noise_norm,
            solver_iterations=result.solver_iterations,
            solver_error=result.solver_error,
            duality_gap=result.duality_gap,
            key=state.key,
        )
        # A non-finite step must not leave NaN in the warm start of the next one.
        coefficients, new_state = _gram.guard_non_finite(
            gram, result.coefficients, new_state, state
        )
        return WeightingResult(coefficients, new_state)

    return Weighting(init_method_state, weighting)


def camegrad(
    c: float = 0.5,
    gamma: float = 1.5,
    alpha: float = 0.2,
    *,
    task_weights: Any = None,
    num_tasks: int | None = None,
    rectify: bool = True,
    enhance: Enhance = True,
    fuse: bool = True,
    shared_mask: _tree.MaskOrFn = None,
    solver: _dual.Solver = "jaxopt",
    solver_tol: float | None = None,
    solver_maxiter: int = 200,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""CAME-Grad as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i`, :math:`g_{lin} = \sum_i h_i` and
    :math:`g_0 = g_{lin}/K`:

    .. math::

      d &= \arg\max_{\|d - g_0\| \le c \|g_0\|} \; \min_i \langle h_i, d \rangle
        &&\text{(Stage 1, solved as } w^\star = \arg\min_{w\in\Delta_K}
          w^\top G b + c\|g_0\| \sqrt{w^\top G w}\text{)} \\
      \tilde g &= \gamma \|g_{lin}\| \, d / \|d\| &&\text{(Stage 2)} \\
      g &= (1 - \alpha)\, \tilde g + \alpha \, \gamma\, g_{lin} &&\text{(Stage 3)}

    and the parameters move by :math:`-\eta g` once a following optimizer (e.g. Adam) has
    processed g.

    Decisions where the paper is ambiguous (the algorithm page, ``docs/algorithm.md``, gives
    the reasons):

    * Stage 1 works on the *weighted* gradients, so ``c = 0`` gives the linear-scalarization
      direction exactly; with ``c = 0, gamma = 1`` the update is :math:`g_{lin}` for any α.
    * Stage 3's "magnitude-enhanced original joint gradient" is :math:`\gamma g_{lin}`, of the
      same norm as :math:`\tilde g`; without Stage 2 the anchor is :math:`g_{lin}`.
    * Setting B (``enhance="noise"``): Stage 2 is replaced by isotropic Gaussian noise on the
      shared parameters whose expected norm is :math:`\max(M - \|d\|, 0)`, the energy Stage 2
      would have injected; Stage 3 keeps the :math:`\gamma g_{lin}` anchor.
    * Every guard is relative (the dual is solved on G / trace G), never an absolute ε.
    * Where 0 lies in the convex hull of the gradients and the closed-form recovery
      :math:`g_0 + r g_w/\|g_w\|` is 0/0 (e.g. a task with zero gradient, or exactly opposite
      gradients with c ≥ 1), every d of the trust region that conflicts with no task is optimal;
      d is the one nearest g0 (the reference CAGrad code returns g0 itself). Where ‖d‖ is below
      round-off, Stage 2 injects nothing and the update is α γ g_lin.

    This transformation must be **first** in a chain: its input has a leading task axis that its
    output does not, like ``optax.contrib.differentially_private_aggregate``. ``init(params)``
    sees the parameters without a task axis. Wrap the *following* optimizer for gradient
    accumulation or finite checks, e.g.
    ``optax.chain(camegrad(...), optax.MultiSteps(optax.adam(1e-3), 4).gradient_transformation())``.

    Args:
      c: trust-region radius of Stage 1, ≥ 0 (paper: 0.1–0.5; ``rho`` in the reference code).
      gamma: Stage 2 gain, ≥ 0 (paper: 1.0–2.0; ``kappa``).
      alpha: Stage 3 fusion coefficient in [0, 1] (paper: 0.1–0.9; ``nu``).
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: without it (or ``task_weights``) the state is sized by the first
        stacked gradients, so a jitted step compiles twice; pass it for ``lax.scan`` over steps,
        whose carry may not change shape.
      rectify: Stage 1 on (False: d = g0).
      enhance: Stage 2 on (False: g̃ = d; ``"noise"``: Setting B).
      fuse: Stage 3 on (False: g = g̃).
      shared_mask: optional pytree of bools (or a callable returning one, as in
        ``optax.masked``) marking the shared leaves. G and β come from the shared leaves; the
        other leaves receive the linear-scalarization gradient Σ λ_i g_i.
      solver: ``"jaxopt"`` (jaxopt ``ProjectedGradient``), ``"apg"`` (jaxopt-free) or
        ``"enumerate"`` (K ≤ 8: exact and loop-free, every face of the simplex at once; prefer it
        on accelerators, where the iterative solvers' while loops may sync with the host).
      solver_tol: tolerance of the dual's iterations (default by dtype).
      solver_maxiter: iteration cap of the dual's iterations.
      seed: PRNG seed of Setting B's noise.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. ``update(task_updates, state, params=None,
      **extra_args)`` takes a pytree whose leaves have shape ``(K, *param_shape)`` and returns
      updates shaped like the parameters, in the input dtype. Unknown extra arguments are
      ignored. The state is a :class:`MultiTaskState`: ``coefficients`` and ``stats`` (cosine
      similarities, conflict flag, ‖g_lin‖, ‖update‖, magnitude-collapse ratio) of the last
      step, and a :class:`CameGradState` (dual weights, ‖d‖, solver iterations and error) as
      ``method_state``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import camegrad_jax as cg
      >>> params = {"w": jnp.array([1.0, -1.0])}
      >>> def losses(p):  # two tasks that pull w in different directions
      ...     return jnp.stack([jnp.sum((p["w"] - 1.0) ** 2), jnp.sum((p["w"] + 2.0) ** 2)])
      >>> tx = optax.chain(cg.camegrad(0.5, 1.5, 0.2), optax.sgd(0.05))
      >>> state = tx.init(params)
      >>> values, grads = cg.task_gradients(losses, params)
      >>> grads["w"].shape
      (2, 2)
      >>> updates, state = tx.update(grads, state, params)
      >>> updates["w"].shape
      (2,)

    References:
      The Double Dilemma in Multi-Task Radiology Report Generation: A Gradient Dynamics Analysis
      and Solution (CAME-Grad), ICML 2026. https://github.com/vpsg-research/CAME-Grad

      Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021.
      https://arxiv.org/abs/2110.14048
    """
    _validation.check_task_weights(task_weights)
    _check_enhance(enhance)
    hyperparams_valid = _validation.all_valid(
        _validation.check_non_negative(c, "c"),
        _validation.check_non_negative(gamma, "gamma"),
        _validation.check_unit_interval(alpha, "alpha"),
        _dual.check_solver_options(solver, solver_tol, solver_maxiter),
    )

    transformation = stacked_gradient_transformation(
        camegrad_weighting(
            c=c,
            gamma=gamma,
            alpha=alpha,
            rectify=rectify,
            enhance=enhance,
            fuse=fuse,
            solver=solver,
            solver_tol=solver_tol,
            solver_maxiter=solver_maxiter,
            seed=seed,
        ),
        name="camegrad",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=hyperparams_valid,
    )
    if enhance == "noise":
        return _with_setting_b_noise(transformation, shared_mask)
    return transformation


def _with_setting_b_noise(
    inner: optax.GradientTransformationExtraArgs, shared_mask: _tree.MaskOrFn
) -> optax.GradientTransformationExtraArgs:
    """Setting B: ``inner``'s update plus isotropic noise on the shared leaves, of the expected
    norm that :func:`camegrad_weights` left in the state (``noise_norm``, float32 there, drawn
    in the gradients' accumulation dtype); ``stats.update_norm`` then measures the noisy update."""

    def update_fn(task_updates, state, params=None, **extra_args):
        updates, state = inner.update(task_updates, state, params, **extra_args)
        split = split_leaves(task_updates, shared_mask, params)
        method_state: CameGradState = state.method_state
        key, noisy = _add_isotropic_noise(
            method_state.key, split.shared_of(updates), method_state.noise_norm.astype(split.dtype)
        )
        # The noise moved the update off span{g_i}: its norm is measured directly.
        norm_sq = sum(jnp.sum(jnp.square(x.astype(split.dtype))) for x in noisy)
        new_state = state._replace(
            method_state=method_state._replace(key=key),
            stats=state.stats._replace(update_norm=stored(jnp.sqrt(norm_sq))),
        )
        return split.replace_shared(updates, noisy), new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def _add_isotropic_noise(key, leaves, expected_norm):
    """Adds N(0, σ²I) over all given leaves with E‖noise‖ ≈ σ√P = expected_norm."""
    size = sum(leaf.size for leaf in leaves)
    sigma = expected_norm / jnp.sqrt(jnp.asarray(max(size, 1), expected_norm.dtype))
    key, *leaf_keys = jax.random.split(key, len(leaves) + 1)
    noisy = [
        (leaf + sigma * jax.random.normal(k, leaf.shape, expected_norm.dtype)).astype(leaf.dtype)
        for k, leaf in zip(leaf_keys, leaves, strict=True)
    ]
    return key, noisy
