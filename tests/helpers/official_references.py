"""NumPy transcriptions of official code and papers that more than one test file checks a method
against (its own test file and the task-scale properties): independent of the library."""

from __future__ import annotations

import numpy as np


def numpy_config(grads, weights=None):
    """The official ``ConFIG_update``: least-squares direction from the unit gradients, then
    ``ProjectionLength`` on the weighted gradients."""
    weights = np.ones(len(grads)) if weights is None else np.asarray(weights)
    direction, *_ = np.linalg.lstsq(unit(grads), weights, rcond=None)
    direction = unit(direction)
    return np.sum((weights[:, None] * grads) @ direction) * direction


def unit(v):
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.where(norm > 0, v / np.where(norm > 0, norm, 1.0), 0.0)


def numpy_gradvac(h, groups, targets, orders, beta):
    """One step of Algorithm 1 (Equations 2 and 3) for every parameter group (index arrays).

    Returns the update and the new targets (G, K, K)."""
    adjusted, new_targets = h.copy(), targets.copy()
    for i in range(len(h)):
        for j in orders[i]:
            if j == i:
                continue
            for g, index in enumerate(groups):
                own, other = adjusted[i, index], h[j, index]
                own_norm, other_norm = np.linalg.norm(own), np.linalg.norm(other)
                nonzero = own_norm > 0 and other_norm > 0
                phi = np.clip(own @ other / (own_norm * other_norm), -1, 1) if nonzero else 0.0
                target = targets[g, i, j]
                if nonzero and phi < target:
                    gap = target * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - target**2)
                    weight = own_norm * gap / (other_norm * np.sqrt(1 - target**2))
                    adjusted[i, index] += weight * other
                new_targets[g, i, j] = (1 - beta) * target + beta * phi
    return adjusted.sum(axis=0), new_targets


def numpy_imtl_g(h):
    """Section 3.2 of the paper: α_{2:K} = g_1 Uᵀ (D Uᵀ)^{-1}, α_1 = 1 − Σ α_{2:K}."""
    units = h / np.linalg.norm(h, axis=1, keepdims=True)
    differences = h[0] - h[1:]
    unit_differences = units[0] - units[1:]
    rest = h[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    return np.concatenate([[1 - rest.sum()], rest]) @ h


def numpy_krum(h, n_byzantine, n_selected):
    """Definition 1 of the paper (Multi-Krum: the mean of the m best-scored), with squared
    distances to the K − f − 2 nearest other proposals."""
    scores = []
    for i, v in enumerate(h):
        others = [np.sum((v - w) ** 2) for j, w in enumerate(h) if j != i]
        scores.append(sum(sorted(others)[: len(h) - n_byzantine - 2]))
    chosen = np.argsort(scores, kind="stable")[:n_selected]
    return h[chosen].mean(axis=0)


def official_min_norm_of_two(v11, v12, v22):
    if v12 >= v11:
        return 0.999
    if v12 >= v22:
        return 0.001
    return -1.0 * ((v12 - v22) / (v11 + v22 - 2 * v12))


def modo_official_run(zetas, gamma, rho, xi1=None, xi2=None, task_weights=None):
    """The official `MoDo.backward` λ step and the update Σ λ_i ζ_i, step by step (float64)."""
    w = np.ones(zetas.shape[1]) if task_weights is None else task_weights
    lambd = np.ones(zetas.shape[1]) / zetas.shape[1]
    updates, lambdas = [], []
    for t, zeta in enumerate(zetas):
        g0 = w[:, None] * (zeta if xi1 is None else xi1[t])
        g1 = w[:, None] * (zeta if xi2 is None else xi2[t])
        lambd = projection2simplex(lambd - gamma * (g0 @ (g1.T @ lambd) + rho * lambd))
        updates.append(lambd @ (w[:, None] * zeta))
        lambdas.append(lambd)
    return np.stack(updates), np.stack(lambdas)


def projection2simplex(y):
    """The official `_projection2simplex` (MGDA's sort-based routine), in NumPy."""
    m = len(y)
    sorted_y = np.sort(y)[::-1]
    tmpsum = 0.0
    tmax_f = (np.sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += sorted_y[i]
        tmax = (tmpsum - 1) / (i + 1.0)
        if tmax > sorted_y[i + 1]:
            tmax_f = tmax
            break
    return np.maximum(y - tmax_f, 0.0)


def numpy_pcgrad(h, order, *, skip_self=True):
    """Algorithm 1 of the paper in parameter space, task i meeting the others in order[i].

    Batched: h is (..., K, D) and order (..., K, K). `skip_self=False` is the rule the paper
    excludes (j = i projected too); the tests use it only to show that a case tells them apart.
    """
    h, order = np.asarray(h, np.float64), np.asarray(order)
    total = np.zeros(h.shape[:-2] + h.shape[-1:])
    for i in range(h.shape[-2]):
        g = h[..., i, :].copy()
        for position in range(h.shape[-2]):
            j = order[..., i, position]
            h_j = np.take_along_axis(h, j[..., None, None], axis=-2)[..., 0, :]
            inner = np.sum(g * h_j, axis=-1)
            conflict = inner < 0
            if skip_self:
                conflict &= j != i
            norm_sq = np.sum(h_j * h_j, axis=-1)  # > 0 wherever inner < 0
            step = np.divide(inner, norm_sq, out=np.zeros_like(inner), where=conflict)
            g = g - step[..., None] * h_j
        total += g
    return total


def sdmgrad_official_run(grads, lamda, niter, eps=0.0, learning_rate=10.0):
    official = OfficialSDMGrad(grads.shape[1], lamda, niter, eps, learning_rate)
    updates, weights = zip(*(official.step(g) for g in grads), strict=True)
    return np.stack(updates), np.stack(weights)


def euclidean_proj_simplex(v):
    """Duchi et al.'s sort-based projection onto the simplex, as in the official code."""
    u = np.sort(v)[::-1]
    cssv = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > (cssv - 1))[0][-1]
    theta = (cssv[rho] - 1) / (rho + 1.0)
    return np.maximum(v - theta, 0)


class OfficialSDMGrad:
    """`SDMGrad.sdmgrad` and `overwrite_grad` in float64; `eps` is the official 1e-4 added to the
    squared task norms (0: this library's exact normalisation), `learning_rate` the official 10
    (None: this library's default, the inverse of the normalised Gram matrix's spectral norm)."""

    def __init__(self, num_tasks, lamda, niter, eps=0.0, learning_rate=10.0):
        self.w = np.ones(num_tasks) / num_tasks
        self.lamda, self.niter, self.eps, self.lr = lamda, niter, eps, learning_rate

    def step(self, zeta, xi1=None, xi2=None):
        xi1 = zeta if xi1 is None else xi1
        xi2 = zeta if xi2 is None else xi2
        gram = xi1 @ xi2.T
        scale = np.mean(np.sqrt(np.maximum(np.diag(gram), 0) + self.eps))
        gram = gram / scale**2
        gram_g = gram.mean(axis=1)
        lr = 1 / np.linalg.norm(gram, 2) if self.lr is None else self.lr
        w, buf = self.w, None
        for _ in range(self.niter):  # torch.optim.SGD(lr, momentum=0.5), fresh each call
            grad = gram @ w + self.lamda * gram_g
            buf = grad if buf is None else 0.5 * buf + grad
            w = euclidean_proj_simplex(w - lr * buf)
        self.w = w
        g = (w @ zeta + self.lamda * zeta.mean(axis=0)) / (1 + self.lamda)
        return len(zeta) * g, w
