"""The machinery every stacked-gradient method shares: the weighting contract and its builder.

A multi-task method here is a :class:`Weighting`: a pure rule from the K × K Gram matrix of the
task gradients and the method's own state to K coefficients β and the new state, the update
being Σ_i β_i g_i. One Gram convention holds throughout:

* G is the Gram matrix of the **raw** task gradients, :math:`G_{ij} = \\langle g_i, g_j\rangle`
  (as :func:`camegrad_jax.task_gram` returns it, and as the builder forms it from the stacked
  gradients), never of the weighted ones;
* the coefficients are on the raw gradients too: the update is :math:`\\sum_i \beta_i g_i`;
* the static task weights λ are a separate input. A method defined on the weighted gradients
  :math:`h_i = \\lambda_i g_i` works on :math:`\\Lambda G \\Lambda` inside its weighting and
  returns :math:`\beta_i = \\lambda_i b_i` for its coefficients :math:`b` on the :math:`h_i`.

Every public function of the Gram matrix follows it: ``cg.<method>_weighting(...)`` (the
method's :class:`Weighting`), and the stateless rules (``cg.upgrad_coefficients``, ...), which
take no λ, so that the Gram matrix passed is that of the gradients they combine. A weighting
may read further inputs from the extra arguments of ``update`` (the losses as ``value``);
loss-based methods, which need no G, have their own contract (:mod:`camegrad_jax._loss_weighting`).

:func:`stacked_gradient_transformation` turns a weighting into an
``optax.GradientTransformationExtraArgs`` that:

* sizes its state from the first stacked gradients it sees when K was not given (as optax's own
  transformations never ask for what the gradients tell them);
* checks that every leaf carries the same leading task axis and a floating dtype, that it comes
  first in any enclosing ``optax.chain`` and, when ``params`` are given, that the stacked
  gradients are exactly params with a task axis (no silent broadcasting);
* forms G from the shared leaves (accumulated in ≥ float32), calls the weighting, and forms
  Σ_i β_i g_i on the shared leaves and the linear-scalarization sum Σ_i λ_i g_i on the others;
* keeps the method's own state and the last step's diagnostics in a typed state.

What only some methods do is a wrapper around the builder's transformation, not an option of
the builder: :func:`weight_every_leaf` (GradNorm, ExcessMTL), CAME-Grad's Setting B noise and
MMPareto's per-leaf magnitudes (in their modules).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._diagnostics import GradientStats, empty_stats, gradient_stats


class WeightingResult(NamedTuple):
    coefficients: jax.Array  # (K,) β on the raw gradients: update = Σ_i β_i g_i.
    method_state: Any  # The method's new state.


class WeightingFn(Protocol):
    def __call__(
        self, gram: jax.Array | None, method_state: Any, task_weights: jax.Array, **extra: Any
    ) -> WeightingResult: ...


class Weighting(NamedTuple):
    """A multi-task method apart from the gradients: its state and its rule for β.

    ``update(gram, method_state, task_weights, **extra_args)`` takes the Gram matrix of the raw
    task gradients (None for a method built with ``uses_gram=False``), the method's state and
    the (K,) static weights λ, and returns a :class:`WeightingResult`: coefficients on the raw
    gradients and the new state (see the module docstring). It is pure: the same inputs give
    the same outputs, so it runs under ``jit``, ``vmap`` and ``lax.scan``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import camegrad_jax as cg
      >>> weighting = cg.mgda_weighting()
      >>> state = weighting.init(2)
      >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])  # orthogonal gradients, norms 1 and 2
      >>> coefficients, state = weighting.update(gram, state, jnp.ones(2))
      >>> coefficients  # the min-norm point weighs the shorter one more
      Array([0.8, 0.2], dtype=float32)
    """

    init: Callable[[int], Any]  # K -> the method's initial state.
    update: WeightingFn


class MultiTaskState(NamedTuple):
    """State of a stacked-gradient transformation (diagnostics of the last step in float32)."""

    method_state: Any  # The method's own state (warm starts, learnable weights, PRNG keys...).
    coefficients: jax.Array  # (K,) float32; update = Σ_i coefficients_i g_i on the shared leaves.
    stats: GradientStats | optax.EmptyState  # Gram-based statistics, when the method forms G.


def stored(x: jax.Array) -> jax.Array:
    """Cast floating diagnostics to float32: the state's dtypes must not depend on the gradients'
    dtype, or the second update would recompile (and lax.scan loops would fail)."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


