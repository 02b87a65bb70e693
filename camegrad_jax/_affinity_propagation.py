r"""Affinity propagation on a precomputed similarity matrix, on device.

A port of scikit-learn's ``AffinityPropagation(affinity="precomputed")`` (``fit`` and
``_affinity_propagation`` in ``sklearn/cluster/_affinity_propagation.py``, 1.x), the clustering
the official STGU code runs on the host. Frey & Dueck's message passing, with sklearn's choices
kept one by one:

* the preference defaults to the median of all n² similarities (diagonal included);
* when all off-diagonal similarities are equal (always the case for a symmetric 2 × 2 matrix),
  the messages are skipped: every point is its own cluster if the preference exceeds the
  similarity ``S[0, n-1]``, else there is one cluster;
* the similarities receive the noise ``(eps·S + 100·tiny)·N(0, 1)`` that breaks ties;
* responsibilities and availabilities are damped, and the iterations stop once, for at least
  ``convergence_iter`` iterations in a row, no point changed whether it is an exemplar (and
  some point is), or after ``max_iter`` iterations;
* exemplars are refined once (each cluster's member with the largest summed similarity to the
  others), points re-assigned, and labels numbered by exemplar index, ties broken as NumPy's
  ``argmax`` breaks them.

sklearn keeps the last ``convergence_iter`` exemplar indicators in an ``(n, convergence_iter)``
buffer; here each point's run length of an unchanged indicator is counted instead, which stops
at the same iteration and lets ``convergence_iter`` be a traced value. The messages are in the
similarities' dtype (sklearn's are float64).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Clustering(NamedTuple):
    """The result of :func:`affinity_propagation`."""

    labels: jax.Array  # (n,) int32: cluster of each point, 0..num_clusters-1; -1 when none.
    num_clusters: jax.Array  # () int32: 0 when no exemplar emerged (sklearn's empty result).
    converged: jax.Array  # () bool: whether the messages converged before `max_iter`.


def _all_similarities_equal(similarities: jax.Array) -> jax.Array:
    n = similarities.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    return jnp.all(jnp.where(off_diagonal, similarities == similarities[0, 1], True))


def _messages(
    similarities: jax.Array, damping: jax.Array, convergence_iter: jax.Array, max_iter: int
) -> tuple[jax.Array, jax.Array]:
    """The exemplar indicator after the message passing, and whether it converged."""
    n = similarities.shape[0]
    rows = jnp.arange(n)
    diagonal = jnp.eye(n, dtype=bool)

    def iteration(carry):
        responsibility, availability, exemplars, run, it, _ = carry
        total = availability + similarities
        best = jnp.argmax(total, axis=1)
        first = total[rows, best]
        second = jnp.max(total.at[rows, best].set(-jnp.inf), axis=1)
        new_r = (
            (similarities - first[:, None]).at[rows, best].set(similarities[rows, best] - second)
        )
        responsibility = damping * responsibility + (1 - damping) * new_r
        positive = jnp.where(diagonal, responsibility, jnp.maximum(responsibility, 0))
        new_a = positive - jnp.sum(positive, axis=0)
        new_a = jnp.where(diagonal, new_a, jnp.maximum(new_a, 0))
        availability = damping * availability - (1 - damping) * new_a
        new_exemplars = (jnp.diagonal(availability) + jnp.diagonal(responsibility)) > 0
        run = jnp.where(new_exemplars == exemplars, run + 1, 1)
        converged = (
            (it >= convergence_iter) & jnp.all(run >= convergence_iter) & jnp.any(new_exemplars)
        )
        return responsibility, availability, new_exemplars, run, it + 1, converged

    def running(carry):
        *_, it, converged = carry
        return (it < max_iter) & ~converged

    zeros = jnp.zeros_like(similarities)
    unchanged_for = jnp.zeros(n, jnp.int32)
    start = (zeros, zeros, jnp.zeros(n, bool), unchanged_for, jnp.int32(0), jnp.asarray(False))
    *_, exemplars, _, _, converged = lax.while_loop(running, iteration, start)
    return exemplars, converged


def _labels(similarities: jax.Array, exemplars: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sklearn's assignment, refinement and numbering, with the exemplar set as a mask."""
    n = similarities.shape[0]
    points = jnp.arange(n)
    # Each point to its most similar exemplar; exemplars to themselves.
    nearest = jnp.argmax(jnp.where(exemplars[None, :], similarities, -jnp.inf), axis=1)
    nearest = jnp.where(exemplars, points, nearest)
    # Row e: the members of the cluster of exemplar e; its refined exemplar is the member with
    # the largest summed similarity from the members.
    members = nearest[None, :] == points[:, None]
    column_sums = jnp.where(members, members.astype(similarities.dtype) @ similarities, -jnp.inf)
    refined = jnp.argmax(column_sums, axis=1)
    # Re-assignment to the refined exemplars, in the order of the old ones (sklearn's `I`).
    slot = jnp.argmax(jnp.where(exemplars[None, :], similarities[:, refined], -jnp.inf), axis=1)
    slot = slot.at[jnp.where(exemplars, refined, n)].set(points, mode="drop")
    exemplar_of = refined[slot]
    # Clusters numbered by their exemplar's index (sklearn's `unique` and `searchsorted`).
    below = exemplars[None, :] & (refined[None, :] < exemplar_of[:, None])
    return jnp.sum(below, axis=1).astype(jnp.int32), jnp.sum(exemplars).astype(jnp.int32)


