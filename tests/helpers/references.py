"""Independent float64 NumPy references for the tests.

Nothing here calls the library. Stage 1 is solved two ways that share no code with it:

* `conflict_averse_direction` enumerates every candidate active set S of the primal
  max_d min_i <h_i, d> s.t. ‖d − g0‖ ≤ r, solves its optimality conditions in parameter space
  (least squares), keeps the feasible candidates and returns the best; it is cross-checked
  against a second-order cone program (cvxpy + Clarabel) in the tests;
* `conflict_averse_direction_search` (K = 2 only) searches the boundary of the trust region
  in the plane of the two gradients with a dense grid and golden-section refinement.
"""

from __future__ import annotations

import itertools

import numpy as np


def conflicting_gradients(rng: np.random.Generator, num_tasks: int, dim: int) -> np.ndarray:
    """Random task gradients with mixed signs of cosine similarity and spread-out norms."""
    shared = rng.normal(size=dim)
    grads = rng.normal(size=(num_tasks, dim)) + rng.uniform(-0.5, 1.0) * shared
    return grads * np.exp(rng.uniform(-1.5, 1.5, size=(num_tasks, 1)))


def worst_gain(h: np.ndarray, d: np.ndarray) -> float:
    return float(np.min(h @ d))


def conflict_averse_direction(h: np.ndarray, c: float) -> np.ndarray:
    """Exact Stage-1 direction by enumeration of active sets (K ≤ 10)."""
    num_tasks = h.shape[0]
    g0 = h.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    if radius == 0:
        return g0
    best, best_gain = None, -np.inf
    scale = np.linalg.norm(h, axis=1).max()
    for size in range(1, num_tasks + 1):
        for support in itertools.combinations(range(num_tasks), size):
            hs = h[list(support)]  # d = g0 + hsᵀ z, with <h_i, d> = t on the support
            gram = hs @ hs.T
            base = hs @ g0
            a, *_ = np.linalg.lstsq(gram, np.ones(size), rcond=None)
            e, *_ = np.linalg.lstsq(gram, base, rcond=None)
            if not (np.allclose(gram @ a, 1.0, atol=1e-9) and np.allclose(gram @ e, base)):
                continue
            quad_a, quad_b = a @ gram @ a, a @ gram @ e
            quad_c = e @ gram @ e - radius**2
            disc = quad_b**2 - quad_a * quad_c
            if quad_a <= 0 or disc < 0:
                continue
            t = (quad_b + np.sqrt(disc)) / quad_a
            z = t * a - e
            if np.any(z < -1e-10 * np.abs(z).max()):
                continue
            d = g0 + hs.T @ z
            if np.min(h @ d) < t - 1e-9 * scale**2:
                continue
            if t > best_gain:
                best, best_gain = d, t
    if best is None:
        raise AssertionError("no active set satisfied the optimality conditions")
    return best


def conflict_averse_direction_search(h: np.ndarray, c: float, grid: int = 20001) -> np.ndarray:
    """Stage-1 direction for K = 2 by search over the trust region's boundary circle."""
    assert h.shape[0] == 2
    g0 = h.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    basis, _ = np.linalg.qr(h.T)  # orthonormal basis of span{h1, h2}
    coords = h @ basis  # (2, 2)

    def gain(theta):
        v = radius * np.stack([np.cos(theta), np.sin(theta)], axis=-1)
        return np.min((coords @ v.T).T + h @ g0, axis=-1)

    thetas = np.linspace(-np.pi, np.pi, grid)
    i = int(np.argmax(gain(thetas)))
    lo, hi = thetas[max(i - 1, 0)], thetas[min(i + 1, grid - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(200):
        m1, m2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if gain(np.array([m1]))[0] < gain(np.array([m2]))[0]:
            lo = m1
        else:
            hi = m2
    theta = 0.5 * (lo + hi)
    return g0 + basis @ (radius * np.array([np.cos(theta), np.sin(theta)]))


def camegrad_update(
    grads: np.ndarray,
    c: float,
    gamma: float,
    alpha: float,
    task_weights=None,
    rectify: bool = True,
    enhance: bool = True,
    fuse: bool = True,
) -> np.ndarray:
    """CAME-Grad in parameter space, line by line from docs/algorithm.md (float64)."""
    grads = np.asarray(grads, np.float64)
    weights = np.ones(len(grads)) if task_weights is None else np.asarray(task_weights, float)
    h = weights[:, None] * grads
    g_lin = h.sum(axis=0)
    g0 = g_lin / len(h)
    d = conflict_averse_direction(h, c) if rectify else g0
    target = gamma * np.linalg.norm(g_lin)
    if enhance:
        enhanced = target * d / np.linalg.norm(d)
        anchor = gamma * g_lin
    else:
        enhanced, anchor = d, g_lin
    return (1 - alpha) * enhanced + alpha * anchor if fuse else enhanced
