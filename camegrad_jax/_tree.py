"""Operations on stacked per-task gradient pytrees (every leaf has a leading task axis of size K).

The multi-task methods in this package need only two passes over the stacked gradients: one
that reduces them to the K × K Gram matrix, and one that forms a weighted sum Σ_i β_i g_i. Both
live here so that every method shares one implementation (and one place to make them fast).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.tree_util import keystr, tree_flatten_with_path

from camegrad_jax import _native_gram

PyTree = Any
MaskOrFn = PyTree | Callable[[PyTree], PyTree] | None


def task_axis_size(task_updates: PyTree, name: str = "task_updates") -> int:
    """Returns K, the size of the leading task axis shared by every leaf, or raises ValueError."""
    leaves = tree_flatten_with_path(task_updates)[0]
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves; expected stacked per-task gradients.")
    sizes = {}
    for path, leaf in leaves:
        if jnp.ndim(leaf) == 0:
            raise ValueError(
                f"`{name}` leaf {keystr(path)} is a scalar; every leaf needs a leading task axis "
                "(shape (K, *param_shape))."
            )
        sizes.setdefault(jnp.shape(leaf)[0], keystr(path))
    if len(sizes) > 1:
        found = ", ".join(f"K = {k} at {p}" for k, p in sizes.items())
        raise ValueError(f"`{name}` leaves disagree on the task axis size: {found}.")
    return next(iter(sizes))


def check_floating(task_updates: PyTree, name: str) -> None:
    """Task gradients must be real floating point: an integer update would be truncated and a
    complex one has no meaning for the Gram-based weightings."""
    for path, leaf in tree_flatten_with_path(task_updates)[0]:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = f"leaf {keystr(path)}" if path else "the stacked gradient array"
            raise TypeError(
                f"{name} needs real floating-point task gradients, but {where} has "
                f"dtype {dtype}. Differentiate with respect to floating-point parameters (cast "
                "integer ones with `.astype(jnp.float32)`); complex gradients are not supported."
            )


def check_stacked_against_params(task_updates: PyTree, params: PyTree, num_tasks: int) -> None:
    """Stacked gradients must be params with a leading task axis: fail loudly, never broadcast."""
    updates_def = jax.tree.structure(task_updates)
    params_def = jax.tree.structure(params)
    if updates_def != params_def:
        raise ValueError(
            "The stacked task gradients and `params` have different tree structures:\n"
            f"  task_updates: {updates_def}\n  params:       {params_def}"
        )
    for (path, update), param in zip(
        tree_flatten_with_path(task_updates)[0], jax.tree.leaves(params), strict=True
    ):
        expected = (num_tasks, *jnp.shape(param))
        if jnp.shape(update) != expected:
            raise ValueError(
                f"Task gradient leaf {keystr(path)} has shape {jnp.shape(update)}, expected "
                f"{expected} (K = {num_tasks} stacked onto the parameter's shape "
                f"{jnp.shape(param)}). Is the multi-task transformation first in the chain?"
            )


def accumulation_dtype(leaves: Sequence[jax.Array]) -> jnp.dtype:
    """At least float32: Gram entries of bfloat16 gradients must not be summed in bfloat16."""
    dtype = jnp.result_type(*[leaf.dtype for leaf in leaves]) if leaves else jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def _block_size(size: int) -> int | None:
    """The largest divisor of `size` in [256, 4096], if any (a reshape, never a copy)."""
    for block in range(min(4096, size // 16), 255, -1):
        if size % block == 0:
            return block
    return None


def _fused_leaf_gram(flat: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """<g_i, g_j> over one flattened (K, n) leaf as one fused multiply-reduce.

    A skinny (K × n)·(n × K) product is a poor fit for XLA:CPU's matrix kernels (measured here:
    several times the cost of one pass over the data). Viewing the leaf as (K, n/B, B) and
    reducing the broadcast products over both axes is one fused multiply-reduce, and more accurate
    (blockwise sums) than the product. B must divide n: slicing off a remainder would copy the
    leaf. Its cost grows as K² passes, though: XLA:CPU hands the reduction to a YNNPACK kernel
    that reads both rows again for each of the K² entries.
    """
    num_tasks, size = flat.shape
    block = _block_size(size)
    if block is None:
        return jnp.einsum("kn,jn->kj", flat, flat, preferred_element_type=dtype)
    blocks = flat.reshape(num_tasks, size // block, block).astype(dtype)
    return jnp.sum(blocks[:, None] * blocks[None, :], axis=(2, 3))


# Two tasks: from this many entries per task on, the two-row form below is faster on XLA:CPU
# (measured side by side, each followed by the weighted sum as in an update: 0.72–0.86 of the
# fused reduction's time from 5e5 to 3e7 entries, even at 2.6e5, slower at 1.3e5 and below,
# where its extra kernels cost more than the passes they save).
_TWO_ROW_MIN_SIZE = 2**18


def _two_row_leaf_gram(flat: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """<g_i, g_j> over one flattened (2, n) leaf in two passes over it.

    The squared norms are one reduction over the rows; <g_1, g_2> is the sum of the product
    *over the task axis*, which needs no slice of the leaf (XLA:CPU would copy a slice out before
    reducing it). The fused reduction instead reads both rows for each of its four entries.
    Entry for entry, the products are the same.
    """
    rows = flat.astype(dtype)
    squares = jnp.sum(rows * rows, axis=1)
    cross = jnp.sum(jnp.prod(rows, axis=0))
    return jnp.stack([jnp.stack([squares[0], cross]), jnp.stack([cross, squares[1]])])


# The chunked Gram (below) walks a leaf in column chunks of this many entries per task: K of them
# stay in cache while all K² products are taken.
_GRAM_CHUNK = 4096
# It pays from 4 tasks on, on leaves of at least two chunks (measured on XLA:CPU: at K = 8 it
# takes 0.25–0.5 of the fused reduce's time on leaves of 8e3–1e7 entries, 0.6–0.8 at K = 4;
# at K = 3 the two are even, and at K = 2 the fused reduce wins).
_CHUNKED_GRAM_MIN_TASKS = 4
_CHUNKED_GRAM_MIN_CHUNKS = 2


def _chunked_leaf_gram(flat: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """<g_i, g_j> over one flattened (K, n) leaf, one cache-sized (K, chunk) slice at a time.

    Each slice is read once and multiplied by its own transpose, so the data are read once
    whatever K is; the partial Grams are summed in `dtype`. A remainder shorter than a chunk is
    a small separate product.
    """
    num_tasks, size = flat.shape
    chunks = size // _GRAM_CHUNK

    def add_chunk(index, gram):
        chunk = jax.lax.dynamic_slice_in_dim(flat, index * _GRAM_CHUNK, _GRAM_CHUNK, axis=1)
        chunk = chunk.astype(dtype)
        return gram + jnp.dot(chunk, chunk.T, preferred_element_type=dtype)

    gram = jax.lax.fori_loop(0, chunks, add_chunk, jnp.zeros((num_tasks, num_tasks), dtype))
    rest = flat[:, chunks * _GRAM_CHUNK :]
    if rest.shape[1]:
        gram = gram + jnp.einsum("kn,jn->kj", rest, rest, preferred_element_type=dtype)
    return gram


def _on_one_device(leaf: jax.Array) -> bool:
    """Whether `leaf` is traced without a multi-device mesh. A sharded leaf must not be walked
    chunk by chunk: slicing along a sharded axis would make XLA gather it."""
    try:
        mesh = jax.typeof(leaf).sharding.mesh
    except AttributeError:
        return True
    return mesh.size <= 1


def _leaf_gram(flat: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """<g_i, g_j> over one flattened (K, n) leaf, accumulated in `dtype` (exact up to summation
    order whichever way).

    On a CPU, float32 leaves on one device go to the compiled Gram kernel when it is available
    (`_native_gram`; measured at 0.16–0.6 of the XLA reductions' time for every K and leaf size
    tried, see docs/performance.md); everything else to the XLA reductions.
    """
    if (
        jax.default_backend() == "cpu"
        and flat.dtype == jnp.float32
        and dtype == jnp.float32
        and _on_one_device(flat)
        and _native_gram.available()
    ):
        return _native_gram.task_gram_f32(flat)
    return _xla_leaf_gram(flat, dtype)


def _xla_leaf_gram(flat: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """The XLA reduction fastest for the leaf's shape, of those above.

    The two-row form and the chunk walk were chosen from measurements on XLA:CPU. The chunk walk
    is a sequential loop: it suits a CPU's caches, not an accelerator, where each iteration would
    be a kernel launch; there the fused reduction stays.
    """
    num_tasks, size = flat.shape
    on_cpu = jax.default_backend() == "cpu"
    if num_tasks == 2 and size >= _TWO_ROW_MIN_SIZE and on_cpu:
        return _two_row_leaf_gram(flat, dtype)
    if (
        num_tasks >= _CHUNKED_GRAM_MIN_TASKS
        and size >= _CHUNKED_GRAM_MIN_CHUNKS * _GRAM_CHUNK
        and on_cpu
        and _on_one_device(flat)
    ):
        return _chunked_leaf_gram(flat, dtype)
    return _fused_leaf_gram(flat, dtype)


def gram_matrix(
    leaves: Sequence[jax.Array], dtype: jnp.dtype, *, fuse_producer: bool = False
) -> jax.Array:
    """G_ij = Σ_leaves <g_i, g_j>, accumulated in `dtype` (≥ float32).

    `fuse_producer`: the leaves are computed just before (a rescaling, say), and the reduction
    must fuse that computation instead of reading a stored copy of them: the fused XLA
    reduction, never the kernel (a custom call), the chunk walk (a loop) or the two-row form
    (each would store the computed leaves, or a row's worth of them, first).
    """
    num_tasks = leaves[0].shape[0]
    leaf_gram = _fused_leaf_gram if fuse_producer else _leaf_gram
    gram = jnp.zeros((num_tasks, num_tasks), dtype)
    for leaf in leaves:
        gram = gram + leaf_gram(leaf.reshape(num_tasks, -1), dtype)
    return gram


def _exponent_margins(dtype: jnp.dtype) -> tuple[float, float]:
    """(largest safe trace, smallest safe mean square) of a Gram matrix accumulated in `dtype`.

    Up to the largest, no entry or partial sum can overflow (|G_ij| ≤ trace G). Above the
    smallest, the products that underflow to 0 are < 2^-66 of the mean square (float32: they
    are below 1.2e-38 while the mean square is ≥ 2^-59), so G keeps its relative accuracy.
    """
    info = jnp.finfo(dtype)
    return 2.0 ** (info.maxexp - 28), 2.0 ** (info.minexp + 66)


def gram_in_range(
    leaves: Sequence[jax.Array], dtype: jnp.dtype, per_leaf: bool = False
) -> tuple[list[jax.Array], jax.Array]:
    """Gram matrices that neither overflow nor underflow, whatever the gradients' common scale.

    Returns ``(grams, scale)`` with the true Gram matrix ``scale² · Σ grams``: one matrix over all
    `leaves`, or with ``per_leaf`` one per leaf. Gradients of ordinary size give scale 1 and the
    plain `gram_matrix`. Only when its trace says that float range was left (entries around
    1e-20 or 1e19 in float32) is G formed again from the gradients divided by a power of two
    near their largest magnitude, the way BLAS ``nrm2`` scales its sum of squares: exact
    division, every product in range. That costs one more pass for the maximum and one for G,
    and only then (a ``lax.cond``). NaN or inf in the gradients still gives a non-finite G.
    """
    num_tasks = leaves[0].shape[0]
    groups = [[leaf] for leaf in leaves] if per_leaf else [list(leaves)]
    grams = [gram_matrix(group, dtype) for group in groups]
    trace = jnp.trace(sum(grams[1:], grams[0]))
    size = sum(leaf.size // num_tasks for leaf in leaves)
    largest, smallest = _exponent_margins(dtype)
    in_range = jnp.isfinite(trace) & (trace <= largest) & (trace >= size * smallest)

    def plain(_):
        return grams, jnp.ones((), dtype)

    def rescaled(_):
        peak = jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)).astype(dtype) for leaf in leaves]))
        # Zero gradients keep scale 1; a NaN peak keeps it too, and an infinite one gives
        # inf · 0 = NaN: either way the non-finite gradients poison G.
        exponent = jnp.where(peak > 0, jnp.floor(jnp.log2(peak)), 0.0)
        # Two factors, as 2^-e alone overflows for subnormal gradients (e < -127 in float32).
        half = jnp.floor(exponent / 2)
        first, second = jnp.exp2(-half).astype(dtype), jnp.exp2(half - exponent).astype(dtype)
        scaled = [
            gram_matrix(
                [leaf.astype(dtype) * first * second for leaf in group], dtype, fuse_producer=True
            )
            for group in groups
        ]
        return scaled, jnp.exp2(exponent).astype(dtype)

    return jax.lax.cond(in_range, plain, rescaled, None)


def combine(leaves: Sequence[jax.Array], coefficients: jax.Array) -> list[jax.Array]:
    """Σ_i coefficients_i · leaf[i] for each leaf, computed in ≥ float32, returned in leaf dtype.

    `einsum` over the task axis rather than `sum(axis=0)`: on XLA:CPU the reduction over a short
    leading axis is many times slower than the contraction.
    """
    out = []
    for leaf in leaves:
        dtype = jnp.promote_types(leaf.dtype, coefficients.dtype)
        combined = jnp.einsum(
            "k,k...->...", coefficients.astype(dtype), leaf, preferred_element_type=dtype
        )
        out.append(combined.astype(leaf.dtype))
    return out


def merge_by_mask(
    shared: Sequence[jax.Array], private: Sequence[jax.Array], mask: Sequence[bool]
) -> list[jax.Array]:
    """Interleaves the shared and private leaves back into the original leaf order.

    Examples:
      >>> from camegrad_jax._tree import merge_by_mask
      >>> merge_by_mask(["s1", "s2"], ["p1"], [True, False, True])
      ['s1', 'p1', 's2']
    """
    shared_iter, private_iter = iter(shared), iter(private)
    return [next(shared_iter) if is_shared else next(private_iter) for is_shared in mask]


def resolve_mask(mask: MaskOrFn, task_updates: PyTree, params: PyTree | None) -> list[bool] | None:
    """The shared-leaf mask flattened in the order of `task_updates`' leaves (None: all shared).

    A callable mask is called with `params` when they are given to `update`, else with the stacked
    gradients, like `optax.masked` calls its mask with whatever tree it has.
    """
    if mask is None:
        return None
    if callable(mask):
        mask = mask(params if params is not None else task_updates)
    try:
        # An absent leaf (None, as in optax.masked, possibly inside a wrapper such as an NNX
        # Variable) keeps no flag.
        flags = jax.tree.map(
            lambda m, update: bool(m) if jax.tree.leaves(update) else None,
            mask,
            task_updates,
            is_leaf=lambda x: x is None,
        )
    except ValueError as error:
        raise ValueError(
            "Parameter `shared_mask` must have the tree structure of the parameters (one bool per "
            f"leaf). {error}"
        ) from None
    flags = jax.tree.leaves(flags)
    if not any(flags):
        raise ValueError("Parameter `shared_mask` marks no leaf as shared.")
    return flags


def flatten(tree: PyTree) -> tuple[list[jax.Array], Any]:
    leaves, treedef = jax.tree.flatten(tree)
    return leaves, treedef
