r"""Gram-only mode: the K task gradients are needed only where the Gram matrix is formed.

A stacked-gradient transformation needs two things from the K task gradients: their K × K Gram
matrix G (to compute the coefficients β) and the weighted sum :math:`\sum_i \beta_i g_i`. The
second is the gradient of :math:`\sum_i \beta_i L_i`, one ordinary backward pass. So when G is
taken from a small part of the model — a chosen subset of the shared leaves (e.g. the last shared
layer), or the gradients with respect to a shared *representation* z (MGDA-UB, Sener & Koltun
2018) — the full K × |params| stack is never formed: memory is O(|params|) instead of
O(K·|params|).

This is an approximation of the standard mode: β is computed from the geometry of the subset
(or of ∂L_i/∂z), not of all shared parameters. With the Gram leaves equal to the shared leaves,
it is exact (tested).

With ``low_memory=True`` G is instead the exact Gram matrix of the Gram leaves' gradients,
formed one task at a time by Jacobian products (:func:`camegrad_jax.task_gram`): the standard
mode's update, with no K × |params| stack and a peak memory that does not grow with K. The
transformation then receives a K × K factor R of G (R Rᵀ = G), which is all a Gram-based
method reads of the stacked gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _task_gram

PyTree = Any


def _select(tree: PyTree, mask: PyTree) -> PyTree:
    """Leaves where the mask is True, None elsewhere (a pytree of the same structure)."""
    return jax.tree.map(lambda m, x: x if m else None, mask, tree)


def gram_factor(gram: jax.Array) -> jax.Array:
    r"""A K × K matrix R with :math:`R R^\top = G`, to round-off relative to each entry's scale.

    G is factored as :math:`D^{1/2} C D^{1/2}` with D its diagonal, and the correlation matrix C
    by its eigendecomposition (clipping round-off's negative eigenvalues): the error of
    :math:`(R R^\top)_{ij}` is then of order :math:`\varepsilon \sqrt{G_{ii} G_{jj}}`, as for
    G computed from the gradients, even when the tasks' scales differ by orders of magnitude.
    """
    diagonal = jnp.maximum(jnp.diagonal(gram), 0.0)
    positive = diagonal > 0
    inverse_root = jnp.where(positive, 1.0 / jnp.sqrt(jnp.where(positive, diagonal, 1.0)), 0.0)
    correlation = gram * inverse_root[:, None] * inverse_root[None, :]
    eigenvalues, eigenvectors = jnp.linalg.eigh(correlation)
    factor = eigenvectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))
    return jnp.sqrt(diagonal)[:, None] * factor


def gram_only_gradients(
    loss_fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    transform: optax.GradientTransformation,
    state: Any,
    gram_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    representation: tuple[Callable[..., Any], Callable[..., Any]] | None = None,
    shared_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    task_weights: Any = None,
    low_memory: bool = False,
    **extra_args: Any,
) -> tuple[jax.Array, PyTree, Any]:
    r"""Losses, the multi-task gradient, and the transformation's new state, in Gram-only mode.

    Args:
      loss_fn: ``loss_fn(params, *args) -> (K,)`` task losses (used unless ``representation``).
      params: the parameters.
      *args: passed to the loss functions.
      transform: a stacked-gradient transformation (``camegrad``, ``linear_scalarization``, …)
        built for K tasks. Its ``update`` is called with the stacked gradients of the Gram leaves
        only (or of the representation), which is all it needs to compute β and its diagnostics.
        Methods that perturb the update in parameter space (``camegrad(enhance="noise")``) are
        not supported here: the perturbation would apply to the Gram leaves only.
      state: the transformation's state.
      gram_mask: pytree of bools (or callable on params) selecting the leaves G is formed from;
        default all leaves (then this equals the standard mode, at the standard mode's cost).
      representation: instead of ``gram_mask``, a pair ``(encode, decode)`` with
        ``encode(params, *args) -> z`` and ``decode(params, z, *args) -> (K,) losses``; G is the
        Gram matrix of :math:`\partial L_i / \partial z` (MGDA-UB). ``loss_fn`` is then unused
        and may be None.
      shared_mask: leaves shared by the tasks (default all). They receive
        :math:`\sum_i \beta_i g_i`; the other leaves receive :math:`\sum_i \lambda_i g_i` (a
        second backward pass, as in the standard mode).
      task_weights: λ for the non-shared leaves (default all ones); pass the same weights as the
        transformation's.
      low_memory: form the *exact* Gram matrix of the Gram leaves (``gram_mask``, default all)
        one task at a time (:func:`camegrad_jax.task_gram`), never the K stacked gradients: the
        standard mode's update and diagnostics with peak memory flat in K, for K extra tangent
        passes. Any transformation whose β depends on the gradients only through G works
        (``camegrad``, ``mgda``, ``upgrad``, ``nash_mtl``, …; not ``mmpareto``, whose per-leaf
        scaling needs each leaf's Gram matrix). Not with ``representation``. Build the
        transformation without ``shared_mask`` and pass the mask here (``gram_mask`` and
        ``shared_mask``): it sees a K × K factor of G, not the parameters.
      **extra_args: forwarded to ``transform.update`` (e.g. ``value`` is set to the losses).

    Returns:
      ``(losses, gradient, new_state)``: the gradient is shaped like ``params``; feed it to the
      following optimizer (e.g. ``optax.adam``).

    Examples:
      >>> import jax.numpy as jnp, camegrad_jax as cg
      >>> params = {"trunk": jnp.array([1.0, -1.0]), "last": jnp.array([0.5, 2.0])}
      >>> def losses(p):
      ...     z = p["last"] * jnp.tanh(p["trunk"])
      ...     return jnp.stack([jnp.sum((z - 1) ** 2), jnp.sum((z + 1) ** 2)])
      >>> tx = cg.camegrad(num_tasks=2)
      >>> values, grad, state = cg.gram_only_gradients(
      ...     losses, params, transform=tx, state=tx.init(params),
      ...     gram_mask={"trunk": False, "last": True})
      >>> grad["trunk"].shape
      (2,)
    """
    if (representation is None) == (loss_fn is None):
        raise ValueError("Pass exactly one of `loss_fn` and `representation=(encode, decode)`.")
    if gram_mask is not None and representation is not None:
        raise ValueError("`gram_mask` and `representation` are alternatives; pass one of them.")
    if low_memory and representation is not None:
        raise ValueError(
            "`low_memory=True` forms G over parameter leaves; with `representation` G is already "
            "the small Gram matrix of ∂L_i/∂z. Pass one of them."
        )

    if representation is not None:
        encode, decode = representation
        z, encode_pullback = jax.vjp(lambda p: encode(p, *args), params)
        losses, decode_pullback = jax.vjp(lambda p, z: decode(p, z, *args), params, z)
        eye = jnp.eye(losses.shape[0], dtype=losses.dtype)
        gram_grads = jax.vmap(lambda e: decode_pullback(e)[1])(eye)  # ∂L_i/∂z, stacked
        gram_params = None

        def pullback(cotangent):
            head_grads, z_grad = decode_pullback(cotangent)
            (encoder_grads,) = encode_pullback(z_grad)
            return (jax.tree.map(jnp.add, head_grads, encoder_grads),)

    elif low_memory:
        losses, jvp, vjp, _ = _task_gram.linearize_losses(loss_fn, params, *args)
        mask = gram_mask(params) if callable(gram_mask) else gram_mask
        leaf_mask = None if mask is None else [bool(m) for m in jax.tree.leaves(mask)]
        gram = _task_gram.gram_from_products(losses, jvp, vjp, leaf_mask)
        # The transformation sees K "gradients" of a K-vector whose Gram matrix is G.
        gram_grads, gram_params = gram_factor(gram), None

        def pullback(cotangent):
            return (vjp(cotangent),)

    else:
        losses, pullback = jax.vjp(lambda p: loss_fn(p, *args), params)
        mask = gram_mask(params) if callable(gram_mask) else gram_mask
        eye = jnp.eye(losses.shape[0], dtype=losses.dtype)
        if mask is None:
            gram_grads = jax.vmap(lambda e: pullback(e)[0])(eye)
            gram_params = params
        else:
            # Only the Gram leaves' K rows are kept; XLA prunes the rest of the K backward passes.
            gram_grads = jax.vmap(lambda e: _select(pullback(e)[0], mask))(eye)
            gram_params = _select(params, mask)

    extra_args.setdefault("value", losses)
    _, new_state = transform.update(gram_grads, state, gram_params, **extra_args)
    coefficients = optax.tree.get(new_state, "coefficients")
    if coefficients is None:
        raise ValueError(
            "Gram-only mode needs a transformation whose state records its coefficients (a "
            "MultiTaskState); `linear_scalarization` needs `diagnostics=True` for that."
        )
    (combined,) = pullback(coefficients.astype(losses.dtype))

    shared = shared_mask(params) if callable(shared_mask) else shared_mask
    if shared is not None and not all(jax.tree.leaves(shared)):
        weights = (
            jnp.ones_like(losses)
            if task_weights is None
            else jnp.asarray(task_weights, losses.dtype)
        )
        (linear,) = pullback(weights)
        combined = jax.tree.map(lambda m, c, lin: c if m else lin, shared, combined, linear)
    return losses, combined, new_state