def stateless_weighting(rule: Callable[[jax.Array], jax.Array]) -> Weighting:
    r"""The :class:`Weighting` of a stateless rule for the coefficients on the weighted gradients.

    ``rule(ΛGΛ) -> b`` gives coefficients on :math:`h_i = \lambda_i g_i` from their Gram
    matrix; the weighting returns β = λ ⊙ b on the raw gradients, and NaN where G is not finite
    (see `_gram.guard_non_finite`).

    Examples:
      The mean of the weighted task gradients:

      >>> import jax.numpy as jnp
      >>> from camegrad_jax._aggregation import stateless_weighting
      >>> mean = stateless_weighting(lambda gram: jnp.full(gram.shape[0], 0.5))
      >>> mean.update(jnp.eye(2), mean.init(2), jnp.array([1.0, 3.0])).coefficients
      Array([0.5, 1.5], dtype=float32)
    """

    def update(gram, state, weights, **extra_args) -> WeightingResult:
        del extra_args
        beta = rule(_gram.weighted_gram(gram, weights))
        coefficients, state = _gram.guard_non_finite(gram, beta * weights, state, state)
        return WeightingResult(coefficients, state)

    return Weighting(lambda k: optax.EmptyState(), update)


class SplitLeaves(NamedTuple):
    """The leaves of stacked gradients, split by the shared-leaf mask."""

    treedef: Any  # The stacked gradients' (and the update's) tree structure.
    mask: list[bool]  # One flag per leaf: True where the leaf is shared.
    shared: list[jax.Array]  # The shared leaves, (K, *shape) each.
    private: list[jax.Array]  # The other leaves, (K, *shape) each.
    dtype: jnp.dtype  # The accumulation dtype of all leaves (≥ float32).

    def shared_of(self, tree: Any) -> list[jax.Array]:
        """The shared leaves of a tree of the same structure (e.g. the update)."""
        leaves = self.treedef.flatten_up_to(tree)
        return [x for x, is_shared in zip(leaves, self.mask, strict=True) if is_shared]

    def replace_shared(self, tree: Any, shared: Sequence[jax.Array]) -> Any:
        """A tree of the same structure with its shared leaves replaced by `shared`."""
        leaves = self.treedef.flatten_up_to(tree)
        private = [x for x, is_shared in zip(leaves, self.mask, strict=True) if not is_shared]
        return self.merge(shared, private)

    def merge(self, shared: Sequence[jax.Array], private: Sequence[jax.Array]) -> Any:
        """The tree whose shared leaves are `shared` and whose other leaves are `private`."""
        return jax.tree.unflatten(self.treedef, _tree.merge_by_mask(shared, private, self.mask))


def split_leaves(task_updates: Any, shared_mask: _tree.MaskOrFn, params: Any) -> SplitLeaves:
    """Splits stacked gradients into their shared and other leaves (see :class:`SplitLeaves`)."""
    leaves, treedef = jax.tree.flatten(task_updates)
    mask = _tree.resolve_mask(shared_mask, task_updates, params) or [True] * len(leaves)
    return SplitLeaves(
        treedef=treedef,
        mask=mask,
        shared=[leaf for leaf, is_shared in zip(leaves, mask, strict=True) if is_shared],
        private=[leaf for leaf, is_shared in zip(leaves, mask, strict=True) if not is_shared],
        dtype=_tree.accumulation_dtype(leaves),
    )


