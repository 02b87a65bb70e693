r"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020), entry by entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._elementwise import elementwise_weighting_transformation


class GradDropState(NamedTuple):
    """GradDrop's own state (``MultiTaskState.method_state``)."""

    key: jax.Array  # PRNG key of the next step's uniform draws.


def _check_leak(leak: Any) -> _validation.Verdict:
    """A leak is one number in [0, 1] for every task, or a 1-D sequence of them (one per task)."""
    if leak is None:
        return True
    if _validation.is_traced(leak):
        return jnp.all((leak >= 0) & (leak <= 1))
    if np.ndim(leak) == 0:
        return _validation.check_unit_interval(leak, "leak")
    values = np.asarray(leak)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            "Parameter `leak` should be a float in [0, 1] or a non-empty 1-D sequence of them, one "
            f"per task. Found `leak = {leak!r}`."
        )
    if np.iscomplexobj(values) or not np.all((values >= 0) & (values <= 1)):
        raise ValueError(
            f"Parameter `leak` should hold floats in [0, 1]. Found `leak = {values.tolist()!r}`."
        )
    return True


def graddrop(
    *,
    f: Callable[[jax.Array], jax.Array] | None = None,
    leak: Any = None,
    seed: int = 0,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GradDrop as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i`, every entry p gets the positive
    sign purity :math:`P_p = \tfrac12 \big(1 + \sum_i h_{i,p} / \sum_i |h_{i,p}|\big)` (1 when
    all tasks push it up, 0 when all push it down), a fresh uniform draw :math:`U_p`, and keeps
    the tasks of one sign only (lines 10-15 of the paper's Algorithm 1):

    .. math::

      M_{i,p} = [f(P_p) > U_p]\,[h_{i,p} > 0] + [f(P_p) < U_p]\,[h_{i,p} < 0], \qquad
      g_p = \sum_i \big(\ell_i + (1 - \ell_i) M_{i,p}\big)\, h_{i,p} .

    The positive side wins with probability :math:`f(P_p)`: where the tasks agree nothing is
    dropped; where they conflict, the update follows one side in proportion to its share. The
    leak :math:`\ell_i \in [0, 1]` lets that fraction of task i's gradient through always
    (ℓ = 1: linear scalarization). The draws come from a PRNG key kept in the state, split at
    every step and then once per shared leaf; for a given key the update is scale-equivariant
    and invariant to the order of the tasks. It makes no promise of non-conflict.

    The state's ``coefficients`` are each task's effective weight (see
    :mod:`camegrad_jax._elementwise`): :math:`\lambda_i` times the share of
    :math:`\|g_i\|^2` that passed.

    Deviations from the official code: the paper (and LibMTL's ``GradDrop``) applies the
    dropout to the gradients with respect to a shared layer's *activations*, summed over the
    batch after multiplication by the activations' signs; here, as in torchjd's ``GradDrop``,
    it acts on the entries of the stacked parameter gradients (restrict it with
    ``shared_mask``). Where every task's entry is 0, P is ½ instead of torchjd's 0/0 (the
    entry is 0 either way); LibMTL adds 1e-7 to the denominator instead.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      f: monotonically increasing function applied to P (default: the identity), as torchjd's
        ``f``; it must map arrays to arrays elementwise and be traceable.
      leak: ℓ, one float in [0, 1] for every task or a 1-D sequence of K of them (default 0:
        no leak), as torchjd's ``leak`` (a tensor of K values) and LibMTL's (one value).
      seed: integer seed of the PRNG key.
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the leaves GradDrop acts on;
        the others receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` with a :class:`GradDropState` as ``method_state``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> tx = cg.graddrop(seed=0)
      >>> grads = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])  # torchjd's J_base
      >>> updates, state = tx.update(grads, tx.init(jnp.zeros(3)))
      >>> bool(updates[0] in (-4.0, 6.0)), updates[1:]  # one side of the conflict; agreement kept
      (True, Array([2., 2.], dtype=float32))

    References:
      Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
      Dropout, NeurIPS 2020. https://arxiv.org/abs/2010.06808
    """
    _loss_values.check_integer(seed, "seed")
    if f is not None and not callable(f):
        raise TypeError(f"Parameter `f` should be a callable or None. Found `f = {f!r}`.")
    valid = _check_leak(leak)
    purity_map = (lambda purity: purity) if f is None else f

    def init_method_state(k: int) -> GradDropState:
        del k
        return GradDropState(key=jax.random.PRNGKey(seed))

    def weighting(weighted: list[jax.Array], state: GradDropState):
        k = weighted[0].shape[0]
        leaks = _leak_vector(leak, k, weighted[0].dtype)
        key, draw = jax.random.split(state.key)
        factors = []
        for h, leaf_key in zip(weighted, jax.random.split(draw, len(weighted)), strict=True):
            total, magnitude = jnp.sum(h, axis=0), jnp.sum(jnp.abs(h), axis=0)
            purity = 0.5 * (1 + total / jnp.where(magnitude > 0, magnitude, 1.0))
            mapped = purity_map(purity)
            uniform = jax.random.uniform(leaf_key, purity.shape, h.dtype)
            keep = ((mapped > uniform) & (h > 0)) | ((mapped < uniform) & (h < 0))
            leak_i = leaks.reshape((k,) + (1,) * (h.ndim - 1))
            factors.append(leak_i + (1 - leak_i) * keep.astype(h.dtype))
        return factors, GradDropState(key=key)

    return elementwise_weighting_transformation(
        weighting,
        init_method_state,
        name="graddrop",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        hyperparams_valid=valid,
    )


def _leak_vector(leak: Any, num_tasks: int, dtype: Any) -> jax.Array:
    """The leak as a (K,) array, checked against the task axis seen at update time."""
    if leak is None:
        return jnp.zeros((num_tasks,), dtype)
    leaks = jnp.asarray(leak, dtype)
    if leaks.ndim == 0:
        return jnp.full((num_tasks,), leaks)
    if leaks.shape != (num_tasks,):
        raise ValueError(
            f"Parameter `leak` has shape {leaks.shape}, but the stacked gradients carry a task "
            f"axis of size K = {num_tasks}."
        )
    return leaks
