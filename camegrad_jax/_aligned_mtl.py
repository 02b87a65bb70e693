r"""Aligned-MTL: independent component alignment (Senushkin et al., CVPR 2023), from the Gram."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from camegrad_jax import _gram, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    stacked_gradient_transformation,
    stateless_weighting,
)

ScaleMode = Literal["min", "median", "rmse"]
SCALE_MODES: tuple[str, ...] = ("min", "median", "rmse")
# The official code's rank tolerance uses torch.finfo().eps, float32's, whatever the dtype.
_RANK_EPS = float(jnp.finfo(jnp.float32).eps)
# Sweeps of the Jacobi rotations: each sweep squares the off-diagonal mass once close.
_JACOBI_SWEEPS = 10


def _one_sided_jacobi(matrix: jax.Array, sweeps: int = _JACOBI_SWEEPS):
    """Singular values and right singular vectors of a square matrix by one-sided (Hestenes)
    Jacobi rotations: each rotation makes two columns orthogonal, and after a few sweeps over all
    pairs the column norms are the singular values. A fixed number of sweeps, no loop on data."""
    num_columns = matrix.shape[1]
    pairs = np.array([(p, q) for p in range(num_columns) for q in range(p + 1, num_columns)])
    if len(pairs) == 0:
        return jnp.linalg.norm(matrix, axis=0), jnp.eye(num_columns, dtype=matrix.dtype)
    firsts = jnp.asarray(np.tile(pairs[:, 0], sweeps))
    seconds = jnp.asarray(np.tile(pairs[:, 1], sweeps))

    def rotate(index, carry):
        columns, vectors = carry
        p, q = firsts[index], seconds[index]
        x_p, x_q = columns[:, p], columns[:, q]
        cross = x_p @ x_q
        turn = cross != 0
        zeta = (x_q @ x_q - x_p @ x_p) / (2 * jnp.where(turn, cross, 1.0))
        tangent = jnp.where(zeta >= 0, 1.0, -1.0) / (jnp.abs(zeta) + jnp.hypot(1.0, zeta))
        cos = jnp.where(turn, 1.0 / jnp.sqrt(1.0 + tangent**2), 1.0)
        sin = jnp.where(turn, cos * tangent, 0.0)

        def apply(m):
            m_p, m_q = m[:, p], m[:, q]
            return m.at[:, p].set(cos * m_p - sin * m_q).at[:, q].set(sin * m_p + cos * m_q)

        return apply(columns), apply(vectors)

    start = (matrix, jnp.eye(num_columns, dtype=matrix.dtype))
    columns, vectors = lax.fori_loop(0, len(firsts), rotate, start)
    return jnp.linalg.norm(columns, axis=0), vectors


def aligned_mtl_coefficients(gram: jax.Array, scale_mode: ScaleMode = "min") -> jax.Array:
    r"""Aligned-MTL's coefficients :math:`B\mathbb{1}` from the Gram matrix of the (weighted)
    task gradients (see :func:`aligned_mtl`)."""
    num_tasks = gram.shape[0]
    normalised, _ = _gram.trace_normalise(gram)  # B does not depend on the scale of G.
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(normalised), 0.0))
    inverse_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    cosine = normalised * inverse_norms[:, None] * inverse_norms[None, :]
    cosine_eigenvalues, cosine_eigenvectors = jnp.linalg.eigh(cosine)
    # The rank is read on the cosine matrix, i.e. on the gradients' directions: on G itself a
    # task whose gradient is 1e4 times smaller than another's falls below the cutoff.
    rank = jnp.sum(cosine_eigenvalues > jnp.max(cosine_eigenvalues) * num_tasks * _RANK_EPS)
    # G's own eigendecomposition loses its small eigenvalues to round-off of the large ones
    # when the task norms are far apart. A square root R with RᵀR = G, R = Λ_C^{1/2} V_Cᵀ D, is
    # graded only in its columns (D = diag ‖h_i‖), and one-sided Jacobi rotations find its
    # singular values and right singular vectors to relative accuracy (Demmel & Veselić, 1992).
    root = jnp.sqrt(jnp.maximum(cosine_eigenvalues, 0.0))[:, None] * cosine_eigenvectors.T
    singular_values, right = _one_sided_jacobi(root * norms[None, :])
    ascending = jnp.argsort(singular_values)
    eigenvalues = jnp.square(singular_values)[ascending]
    eigenvectors = right[:, ascending]
    kept = jnp.arange(num_tasks) >= num_tasks - rank
    if scale_mode == "min":
        reference = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
    elif scale_mode == "median":
        # torch.median's lower median of the kept eigenvalues, the top `rank` of the ascending list.
        index = num_tasks - rank + (rank - 1) // 2
        reference = eigenvalues[jnp.clip(index, 0, num_tasks - 1)]
    else:
        reference = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1)
    reference = jnp.where(rank > 0, reference, 0.0)
    inverse_sqrt = jnp.where(kept, 1.0 / jnp.sqrt(jnp.where(kept, eigenvalues, 1.0)), 0.0)
    balance = jnp.sqrt(reference) * (eigenvectors * inverse_sqrt) @ eigenvectors.T
    return balance @ jnp.ones((num_tasks,), gram.dtype)


def aligned_mtl_weighting(*, scale_mode: ScaleMode = "min") -> Weighting:
    """Aligned-MTL's :class:`~camegrad_jax.Weighting` (see :func:`aligned_mtl`): stateless, from
    the Gram matrix of the raw task gradients and the task weights."""
    _validation.check_choice(scale_mode, SCALE_MODES, "scale_mode")
    return stateless_weighting(lambda gram: aligned_mtl_coefficients(gram, scale_mode))


def aligned_mtl(
    *,
    scale_mode: ScaleMode = "min",
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Aligned-MTL as an optax transformation over stacked per-task gradients.

    With weighted task gradients :math:`h_i = \lambda_i g_i` stacked as the columns of H and
    their Gram matrix :math:`G = H^\top H = V \Lambda V^\top` restricted to its r non-zero
    eigenvalues (r: the rank, eigenvalues above :math:`K \varepsilon_{32} \lambda_{max}`, as the
    official code, but read on the cosine matrix; see the deviations below):

    .. math::

      B = \sqrt{\sigma}\, V \Lambda^{-1/2} V^\top, \qquad \hat H = H B, \qquad
      g = \hat H \mathbb{1} = \sum_i (B\mathbb{1})_i\, h_i .

    The aligned gradients :math:`\hat H` have orthogonal components of equal magnitude
    (:math:`\hat H^\top \hat H = \sigma V V^\top`, condition number 1), scaled by σ:

    * ``"min"`` (the paper's and default): σ = the smallest kept eigenvalue, i.e. the squared
      smallest singular value of H;
    * ``"median"``: their (lower, as ``torch.median``) median;
    * ``"rmse"``: their mean.

    As the official code (https://github.com/SamsungLabs/MTL) and LibMTL, g is the *sum* of the
    aligned gradients (torchjd's AlignedMTL averages them). The update is scale-equivariant and
    invariant to the order of the tasks; it is 0 when every gradient is.

    Deviations from the official code: the rank r is read on the cosine matrix
    :math:`D^{-1}GD^{-1}` (:math:`D = \mathrm{diag}\,\|h_i\|`) with the same cutoff, and the
    eigenvalues and eigenvectors of G come from one-sided Jacobi rotations on a square root of
    G graded only in its columns, not from G's own eigendecomposition. Both agree with the
    official computation while the task norms are within about 1e3 of each other; beyond, G's
    small eigenvalues drown in the round-off of the large ones (float32 loses them at a spread
    of 1e4), and the official cutoff would count a task far smaller than the others as a rank
    deficiency.

    This transformation must be **first** in a chain (see :func:`camegrad_jax.camegrad`).

    Args:
      scale_mode: ``"min"`` (default), ``"median"`` or ``"rmse"``.
      task_weights: static positive weights λ, one per task (default all ones).
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: optional pytree of bools (or callable) marking the shared leaves; the others
        receive :math:`\sum_i \lambda_i g_i`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`camegrad_jax.MultiTaskState` (``coefficients`` = B𝟙 ⊙ λ; no method state).

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax import aligned_mtl
      >>> tx = aligned_mtl(num_tasks=2)
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
      >>> updates, state = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> updates["w"].round(4)  # both components rescaled to the smaller singular value
      Array([1., 1.], dtype=float32)

    References:
      Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023.
      https://arxiv.org/abs/2305.19000
    """
    _validation.check_choice(scale_mode, SCALE_MODES, "scale_mode")

    return stacked_gradient_transformation(
        aligned_mtl_weighting(scale_mode=scale_mode),
        name="aligned_mtl",
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
    )
