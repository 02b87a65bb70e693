r"""Double sampling: task weights from two further, independent gradient samples.

SDMGrad and MoDo step their task weights along :math:`G^{12}\lambda` with the cross Gram matrix
:math:`G^{12}_{ij} = \langle \xi^1_i, \xi^2_j\rangle` of two independent mini-batch gradient
estimates, which makes the weights' stochastic gradient unbiased; the model's update applies the
weights to a third estimate. A transformation sees one stacked gradient per step, so by default
the weights are stepped on the Gram matrix of that same gradient (the deterministic variant).
:func:`with_weight_gradients` lets ``update`` take the two further samples as the extra argument
``weight_gradients=(xi_1, xi_2)``, stacked gradients shaped like the first argument, and hands
the weighting their cross Gram matrix on the shared leaves as ``sample_gram``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _tree

PyTree = Any


def cross_gram(first: list[jax.Array], second: list[jax.Array], dtype: Any) -> jax.Array:
    """(K, K) :math:`\\sum_\\text{leaves} \\langle a_i, b_j\\rangle`, accumulated in ``dtype``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._double_sampling import cross_gram
      >>> a, b = [jnp.array([[1.0, 0.0], [0.0, 1.0]])], [jnp.array([[2.0, 1.0], [0.0, 3.0]])]
      >>> cross_gram(a, b, jnp.float32)
      Array([[2., 0.],
             [1., 3.]], dtype=float32)
    """
    total = None
    for a, b in zip(first, second, strict=True):
        a = a.reshape(a.shape[0], -1).astype(dtype)
        b = b.reshape(b.shape[0], -1).astype(dtype)
        term = a @ b.T
        total = term if total is None else total + term
    return total


def _check_samples(samples: Any, task_updates: PyTree, name: str) -> tuple[PyTree, PyTree]:
    if not isinstance(samples, (tuple, list)) or len(samples) != 2:
        raise ValueError(
            f"{name}: `weight_gradients` should be a pair (xi_1, xi_2) of stacked task gradients "
            f"shaped like the first argument of update. Found {type(samples).__name__}."
        )
    expected = jax.tree.map(jnp.shape, task_updates)
    for sample in samples:
        if jax.tree.map(jnp.shape, sample) != expected:
            raise ValueError(
                f"{name}: each of `weight_gradients` must have the tree structure and shapes of "
                f"the stacked gradients: expected {expected}, found "
                f"{jax.tree.map(jnp.shape, sample)}."
            )
    return samples[0], samples[1]


def with_weight_gradients(
    inner: optax.GradientTransformationExtraArgs,
    *,
    name: str,
    shared_mask: _tree.MaskOrFn,
    always: bool,
) -> optax.GradientTransformationExtraArgs:
    """``inner`` whose ``update`` also accepts ``weight_gradients=(xi_1, xi_2)``.

    The weighting of ``inner`` receives ``sample_gram``, the cross Gram matrix of the two
    samples on the shared leaves, when they are given; when they are not, it receives the Gram
    matrix of the stacked gradients themselves if ``always`` (a weighting that needs it in true
    units, which the shared builder's G is not where it rescales out-of-range gradients), and
    nothing otherwise.
    """

    def update_fn(task_updates, state, params=None, **extra_args):
        samples = extra_args.pop("weight_gradients", None)
        if samples is None and not always:
            return inner.update(task_updates, state, params, **extra_args)
        if samples is None:
            first = second = task_updates
        else:
            first, second = _check_samples(samples, task_updates, name)
        _tree.task_axis_size(task_updates)
        _tree.check_floating(task_updates, name)
        mask = _tree.resolve_mask(shared_mask, task_updates, params)
        first_leaves, second_leaves = jax.tree.leaves(first), jax.tree.leaves(second)
        mask = mask or [True] * len(first_leaves)
        first_leaves = [x for x, shared in zip(first_leaves, mask, strict=True) if shared]
        second_leaves = [x for x, shared in zip(second_leaves, mask, strict=True) if shared]
        dtype = _tree.accumulation_dtype(first_leaves + second_leaves)
        gram = cross_gram(first_leaves, second_leaves, dtype)
        return inner.update(task_updates, state, params, sample_gram=gram, **extra_args)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
