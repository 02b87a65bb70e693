"""NumPy transcription of scikit-learn's affinity propagation (STGU's clustering), shared by the
clustering's tests and STGU's training-loop reference, and the partition of a labelling."""

from __future__ import annotations

import numpy as np


def numpy_affinity_propagation(S, preference=None, convergence_iter=15, max_iter=200, damping=0.5,
                               rng=None):  # fmt: skip
    """sklearn 1.x `AffinityPropagation(affinity="precomputed").fit(S)`: (centers, labels,
    converged)."""
    S = np.array(S, dtype=np.float64)
    n = S.shape[0]
    rng = np.random.RandomState(0) if rng is None else rng
    preference = np.median(S) if preference is None else preference
    off = ~np.eye(n, dtype=bool)
    if n == 1 or np.all(S[off] == S[off][0]):
        if preference > S.flat[n - 1]:
            return np.arange(n), np.arange(n), True
        return np.array([0]), np.zeros(n, int), True
    S.flat[:: n + 1] = preference
    A, R = np.zeros((n, n)), np.zeros((n, n))
    S += (np.finfo(S.dtype).eps * S + np.finfo(S.dtype).tiny * 100) * rng.standard_normal((n, n))
    e = np.zeros((n, convergence_iter))
    ind = np.arange(n)
    never_converged = True
    for it in range(max_iter):
        tmp = A + S
        I = np.argmax(tmp, axis=1)  # noqa: E741
        Y = tmp[ind, I]
        tmp[ind, I] = -np.inf
        Y2 = np.max(tmp, axis=1)
        tmp = S - Y[:, None]
        tmp[ind, I] = S[ind, I] - Y2
        R = damping * R + (1 - damping) * tmp
        tmp = np.maximum(R, 0)
        tmp.flat[:: n + 1] = R.flat[:: n + 1]
        tmp = tmp - np.sum(tmp, axis=0)
        dA = np.diag(tmp).copy()
        tmp = tmp.clip(0, np.inf)
        tmp.flat[:: n + 1] = dA
        A = damping * A - (1 - damping) * tmp
        E = (np.diag(A) + np.diag(R)) > 0
        e[:, it % convergence_iter] = E
        if it >= convergence_iter:
            se = np.sum(e, axis=1)
            if np.sum((se == convergence_iter) + (se == 0)) == n and E.sum() > 0:
                never_converged = False
                break
    I = np.flatnonzero(E)  # noqa: E741
    if I.size == 0:
        return np.array([], int), -np.ones(n, int), not never_converged
    c = np.argmax(S[:, I], axis=1)
    c[I] = np.arange(I.size)
    for k in range(I.size):
        ii = np.flatnonzero(c == k)
        I[k] = ii[np.argmax(np.sum(S[ii[:, None], ii], axis=0))]
    c = np.argmax(S[:, I], axis=1)
    c[I] = np.arange(I.size)
    labels = I[c]
    centers = np.unique(labels)
    return centers, np.searchsorted(centers, labels), not never_converged


def partition(labels):
    """The clusters as a set of frozensets: label numbering aside."""
    labels = np.asarray(labels)
    return {frozenset(np.flatnonzero(labels == g).tolist()) for g in set(labels.tolist())}
