"""Run by test_sharding.py in a fresh process with 8 simulated CPU devices.

Prints one JSON line with the checks' results. Two layouts on a mesh of 8 devices:
* data parallel: parameters replicated, the batch sharded;
* FSDP-style: every parameter's leading axis sharded (the task axis of the stacked gradients
  replicated), so the Gram matrix must be reduced across shards.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from mesh_problem import problem  # noqa: E402

import camegrad_jax as cg  # noqa: E402


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    params, x, losses = problem()
    keys = jax.random.split(jax.random.key(0), 4)

    tx = optax.chain(cg.camegrad(0.5, 1.5, 0.2, num_tasks=3), optax.adam(1e-3))

    def step(p, s, x):
        values, grads = cg.task_gradients(losses, p, x)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, values

    reference = jax.jit(step)(params, tx.init(params), x)
    results = {}

    layouts = {
        "data_parallel": (jax.tree.map(lambda _: P(), params), P("d")),
        "fsdp": ({"w1": P("d"), "w2": P("d"), "heads": P()}, P()),
    }
    for name, (param_specs, batch_spec) in layouts.items():
        param_sharding = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs)
        sharded_params = jax.device_put(params, param_sharding)
        state = jax.jit(tx.init, out_shardings=None)(sharded_params)
        sharded_x = jax.device_put(x, NamedSharding(mesh, batch_spec))
        jitted = jax.jit(step)
        compiled = jitted.lower(sharded_params, state, sharded_x).compile()
        hlo = compiled.as_text()
        new_params, new_state, values = jitted(sharded_params, state, sharded_x)
        # The second step runs on the first step's outputs, as a training loop does: no
        # transfer between host and devices, or between devices outside the program, may happen.
        with jax.transfer_guard("disallow"):
            jax.block_until_ready(jitted(new_params, new_state, sharded_x))
        errors = [
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(reference[0]), strict=True)
        ]
        gathers = [line for line in hlo.splitlines() if "all-gather" in line and "=" in line]
        results[name] = {
            "max_param_error": max(errors),
            "loss_error": float(np.max(np.abs(np.asarray(values) - np.asarray(reference[2])))),
            "coefficients_error": float(
                np.max(
                    np.abs(
                        np.asarray(new_state[0].coefficients)
                        - np.asarray(reference[1][0].coefficients)
                    )
                )
            ),
            "has_all_reduce": "all-reduce" in hlo,
            "all_gathers": len(gathers),
            "output_sharding_kept": str(new_params["w1"].sharding.spec),
        }
    # The transformation alone on FSDP-sharded stacked gradients (task axis replicated): the
    # Gram matrix must come from per-shard partial sums and an all-reduce, never an all-gather.
    multitask = cg.camegrad(0.5, 1.5, 0.2, num_tasks=3)
    stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p, -p + 0.1]), params)
    specs = {"w1": P(None, "d"), "w2": P(None, "d"), "heads": P()}
    stacked = jax.device_put(stacked, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
    update = jax.jit(multitask.update)
    state = multitask.init(params)
    hlo = update.lower(stacked, state).compile().as_text()
    out, _ = update(stacked, state)
    single, _ = jax.jit(multitask.update)(jax.device_get(stacked), state)
    results["fsdp_transform_only"] = {
        "has_all_reduce": "all-reduce" in hlo,
        "all_gathers": sum("all-gather" in line and "=" in line for line in hlo.splitlines()),
        "max_error": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(single), strict=True)
        ),
        "output_sharding_kept": str(out["w1"].sharding.spec),
    }
    # Leaves long enough that one device would take another road to G: four tasks (a walk chunk
    # by chunk, which along a sharded axis would gather the leaf, so sharded it must not be
    # used) and two tasks (the two-row form, whose reductions XLA partitions like the fused one).
    for case, num_tasks in (("fsdp_transform_four_tasks", 4), ("fsdp_transform_two_tasks", 2)):
        tx_k = cg.camegrad(0.5, 1.5, 0.2, num_tasks=num_tasks)
        big = jax.random.normal(keys[0], (num_tasks, 1024, 256))
        big_params = {"w": big[0]}
        big_stacked = {"w": jax.device_put(big, NamedSharding(mesh, P(None, "d")))}
        big_update = jax.jit(tx_k.update)
        big_state = tx_k.init(big_params)
        hlo = big_update.lower(big_stacked, big_state).compile().as_text()
        out, _ = big_update(big_stacked, big_state)
        single, _ = jax.jit(tx_k.update)({"w": jax.device_get(big_stacked["w"])}, big_state)
        results[case] = {
            "has_all_reduce": "all-reduce" in hlo,
            "all_gathers": sum("all-gather" in line and "=" in line for line in hlo.splitlines()),
            "max_error": float(np.max(np.abs(np.asarray(out["w"]) - np.asarray(single["w"])))),
            "output_sharding_kept": str(out["w"].sharding.spec),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
