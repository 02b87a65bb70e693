"""STGU against a NumPy transcription of the official training loop, and the step's invariants
(the clustering itself is tested in test_affinity_propagation.py).

Every test compiles a step or a clustering of its own; those beyond the reference comparison,
the lone group and the bad inputs are slow-marked (`-m slow`): the permutation order and warm-up,
`lax.scan`, bfloat16 and state sizing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers.affinity_propagation import numpy_affinity_propagation, partition

import camegrad_jax as cg
from camegrad_jax._stgu import affinity_groups

# --- NumPy transcriptions -------------------------------------------------------------------


class OfficialAffinity:
    """`form_task_affinity` of the official `utils/train_utils.py`, tasks numbered 0..K-1."""

    def __init__(self, k, decay, preference=None):
        self.tasks = list(range(k))
        self.group = {f"group{i + 1}": [i] for i in range(k)}
        self.decay = decay
        self.preference = preference
        self.affinity_map = np.zeros((k, k))
        self.pre_loss = [-1.0] * k

    def update(self, group, loss):
        members = self.group[group]
        for s in members:
            for t in self.tasks:
                if self.pre_loss[t] <= 0:
                    continue
                if t in members:
                    if self.pre_loss[s] <= 0:
                        continue
                    affin_t = (1 - loss[t] / self.pre_loss[t]) / len(members)
                    affin_s = (1 - loss[s] / self.pre_loss[s]) / len(members)
                    if t == s:
                        if affin_t >= 0:
                            self.affin_update(affin_t, s, t)
                    elif affin_t * affin_s >= 0:
                        self.affin_update(affin_t, s, t)
                    else:
                        self.affin_update(-max(affin_t, affin_s), s, t)
                else:
                    self.affin_update((1 - loss[t] / self.pre_loss[t]) / len(members), s, t)
        self.pre_loss = list(loss)

    def affin_update(self, affin, s, t):
        self.affinity_map[s, t] = (1 - self.decay) * self.affinity_map[s, t] + self.decay * affin

    def next_group(self):
        X = self.affinity_map.copy()
        for i in range(len(X)):
            X[:, i] /= X[i, i]
        X = (X + X.T) / 2
        convergence_iter = 50
        for _ in range(10):
            centers, labels, converged = numpy_affinity_propagation(
                X, self.preference, convergence_iter
            )
            # scikit-learn 1.0.2 (the official environment): no cluster unless converged.
            res = {f"group{i + 1}": [t for t in self.tasks if labels[t] == i]
                   for i in range(len(centers)) if converged}  # fmt: skip
            if res:
                break
            convergence_iter += 100
        if res:
            self.group = res


class NumpyAdam:
    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
        self.m = self.v = None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g**2
            m_hat = self.m[i] / (1 - self.b1**self.t)
            v_hat = self.v[i] / (1 - self.b2**self.t)
            out.append(p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps))
        return out


def numpy_model(params, x, y, in_group=None, normalize=False, weights=1.0):
    """Losses L_k = mean((tanh(x W) V_k - y_k)^2) and the gradient of Σ_{k ∈ group} L_k."""
    w, v = params
    hidden = np.tanh(x @ w)
    residual = hidden @ v - y
    losses = np.mean(residual**2, axis=0)
    if in_group is None:
        return losses, None
    weight = weights * in_group / (in_group.sum() if normalize else 1.0)
    d_pred = 2 * residual * weight[None, :] / x.shape[0]
    grad_v = hidden.T @ d_pred
    grad_w = x.T @ ((d_pred @ v.T) * (1 - hidden**2))
    return losses, [grad_w, grad_v]


def jax_loss(params, x, y):
    residual = jnp.tanh(x @ params["w"]) @ params["v"] - y
    return jnp.mean(residual**2, axis=0)


def tiny_problem(k, seed=0, n=12, d=5, h=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    mix = rng.normal(size=(d, k))
    mix[:, : k // 2] += 1.5 * rng.normal(size=(d, 1))  # half the tasks alike
    y = np.tanh(x @ mix) + 0.1 * rng.normal(size=(n, k))
    params = {"w": 0.5 * rng.normal(size=(d, h)), "v": 0.5 * rng.normal(size=(h, k))}
    return x, y, params


def test_affinity_groups_keep_groups_when_not_finite():
    labels, count = jax.jit(affinity_groups)(jnp.zeros((3, 3)), jax.random.PRNGKey(0))
    assert int(count) == 0
    assert labels.shape == (3,)


# --- the training step ------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_step_matches_official_training_loop(normalize):
    k, steps, warmup, decay, lr = 4, 7, 1, 0.4, 0.05
    x, y, params0 = tiny_problem(k)
    weights = np.array([1.0, 2.0, 0.5, 1.0])
    loop = cg.stgu(jax_loss, optax.adam(lr), affinity_decay=decay, warmup_steps=warmup,
                   normalize_group_loss=normalize, seed=3, task_weights=weights)  # fmt: skip
    step = jax.jit(loop.step)
    params = jax.tree.map(jnp.asarray, params0)
    state = loop.init(params)

    official = OfficialAffinity(k, decay)
    adam = NumpyAdam(lr)
    ref = [params0["w"], params0["v"]]
    seen_groups = set()
    for iter_count in range(steps):
        params, state, info = step(params, state, jnp.asarray(x), jnp.asarray(y))
        if iter_count > warmup:
            official.next_group()
        # Partitions, not labels: a two-task cluster's exemplar (so its number) is a tie that
        # the clustering noise breaks.
        groups = np.asarray(state.groups)
        assert partition(groups) == {frozenset(m) for m in official.group.values()}
        seen_groups.add(len(official.group))
        by_members = {frozenset(m): name for name, m in official.group.items()}
        used = np.asarray(info.order)[: int(info.num_updates)]
        sequence = [by_members[frozenset(np.flatnonzero(groups == g).tolist())] for g in used]
        if len(official.group) == 1:
            assert len(sequence) == 2
        else:
            assert sorted(sequence) == sorted(official.group)
        official.pre_loss = [-1.0] * k
        for g, name in enumerate(sequence):
            in_group = np.isin(np.arange(k), official.group[name]).astype(float)
            losses, grads = numpy_model(ref, x, y, in_group, normalize, weights)
            if g == 0:
                np.testing.assert_allclose(info.losses, losses, rtol=1e-4)
            ref = adam.step(ref, grads)
            official.update(name, losses)
        np.testing.assert_allclose(params["w"], ref[0], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(params["v"], ref[1], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(state.affinity, official.affinity_map, rtol=2e-3, atol=1e-5)
    assert seen_groups - {k}, "the clustering never merged tasks: the test exercises too little"


def test_one_task_updates_twice_and_optimizer_counts_updates():
    x, y, params = tiny_problem(1)
    loop = cg.stgu(jax_loss, optax.adam(0.01), warmup_steps=0)
    state = loop.init(params)
    step = jax.jit(loop.step)
    for expected in (2, 4, 6):
        params, state, info = step(params, state, x, y)
        assert int(info.num_updates) == 2
        assert int(state.opt_state[0].count) == expected


@pytest.mark.slow  # a compilation of its own: ~5 s
def test_order_is_a_permutation_of_the_groups_and_warmup_keeps_singletons():
    k = 5
    x, y, params = tiny_problem(k, seed=1)
    params = jax.tree.map(jnp.asarray, params)
    loop = cg.stgu(jax_loss, optax.adam(0.05), affinity_decay=0.5, warmup_steps=2, num_tasks=k)
    state = loop.init(params)
    step = jax.jit(loop.step)
    total = 0
    for n in range(8):
        params, state, info = step(params, state, x, y)
        m = int(state.num_groups)
        used = np.asarray(info.order)[: int(info.num_updates)]
        if n <= 2:
            np.testing.assert_array_equal(state.groups, np.arange(k))
        if m > 1:
            assert sorted(used.tolist()) == list(range(m))
        assert sorted(set(np.asarray(state.groups).tolist())) == list(range(m))
        total += int(info.num_updates)
        assert int(state.opt_state[0].count) == total
        assert np.all(np.isfinite(np.asarray(state.affinity)))
    assert step._cache_size() == 1  # num_tasks given: one compilation


@pytest.mark.slow  # a compilation of its own: ~5 s
def test_scan_over_steps_equals_the_loop():
    k = 3
    x, y, params = tiny_problem(k, seed=2)
    params = jax.tree.map(jnp.asarray, params)
    loop = cg.stgu(jax_loss, optax.sgd(0.1), affinity_decay=0.5, warmup_steps=1, num_tasks=k)

    def body(carry, _):
        p, s = carry
        p, s, info = loop.step(p, s, x, y)
        return (p, s), info.losses

    (scanned, _), losses = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), length=4))(
        params, loop.init(params)
    )
    state = loop.init(params)
    step = jax.jit(loop.step)
    for n in range(4):
        params, state, info = step(params, state, x, y)
        np.testing.assert_allclose(losses[n], info.losses, rtol=1e-6)
    np.testing.assert_allclose(scanned["w"], params["w"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # a compilation of its own: ~5 s
def test_bfloat16_parameters_and_state_sized_at_first_step():
    x, y, params = tiny_problem(2, seed=3)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
    loop = cg.stgu(jax_loss, optax.sgd(0.05), warmup_steps=0, affinity_decay=0.5)
    state = loop.init(params)
    assert state.affinity.shape == (0, 0)
    x, y = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    step = jax.jit(loop.step)
    for _ in range(3):
        params, state, _ = step(params, state, x, y)
    assert state.affinity.shape == (2, 2)
    assert params["w"].dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


def test_wrong_number_of_losses_is_refused():
    x, y, params = tiny_problem(3)
    loop = cg.stgu(jax_loss, optax.sgd(0.1), num_tasks=2)
    with pytest.raises(ValueError, match="K = 3"):
        loop.step(params, loop.init(params), x, y)
    scalar = cg.stgu(lambda p, x, y: jnp.sum(jax_loss(p, x, y)), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"\(K,\) vector"):
        scalar.step(params, scalar.init(params), x, y)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"affinity_decay": 0.0}, ValueError, "affinity_decay = 0.0"),
        ({"affinity_decay": 1.5}, ValueError, "affinity_decay = 1.5"),
        ({"affinity_decay": "0.1"}, TypeError, "affinity_decay"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps = -1"),
        ({"warmup_steps": 2.5}, ValueError, "warmup_steps = 2.5"),
        ({"preference": float("nan")}, ValueError, "preference = nan"),
        ({"normalize_group_loss": 1}, TypeError, "normalize_group_loss = 1"),
        ({"damping": 0.4}, ValueError, "damping = 0.4"),
        ({"damping": 1.0}, ValueError, "damping = 1.0"),
        ({"convergence_iter": 0}, ValueError, "convergence_iter = 0"),
        ({"max_iter": 0}, ValueError, "max_iter = 0"),
        ({"seed": 0.5}, ValueError, "seed = 0.5"),
        ({"num_tasks": 0}, ValueError, "num_tasks = 0"),
        ({"task_weights": [1.0, -1.0]}, ValueError, "task_weights"),
        ({"task_weights": [1.0, 1.0], "num_tasks": 3}, ValueError, "num_tasks = 3"),
        ({"optimizer": "adam"}, TypeError, "optimizer = 'adam'"),
        ({"loss_fn": 3}, TypeError, "loss_fn = 3"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"loss_fn": jax_loss, "optimizer": optax.sgd(0.1), **kwargs}
    with pytest.raises(error, match=match):
        cg.stgu(**arguments)
