"""The README quickstart as a script: CAME-Grad first in a pure optax chain, one jitted step.

A shared vector `w` (and bias `b`) is pulled towards two different targets, so the two task
gradients conflict. `camegrad_jax.task_gradients` returns the two losses and the stacked per-task
gradients (leaves of shape (2, *param_shape)); CAME-Grad turns them into one update that AdamW
then processes. The diagnostics of the last step are read from CAME-Grad's state, which is the
first element of the chain's state.

    python examples/optax_quickstart.py [--steps 200] [--log-every 50]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import camegrad_jax as cg

TASK_WEIGHTS = (1.0, 4.0)


def fmt(values, precision: int = 3) -> str:
    return np.array2string(np.asarray(values), precision=precision, floatmode="fixed")


def loss_fn(params, targets):
    """The K = 2 task losses as a vector: squared distance of w + b to each task's target."""
    residual = params["w"] + params["b"] - targets
    return jnp.sum(residual**2, axis=1)


def main(steps: int = 200, log_every: int = 50) -> dict:
    """Trains for `steps` steps, prints losses and diagnostics, returns the loss history."""
    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array(0.0)}
    targets = jnp.array([[1.0, 1.0, -1.0], [-1.0, 0.5, 1.0]])
    tx = optax.chain(
        cg.camegrad(c=0.5, gamma=1.5, alpha=0.2, task_weights=TASK_WEIGHTS), optax.adamw(5e-3)
    )
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        losses, task_grads = cg.task_gradients(loss_fn, params, targets)
        updates, opt_state = tx.update(task_grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, losses

    print(f"CAME-Grad (c=0.5, γ=1.5, α=0.2, λ={TASK_WEIGHTS}) + AdamW(5e-3), {steps} steps")
    history = []
    for step in range(1, steps + 1):
        params, opt_state, losses = train_step(params, opt_state)
        history.append(np.asarray(losses))
        if step == 1 or step % log_every == 0 or step == steps:
            diagnostics = opt_state[0]  # camegrad's MultiTaskState, first in the chain
            stats = diagnostics.stats
            print(
                f"step {step:4d}  losses {fmt(history[-1], 4)}"
                f"  cos(g1, g2) {float(stats.cosine_similarity[0, 1]):+.3f}"
                f"  ‖g_lin‖/Σ‖h_i‖ {float(stats.magnitude_collapse_ratio):.3f}"
                f"  ‖update‖ {float(stats.update_norm):.3f}"
                f"  dual weights {fmt(diagnostics.method_state.dual_weights)}"
                f"  β {fmt(diagnostics.coefficients)}"
            )
    return {"losses": np.stack(history), "params": jax.device_get(params)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args()
    main(args.steps, args.log_every)