def weight_every_leaf(
    inner: optax.GradientTransformationExtraArgs, shared_mask: _tree.MaskOrFn
) -> optax.GradientTransformationExtraArgs:
    """Applies the coefficients of a builder's transformation to every leaf, not only the shared.

    ``inner`` (from :func:`stacked_gradient_transformation` with this ``shared_mask``) forms G
    on the masked leaves only; the wrapped transformation updates the other leaves by
    Σ_i β_i g_i as well, instead of Σ_i λ_i g_i: for methods whose coefficients weight whole
    task losses but are computed from one layer's gradients (GradNorm, ExcessMTL). The state is
    ``inner``'s; the other leaves receive its stored (float32) coefficients.
    """

    def update_fn(task_updates, state, params=None, **extra_args):
        updates, state = inner.update(task_updates, state, params, **extra_args)
        split = split_leaves(task_updates, shared_mask, params)
        private = _tree.combine(split.private, state.coefficients.astype(split.dtype))
        return split.merge(split.shared_of(updates), private), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def _scale_norms(stats: GradientStats, scale: jax.Array) -> GradientStats:
    """Statistics of gradients `scale` times those G was formed from (angles do not change)."""
    return stats._replace(
        task_norms=scale * stats.task_norms,
        joint_norm=scale * stats.joint_norm,
        update_norm=scale * stats.update_norm,
    )


