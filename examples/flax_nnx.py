"""CAME-Grad with Flax NNX: a two-head model trained through `nnx.Optimizer`.

The model is a shared tanh trunk with two regression heads whose targets conflict (task B's
target is minus task A's plus a second component). The per-task gradients are taken over the
model's `nnx.Param` state: `nnx.split` separates the parameters, `nnx.merge` rebuilds the model
inside the loss function, and `camegrad_jax.task_gradients` returns the two losses and the stacked
gradients. `nnx.Optimizer.update` does not check the gradients against the parameters, so the
stacked-gradient transformation goes first in the chain, where it removes the task axis.

    python examples/flax_nnx.py [--steps 300] [--log-every 100] [--seed 0]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import camegrad_jax as cg


def fmt(values, precision: int = 3) -> str:
    return np.array2string(np.asarray(values), precision=precision, floatmode="fixed")


class TwoHeadRegressor(nnx.Module):
    def __init__(self, in_features: int, width: int, *, rngs: nnx.Rngs):
        self.trunk_in = nnx.Linear(in_features, width, rngs=rngs)
        self.trunk_out = nnx.Linear(width, width, rngs=rngs)
        self.head_a = nnx.Linear(width, 1, rngs=rngs)
        self.head_b = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = jnp.tanh(self.trunk_out(jnp.tanh(self.trunk_in(x))))
        return self.head_a(z)[:, 0], self.head_b(z)[:, 0]


def make_data(seed: int, n: int = 256, dim: int = 8):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (n, dim))
    u, v = jax.random.normal(keys[1], (dim,)), jax.random.normal(keys[2], (dim,))
    y_a = jnp.sin(3 * x @ u / jnp.sqrt(dim))
    y_b = -y_a + 0.5 * jnp.cos(2 * x @ v / jnp.sqrt(dim))
    return x, y_a, y_b


def task_losses(model: TwoHeadRegressor, x, y_a, y_b) -> jax.Array:
    pred_a, pred_b = model(x)
    return jnp.stack([jnp.mean((pred_a - y_a) ** 2), jnp.mean((pred_b - y_b) ** 2)])


@nnx.jit
def train_step(model: TwoHeadRegressor, optimizer: nnx.Optimizer, x, y_a, y_b):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def losses_of(params):
        return task_losses(nnx.merge(graphdef, params, rest), x, y_a, y_b)

    losses, task_grads = cg.task_gradients(losses_of, params)  # leaves (2, *param_shape)
    optimizer.update(model, task_grads)
    return losses


def main(steps: int = 300, log_every: int = 100, seed: int = 0) -> dict:
    """Trains for `steps` steps, prints losses and diagnostics, returns the loss history."""
    x, y_a, y_b = make_data(seed)
    model = TwoHeadRegressor(x.shape[1], 32, rngs=nnx.Rngs(seed))
    tx = optax.chain(cg.camegrad(c=0.5, gamma=1.5, alpha=0.2), optax.adam(3e-3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    print(f"Flax NNX two-head regressor, CAME-Grad + Adam(3e-3), {steps} steps, seed {seed}")
    history = []
    for step in range(1, steps + 1):
        history.append(np.asarray(train_step(model, optimizer, x, y_a, y_b)))
        if step == 1 or step % log_every == 0 or step == steps:
            diagnostics = optimizer.opt_state[0]  # camegrad's MultiTaskState, first in the chain
            stats = diagnostics.stats
            print(
                f"step {step:4d}  losses {fmt(history[-1], 4)}"
                f"  cos(g1, g2) {float(stats.cosine_similarity[...][0, 1]):+.3f}"
                f"  ‖g_lin‖/Σ‖h_i‖ {float(stats.magnitude_collapse_ratio[...]):.3f}"
                f"  dual weights {fmt(diagnostics.method_state.dual_weights[...])}"
            )
    return {"losses": np.stack(history)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.log_every, args.seed)
