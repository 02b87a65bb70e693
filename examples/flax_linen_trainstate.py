"""CAME-Grad with Flax Linen: a two-head model trained through `flax.training.train_state`.

`TrainState.apply_gradients(grads=...)` passes the gradients to `tx.update` and applies the
result, so it accepts the stacked per-task gradients unchanged as long as the stacked-gradient
transformation comes first in `tx`: CAME-Grad removes the task axis before Adam sees them.
The two tasks share a tanh trunk and ask for opposite functions of the same feature.

    python examples/flax_linen_trainstate.py [--steps 300] [--log-every 100] [--seed 0]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import camegrad_jax as cg


def fmt(values, precision: int = 3) -> str:
    return np.array2string(np.asarray(values), precision=precision, floatmode="fixed")


class TwoHeadRegressor(nn.Module):
    width: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        z = jnp.tanh(nn.Dense(self.width, name="trunk_in")(x))
        z = jnp.tanh(nn.Dense(self.width, name="trunk_out")(z))
        return nn.Dense(1, name="head_a")(z)[:, 0], nn.Dense(1, name="head_b")(z)[:, 0]


def make_data(seed: int, n: int = 256, dim: int = 8):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (n, dim))
    u, v = jax.random.normal(keys[1], (dim,)), jax.random.normal(keys[2], (dim,))
    y_a = jnp.cos(2 * x @ u / jnp.sqrt(dim))
    y_b = -y_a + 0.5 * jnp.sin(3 * x @ v / jnp.sqrt(dim))
    return x, y_a, y_b


@jax.jit
def train_step(state: train_state.TrainState, x, y_a, y_b):
    def task_losses(params):
        pred_a, pred_b = state.apply_fn({"params": params}, x)
        return jnp.stack([jnp.mean((pred_a - y_a) ** 2), jnp.mean((pred_b - y_b) ** 2)])

    losses, task_grads = cg.task_gradients(task_losses, state.params)
    return state.apply_gradients(grads=task_grads), losses


def main(steps: int = 300, log_every: int = 100, seed: int = 0) -> dict:
    """Trains for `steps` steps, prints losses and diagnostics, returns the loss history."""
    x, y_a, y_b = make_data(seed)
    module = TwoHeadRegressor()
    state = train_state.TrainState.create(
        apply_fn=module.apply,
        params=module.init(jax.random.key(seed), x)["params"],
        tx=optax.chain(cg.camegrad(c=0.5, gamma=1.5, alpha=0.2), optax.adam(3e-3)),
    )

    print(f"Flax Linen two-head regressor, TrainState, CAME-Grad + Adam(3e-3), {steps} steps")
    history = []
    for step in range(1, steps + 1):
        state, losses = train_step(state, x, y_a, y_b)
        history.append(np.asarray(losses))
        if step == 1 or step % log_every == 0 or step == steps:
            diagnostics = state.opt_state[0]  # camegrad's MultiTaskState, first in the chain
            print(
                f"step {step:4d}  losses {fmt(history[-1], 4)}"
                f"  cos(g1, g2) {float(diagnostics.stats.cosine_similarity[0, 1]):+.3f}"
                f"  ‖g_lin‖/Σ‖h_i‖ {float(diagnostics.stats.magnitude_collapse_ratio):.3f}"
                f"  dual weights {fmt(diagnostics.method_state.dual_weights)}"
            )
    return {"losses": np.stack(history)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.log_every, args.seed)