def stacked_gradient_transformation(
    weighting: Weighting,
    *,
    name: str,
    num_tasks: int | None,
    task_weights: Any,
    shared_mask: _tree.MaskOrFn = None,
    uses_gram: bool = True,
    hyperparams_valid: _validation.Verdict = True,
    gram_homogeneity: float | jax.Array = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Builds the optax transformation of a weighting (see the module docstring).

    Args:
      weighting: the method's :class:`Weighting`; its ``update`` receives the Gram matrix of the
        raw task gradients on the shared leaves, or None when ``uses_gram`` is False.
      name: the public factory's name, for error messages.
      num_tasks: K, when known at construction. Without it (and without ``task_weights``),
        ``init`` returns a state with an empty task axis that the first ``update`` replaces by
        one sized from the stacked gradients: a jitted step then compiles twice, and a
        ``lax.scan`` over steps, whose carry may not change shape, needs ``num_tasks``.
      task_weights: static weights λ or None; checked against K at update.
      shared_mask: shared leaves (see :func:`camegrad_jax.camegrad`).
      uses_gram: whether the weighting needs G (if not, G is also skipped for diagnostics).
      gram_homogeneity: the degree h with β(s·G) = s^h β(G) for s > 0. The weighting receives G
        divided by a power of two when the gradients' scale leaves float range, and this
        restores the coefficients; 0 (the default) for weightings of G's shape alone (CAME-Grad,
        MGDA, PCGrad, ...), -1/2 for those that normalise by gradient norms (Nash-MTL); a
        traced value is allowed (FairGrad's -α/(α+1)).
      hyperparams_valid: the factory's combined check verdict (`_validation.all_valid`); a traced
        False (a schedule under ``optax.inject_hyperparams`` left the valid range) makes the
        update NaN, so that ``optax.apply_if_finite`` rejects the step.
    """
    _validation.check_task_weights(task_weights)
    _validation.resolve_num_tasks(num_tasks, task_weights)  # Fail early where we can.

    def sized_state(k: int) -> MultiTaskState:
        return MultiTaskState(
            method_state=weighting.init(k),
            coefficients=jnp.zeros((k,), jnp.float32),
            stats=empty_stats(k) if uses_gram else optax.EmptyState(),
        )

    def init_fn(params):
        del params
        expected_tasks = _validation.resolve_num_tasks(num_tasks, task_weights)
        if expected_tasks is None:
            # K is unknown until the stacked gradients arrive: the same tree structure with an
            # empty task axis marks the state as not yet sized.
            return sized_state(1)._replace(coefficients=jnp.zeros((0,), jnp.float32))
        return sized_state(expected_tasks)

    def update_fn(task_updates, state, params=None, **extra_args):
        _check_first_in_chain(name)
        k = _tree.task_axis_size(task_updates)
        _tree.check_floating(task_updates, name)
        if state.coefficients.shape[0] == 0:
            state = sized_state(k)
        elif k != state.coefficients.shape[0]:
            raise ValueError(
                f"The stacked gradients carry K = {k} tasks, but {name}'s state was built for "
                f"K = {state.coefficients.shape[0]} (`num_tasks`/`task_weights`)."
            )
        if params is not None:
            _tree.check_stacked_against_params(task_updates, params, k)
        split = split_leaves(task_updates, shared_mask, params)
        dtype = split.dtype
        weights = _validation.weights_vector(task_weights, k, dtype)

        # G = scale² · gram: out-of-range gradients are rescaled (see `_tree.gram_in_range`).
        scale = jnp.ones((), dtype)
        gram = None
        if uses_gram:
            (gram,), scale = _tree.gram_in_range(split.shared, dtype)
        coefficients, method_state = weighting.update(
            gram, state.method_state, weights, **extra_args
        )
        coefficients = coefficients.astype(dtype)
        if _validation.is_traced(gram_homogeneity) or gram_homogeneity:
            # β(scale² G) = scale^(2h) β(G) for a weighting homogeneous of degree h in G (h may
            # depend on a hyper-parameter that inject_hyperparams traces, as in FairGrad).
            coefficients = coefficients * scale ** (2 * gram_homogeneity)
        if hyperparams_valid is not True:
            # Out-of-range hyper-parameters (a schedule under inject_hyperparams): a NaN update
            # that apply_if_finite rejects, and the method's state left as it was.
            coefficients = jnp.where(hyperparams_valid, coefficients, jnp.nan)
            method_state = jax.tree.map(
                lambda new, old: jnp.where(hyperparams_valid, new, old),
                method_state,
                state.method_state,
            )
        stats = state.stats
        if uses_gram:
            stats = _scale_norms(gradient_stats(gram, coefficients, weights), scale)
        updates = split.merge(
            _tree.combine(split.shared, coefficients), _tree.combine(split.private, weights)
        )
        new_state = MultiTaskState(
            method_state=jax.tree.map(stored, method_state),
            coefficients=stored(coefficients),
            stats=jax.tree.map(stored, stats),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# The update function of `optax.chain` and `optax.named_chain` (one module defines both); each
# keeps the states of the members that already ran in a local `new_state`.
_CHAIN_SOURCE = optax.chain.__code__.co_filename


def _check_first_in_chain(name: str) -> None:
    """Raises if a member of an enclosing optax chain ran before this transformation.

    Its input has a task axis that its output has not, so whatever runs before it sees stacked
    gradients as if they were parameter-shaped: Adam's moments, say, silently broadcast to shape
    (K, ...). Only the Python frames of the chains that call this update are read (at trace
    time under ``jit``), so the check costs nothing inside a compiled step.
    """
    frame = sys._getframe(2)
    for _ in range(64):  # Chains nest a few frames deep at most; stop before the whole stack.
        if frame is None:
            return
        code = frame.f_code
        if code.co_filename == _CHAIN_SOURCE and code.co_name == "update_fn":
            if frame.f_locals.get("new_state"):
                raise ValueError(
                    f"{name} must come first in the optax chain: it takes stacked per-task "
                    "gradients (a leading task axis on every leaf) and returns an update shaped "
                    f"like the parameters, so a transformation placed before it sees the task "
                    f"axis as if it were part of the parameters. Write `optax.chain({name}(...), "
                    "optax.adam(...))`; wrap the later optimizer for accumulation or finite "
                    "checks (`optax.MultiSteps`, `optax.apply_if_finite`)."
                )
        frame = frame.f_back
