r"""STGU: Selective Task Group Updates, as a training step.

Jeong & Yoon (ICLR 2025) update the shared model one *task group* at a time within each batch:
the tasks are grouped by their proximal inter-task affinity, and each group's loss takes its own
optimizer step, at the parameters the previous group's step left. The affinity of a source task
s for a target task t is an exponential moving average of the relative change
:math:`1 - L_t(\text{after}) / L_t(\text{before})` of t's loss between consecutive group
updates on the same batch, and the groups come from affinity propagation on that matrix.

This is not an optax transformation (see ``docs/methods-not-shipped.md``): each group's
gradient is taken at different parameters, on a forward pass only the training loop can run,
and the optimizer advances once per group. :func:`stgu` therefore returns a training step,
``step(params, state, *loss_args) -> (params, state, info)``, that runs the whole sequence in
one jittable function: the groups are a padded list of K slots (group labels 0..M−1, M ≤ K),
``lax.scan`` runs the slots and ``lax.cond`` skips the empty ones, and the clustering is
:func:`camegrad_jax._affinity_propagation.affinity_propagation`, an on-device port of the
scikit-learn ``AffinityPropagation`` the official code calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from camegrad_jax import _loss_values, _validation
from camegrad_jax._affinity_propagation import affinity_propagation

# The official `next_group` tries affinity propagation this many times, with `convergence_iter`
# raised by 100 after each try that finds no cluster, before it keeps the current groups.
_CLUSTERING_TRIES = 10
_CONVERGENCE_ITER_STEP = 100


class STGUState(NamedTuple):
    """The state of an STGU training loop (sized by the first step unless ``num_tasks`` is
    given)."""

    opt_state: Any  # The optimizer's state; it advances once per group update.
    affinity: jax.Array  # (K, K) float32: A[s, t], the EMA affinity of source s for target t.
    groups: jax.Array  # (K,) int32: each task's group, labels 0..num_groups-1.
    num_groups: jax.Array  # () int32: M, the number of groups.
    count: jax.Array  # () int32: steps done.
    key: jax.Array  # PRNG key of the next step's group order and clustering noise.


class STGUStepInfo(NamedTuple):
    """What one step did."""

    losses: jax.Array  # (K,): the task losses at the step's starting parameters.
    order: jax.Array  # (max(K, 2),) int32: the group of each update slot, in order.
    num_updates: jax.Array  # () int32: the slots used (M, or 2 when there is one group).


class STGU(NamedTuple):
    """An STGU training loop: ``init(params) -> state`` and
    ``step(params, state, *args, **kwargs) -> (params, state, info)``."""

    init: Callable[[Any], STGUState]
    step: Callable[..., tuple[Any, STGUState, STGUStepInfo]]


def _check_arguments(
    loss_fn, optimizer, affinity_decay, warmup_steps, preference, normalize_group_loss,
    damping, convergence_iter, max_iter, seed, task_weights, num_tasks,
) -> int | None:  # fmt: skip
    if not callable(loss_fn):
        raise TypeError(f"Parameter `loss_fn` should be callable. Found `loss_fn = {loss_fn!r}`.")
    if not all(callable(getattr(optimizer, name, None)) for name in ("init", "update")):
        raise TypeError(
            "Parameter `optimizer` should be an optax GradientTransformation (with `init` and "
            f"`update`). Found `optimizer = {optimizer!r}`."
        )
    _validation.check_positive(affinity_decay, "affinity_decay")
    if affinity_decay > 1.0:
        raise ValueError(
            "Parameter `affinity_decay` should be a float in (0, 1]. "
            f"Found `affinity_decay = {affinity_decay!r}`."
        )
    _loss_values.check_integer(warmup_steps, "warmup_steps")
    if warmup_steps < 0:
        raise ValueError(
            f"Parameter `warmup_steps` should be a non-negative integer. "
            f"Found `warmup_steps = {warmup_steps!r}`."
        )
    if preference is not None:
        _loss_values.check_finite(preference, "preference")
    if not isinstance(normalize_group_loss, bool):
        raise TypeError(
            "Parameter `normalize_group_loss` should be a bool. "
            f"Found `normalize_group_loss = {normalize_group_loss!r}`."
        )
    _validation.check_unit_interval(damping, "damping")
    if not 0.5 <= damping < 1.0:
        raise ValueError(
            f"Parameter `damping` should be a float in [0.5, 1). Found `damping = {damping!r}`."
        )
    _validation.check_positive_int(convergence_iter, "convergence_iter")
    _validation.check_positive_int(max_iter, "max_iter")
    _loss_values.check_integer(seed, "seed")
    _validation.check_task_weights(task_weights)
    return _validation.resolve_num_tasks(num_tasks, task_weights)


def update_affinity(
    affinity: jax.Array,
    in_group: jax.Array,
    losses: jax.Array,
    previous_losses: jax.Array,
    decay: float,
) -> jax.Array:
    """The official ``form_task_affinity.update``: the rows of the group's tasks move toward
    the relative loss changes between two consecutive forward passes of a batch.

    With :math:`r_t = (1 - L_t / L_t^{\\mathrm{prev}}) / |G|` for the tasks whose previous loss is
    positive, each source s in the group G and target t gets
    :math:`A_{st} \\leftarrow (1-\\beta) A_{st} + \\beta v_{st}` where :math:`v_{st} = r_t` for t
    outside G; inside G, :math:`v_{ss} = r_s` only when :math:`r_s \\ge 0`, and for t ≠ s,
    :math:`v_{st} = r_t` when :math:`r_s r_t \\ge 0`, else :math:`-\\max(r_s, r_t)`.
    """
    num_tasks = affinity.shape[0]
    valid = previous_losses > 0
    change = (1 - losses / jnp.where(valid, previous_losses, 1)) / jnp.sum(in_group)
    source, target = change[:, None], change[None, :]
    same_task = jnp.eye(num_tasks, dtype=bool)
    within = jnp.where(
        same_task, target, jnp.where(source * target >= 0, target, -jnp.maximum(source, target))
    )
    value = jnp.where(in_group[None, :], within, target)
    updated_within = valid[:, None] & (~same_task | (target >= 0))
    updated_target = jnp.where(in_group[None, :], updated_within, True)
    updated = in_group[:, None] & valid[None, :] & updated_target
    return jnp.where(updated, (1 - decay) * affinity + decay * value, affinity)


def affinity_groups(
    affinity: jax.Array,
    key: jax.Array,
    *,
    preference: float | None = None,
    damping: float = 0.5,
    convergence_iter: int = 50,
    max_iter: int = 200,
) -> tuple[jax.Array, jax.Array]:
    """The official ``next_group``'s clustering: affinity propagation of the affinity matrix
    with each column divided by its diagonal entry, then symmetrised.

    Up to 10 tries, ``convergence_iter`` raised by 100 after each try that returns no cluster;
    as in scikit-learn 1.0.2 (the official environment's), a try whose messages did not
    converge returns none.

    Returns:
      ``(labels, num_groups)``: (K,) int32 labels and the number of groups, 0 when no try
      found a cluster or the normalised matrix is not finite (the caller keeps its groups).
    """
    normalised = affinity / jnp.diagonal(affinity)[None, :]
    similarities = (normalised + normalised.T) / 2
    finite = jnp.all(jnp.isfinite(similarities))
    similarities = jnp.where(finite, similarities, 0)

    def attempt(carry):
        tries, _, _ = carry
        result = affinity_propagation(
            similarities,
            jax.random.fold_in(key, tries),
            preference=preference,
            damping=damping,
            convergence_iter=convergence_iter + _CONVERGENCE_ITER_STEP * tries,
            max_iter=max_iter,
        )
        # scikit-learn 1.0.2, which the official environment pins, returns no cluster when the
        # messages did not converge (later versions return the last exemplars).
        return tries + 1, result.labels, jnp.where(result.converged, result.num_clusters, 0)

    def searching(carry):
        tries, _, found = carry
        return (tries < _CLUSTERING_TRIES) & (found == 0)

    num_tasks = affinity.shape[0]
    start = (jnp.int32(0), jnp.full(num_tasks, -1, jnp.int32), jnp.int32(0))
    _, labels, num_groups = lax.while_loop(searching, attempt, start)
    return labels, jnp.where(finite, num_groups, 0)


def _loss_shape(
    loss_fn: Callable[..., Any], params: Any, args: tuple, kwargs: dict
) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``loss_fn``'s output, checked to be a (K,) floating vector."""
    shape = jax.eval_shape(loss_fn, params, *args, **kwargs)
    if not hasattr(shape, "shape") or len(shape.shape) != 1 or shape.shape[0] < 1:
        raise ValueError(
            "STGU's `loss_fn` should return the (K,) vector of task losses. Found "
            f"{getattr(shape, 'shape', shape)}."
        )
    if not jnp.issubdtype(shape.dtype, jnp.floating):
        raise TypeError(
            f"STGU's `loss_fn` should return floating-point losses. Found dtype {shape.dtype}."
        )
    return shape


def stgu(
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    affinity_decay: float = 0.001,
    warmup_steps: int = 100,
    preference: float | None = None,
    normalize_group_loss: bool = False,
    damping: float = 0.5,
    convergence_iter: int = 50,
    max_iter: int = 200,
    seed: int = 0,
    task_weights: Any = None,
    num_tasks: int | None = None,
) -> STGU:
    r"""Selective Task Group Updates: a training step that updates the parameters once per
    group of tasks.

    At step n, with the groups :math:`G_1 \dots G_M` (each task in one group) and the batch's
    losses :math:`L_t(\theta) =` ``loss_fn(θ, *args)[t]``, the groups are visited in a random
    order :math:`\pi` and, from :math:`\theta^{(0)} = \theta_n`,

    .. math::

      \theta^{(m)} = \theta^{(m-1)} + \mathrm{opt}\Big(\nabla_\theta \sum_{t \in G_{\pi_m}}
      \lambda_t L_t(\theta^{(m-1)})\Big), \qquad \theta_{n+1} = \theta^{(M)},

    (a lone group is updated twice), with the sum divided by :math:`|G|` when
    ``normalize_group_loss``. After the m-th forward pass (m ≥ 2), the rows of the tasks of
    :math:`G_{\pi_m}` in the affinity matrix A move, at rate ``affinity_decay``, toward the
    relative loss changes :math:`1 - L_t(\theta^{(m-1)}) / L_t(\theta^{(m-2)})` (see
    :func:`update_affinity` for the signs). The groups: the K singletons up to step
    ``warmup_steps`` (inclusive), then, at every step, affinity propagation on
    :math:`S = \tfrac12 (\hat A + \hat A^\top)`, :math:`\hat A_{st} = A_{st} / A_{tt}`
    (:func:`affinity_groups`), which keeps the previous groups when it finds none.

    The optimizer runs once per group update, so its step count and any schedule inside it
    advance M times per step. The official code steps its learning-rate scheduler once per
    batch: to do the same, build the optimizer with ``optax.inject_hyperparams`` and set its
    learning rate from ``state.count`` before each step.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs)`` returns the (K,) task losses.
      optimizer: the optax optimizer each group update applies (e.g. ``optax.adam(2e-5)``).
      affinity_decay: β in (0, 1], the rate of the affinity's moving average (official:
        ``affin_decay``, 0.001 on NYUv2 and PASCAL-Context, 0.0001 on Taskonomy).
      warmup_steps: the steps 0, …, ``warmup_steps`` keep the singleton groups (official:
        ``prepos``, 100).
      preference: affinity propagation's preference; None takes the median similarity.
      normalize_group_loss: divide each group's loss by its size (official: ``group_norm``).
      damping, convergence_iter, max_iter: affinity propagation's (official: 0.5, 50, 200).
      seed: integer seed of the PRNG key of the group orders and the clustering's noise.
      task_weights: static positive weights λ: a group's loss is :math:`\sum_{t \in G} λ_t L_t`
        (official: ``loss_weights``); the affinity reads the unweighted losses.
      num_tasks: K, optional: the first step sizes the state otherwise (pass it to run the
        step under ``lax.scan``, whose carry may not change shape).

    Returns:
      An :class:`STGU`: ``init(params)`` and ``step(params, state, *args, **kwargs)``, which
      returns the new parameters, the new :class:`STGUState` and an :class:`STGUStepInfo`.
      ``step`` is a pure function: wrap it in ``jax.jit``.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> import camegrad_jax as cg
      >>> targets = jnp.array([[1.0, -1.0], [1.0, -0.5], [-2.0, 1.0], [-1.5, 1.0]])
      >>> def loss_fn(params, targets):
      ...     return jnp.sum((params - targets) ** 2, axis=1)
      >>> loop = cg.stgu(loss_fn, optax.sgd(0.1), warmup_steps=1, affinity_decay=0.5)
      >>> params, state = jnp.zeros(2), loop.init(jnp.zeros(2))
      >>> step = jax.jit(loop.step)
      >>> for _ in range(10):
      ...     params, state, info = step(params, state, targets)
      >>> state.groups.tolist(), int(state.num_groups), int(info.num_updates)
      ([0, 0, 0, 1], 2, 2)

    References:
      Jeong & Yoon, Selective Task Group Updates for Multi-Task Optimization, ICLR 2025.
      https://arxiv.org/abs/2502.11986 ; official code: https://github.com/wooseong97/sel-update-mtl

    Deviations from the official code (``utils/train_utils.py``: ``train_phase_affinity``,
    ``form_task_affinity``): none in the updates, the affinity or the grouping rule. The
    official code reads the losses of group m's forward pass (before its step) and credits the
    change since the previous forward pass, caused by group m − 1's step, to group m's tasks;
    that attribution is kept. Where the normalised affinity is not finite (a zero diagonal
    entry), scikit-learn raises and the official run stops; here the previous groups are kept,
    as when the clustering finds no cluster. As scikit-learn 1.0.2 (the official environment's),
    messages that did not converge give no cluster. The random group order and the clustering's
    tie-breaking noise come from JAX's PRNG instead of Python's and NumPy's global generators.
    The affinity propagation runs on device in float32, not in float64 on the host, so a
    near-degenerate clustering can come out differently. optax keeps one optimizer step count
    for all parameters, where PyTorch's Adam starts a parameter's count at its first gradient
    (parameters the first group's loss does not reach start one step later there).
    """
    num_tasks = _check_arguments(
        loss_fn, optimizer, affinity_decay, warmup_steps, preference, normalize_group_loss,
        damping, convergence_iter, max_iter, seed, task_weights, num_tasks,
    )  # fmt: skip

    def fresh_groups(k: int, opt_state: Any, count: Any, key: jax.Array) -> STGUState:
        return STGUState(
            opt_state=opt_state,
            affinity=jnp.zeros((k, k), jnp.float32),
            groups=jnp.arange(k, dtype=jnp.int32),
            num_groups=jnp.int32(k),
            count=jnp.asarray(count, jnp.int32),
            key=key,
        )

    def init_fn(params: Any) -> STGUState:
        return fresh_groups(num_tasks or 0, optimizer.init(params), 0, jax.random.PRNGKey(seed))

    def next_groups(state: STGUState, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        def clustered():
            labels, found = affinity_groups(
                state.affinity,
                key,
                preference=preference,
                damping=damping,
                convergence_iter=convergence_iter,
                max_iter=max_iter,
            )
            return (
                jnp.where(found > 0, labels, state.groups),
                jnp.where(found > 0, found, state.num_groups),
            )

        return lax.cond(
            state.count <= warmup_steps, lambda: (state.groups, state.num_groups), clustered
        )

    def step_fn(params: Any, state: STGUState, *args: Any, **kwargs: Any):
        loss_shape = _loss_shape(loss_fn, params, args, kwargs)
        k = loss_shape.shape[0]
        if state.affinity.shape[0] == 0:
            state = fresh_groups(k, state.opt_state, state.count, state.key)
        elif state.affinity.shape[0] != k:
            raise ValueError(
                f"`loss_fn` returned K = {k} losses, but the STGU state holds "
                f"{state.affinity.shape[0]} tasks."
            )
        key, order_key, cluster_key = jax.random.split(state.key, 3)
        groups, num_groups = next_groups(state, cluster_key)

        # A uniformly random order of the labels 0..M-1 in the first M of K entries.
        scores = jax.random.uniform(order_key, (k,))
        order = jnp.argsort(jnp.where(jnp.arange(k) < num_groups, scores, jnp.inf))
        num_slots = max(k, 2)
        order = jnp.pad(order, (0, num_slots - k)).astype(jnp.int32)
        # A lone group takes two updates, as the official `train_group * 2`.
        order = jnp.where(num_groups == 1, 0, order)
        num_updates = num_groups + (num_groups == 1)

        def group_update(carry, group):
            params, opt_state, affinity, previous = carry
            in_group = groups == group

            def group_loss(p):
                losses = loss_fn(p, *args, **kwargs)
                weights = _validation.weights_vector(task_weights, k, losses.dtype)
                total = jnp.sum(jnp.where(in_group, weights * losses, 0))
                if normalize_group_loss:
                    total = total / jnp.sum(in_group).astype(total.dtype)
                return total, losses

            (_, losses), grads = jax.value_and_grad(group_loss, has_aux=True)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            losses32 = losses.astype(jnp.float32)
            affinity = update_affinity(affinity, in_group, losses32, previous, affinity_decay)
            return (params, opt_state, affinity, losses32), losses

        def slot(carry, inputs):
            group, active = inputs
            return lax.cond(
                active,
                group_update,
                lambda carry, group: (carry, jnp.full((k,), jnp.nan, loss_shape.dtype)),
                carry,
                group,
            )

        # The official `init_pre_loss`: no previous losses at the start of a batch.
        start = (params, state.opt_state, state.affinity, jnp.full((k,), -1.0, jnp.float32))
        active = jnp.arange(num_slots) < num_updates
        (params, opt_state, affinity, _), slot_losses = lax.scan(slot, start, (order, active))
        new_state = STGUState(
            opt_state=opt_state,
            affinity=affinity,
            groups=groups,
            num_groups=num_groups,
            count=state.count + 1,
            key=key,
        )
        return params, new_state, STGUStepInfo(slot_losses[0], order, num_updates)

    return STGU(init_fn, step_fn)