def affinity_propagation(
    similarities: jax.Array,
    key: jax.Array,
    *,
    preference: float | jax.Array | None = None,
    damping: float | jax.Array = 0.5,
    convergence_iter: int | jax.Array = 15,
    max_iter: int = 200,
) -> Clustering:
    """Affinity propagation of the (n, n) ``similarities``, as sklearn's with
    ``affinity="precomputed"`` (see the module docstring); jittable.

    Args:
      similarities: (n, n) floating similarities.
      key: PRNG key of the tie-breaking noise (sklearn's ``random_state``).
      preference: the diagonal's value; default the median of ``similarities``.
      damping: in [0.5, 1).
      convergence_iter: iterations without change that end the message passing.
      max_iter: the most iterations (static).

    Returns:
      A :class:`Clustering`; ``num_clusters`` is 0 where sklearn returns no cluster.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from camegrad_jax._affinity_propagation import affinity_propagation
      >>> x = jnp.array([1.0, 1.2, 0.9, 5.0, 5.1, 4.8])
      >>> s = -(x[:, None] - x[None, :]) ** 2
      >>> result = affinity_propagation(s, jax.random.PRNGKey(0))
      >>> result.labels.tolist(), int(result.num_clusters)
      ([0, 0, 0, 1, 1, 1], 2)
    """
    similarities = jnp.asarray(similarities)
    n = similarities.shape[0]
    dtype = similarities.dtype
    if preference is None:
        preference = jnp.median(similarities)
    preference = jnp.asarray(preference, dtype)
    if n == 1:
        return Clustering(jnp.zeros(1, jnp.int32), jnp.int32(1), jnp.asarray(True))

    info = jnp.finfo(dtype)
    noisy = jnp.where(jnp.eye(n, dtype=bool), preference, similarities)
    noise = jax.random.normal(key, (n, n), dtype)
    noisy = noisy + (info.eps * noisy + info.tiny * 100) * noise
    exemplars, converged = _messages(noisy, jnp.asarray(damping, dtype), convergence_iter, max_iter)
    labels, num_clusters = _labels(noisy, exemplars)
    found = num_clusters > 0
    labels = jnp.where(found, labels, -1)

    # sklearn's shortcut for equal similarities, decided on the matrix before the noise.
    each_alone = preference > similarities[0, n - 1]
    shortcut_labels = jnp.where(each_alone, jnp.arange(n, dtype=jnp.int32), 0)
    shortcut_count = jnp.where(each_alone, n, 1).astype(jnp.int32)
    shortcut = _all_similarities_equal(similarities)
    return Clustering(
        jnp.where(shortcut, shortcut_labels, labels),
        jnp.where(shortcut, shortcut_count, num_clusters),
        shortcut | converged,
    )
