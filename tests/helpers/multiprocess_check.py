"""One of the two JAX processes that test_multiprocess.py launches on this machine.

``python multiprocess_check.py PORT PROCESS_ID``: joins a two-process JAX cluster over loopback
(gloo collectives on CPU, 4 host devices per process, one global mesh of 8 devices), runs a
camegrad train step with FSDP-sharded parameters (a small MLP, then the reference
report-generation model with the trainer's step function), and runs the same steps on one local
device with no sharding as the single-process reference. Process 0 prints one JSON line of results.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from mesh_problem import problem  # noqa: E402
from rrg.rrg_tiny import TINY_FIELDS  # noqa: E402

import camegrad_jax as cg  # noqa: E402

# The reference report-generation setup at tiny sizes, without dropout: dropout masks drawn from
# RBG keys are not guaranteed to be the same once XLA partitions the program.
TINY_TRAIN = {**TINY_FIELDS, "dropout": 0.0}


def fsdp_spec(leaf) -> P:
    """The leading axis sharded where it divides over the 8 devices, else replicated."""
    return P("d") if leaf.ndim >= 1 and leaf.shape[0] % 8 == 0 else P()


def to_global(tree, sharding_of):
    """Global arrays from host values that every process holds in full."""
    return jax.tree.map(
        lambda v: jax.make_array_from_callback(v.shape, sharding_of(v), lambda i, v=v: v[i]),
        jax.device_get(tree),
    )


# The step's diagnostics that are not round-off themselves (the duality gap and the solver's
# residual are ~1e-8 and their relative differences mean nothing).
COMPARED_DIAGNOSTICS = (
    "loss_cls",
    "loss_lm",
    "coefficients",
    "cosine_similarity",
    "task_norms",
    "joint_norm",
    "update_norm",
    "direction_norm",
)


def entrywise_differences(a, b) -> np.ndarray:
    """|a − b| of two pytrees of the same structure, every entry in one flat vector."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return np.concatenate([np.abs(np.ravel(x) - np.ravel(y)) for x, y in pairs])


def reference_model_step(mesh: Mesh) -> dict:
    """Two camegrad train steps of the reference model (the trainer's own step function), FSDP
    over the global mesh, against the same steps on one local device."""
    from camegrad_jax.rrg.config import TrainConfig
    from camegrad_jax.rrg.experiment import build_setup, load_data, make_train_step

    config = TrainConfig(**TINY_TRAIN).replace(optimizer="camegrad")
    dataset = load_data(config)
    batch = next(iter(dataset.iterate_batches("train", config.batch_size, drop_last=True)))
    setup = build_setup(config, dataset=dataset)
    step_fn = make_train_step(setup.graphdef, setup.tx, setup.schedule, config.seed)
    host = jax.device_get((setup.params, setup.rest, batch))

    local = jax.local_devices()[0]
    params, rest, local_batch = jax.device_put(host, local)
    # Two steps: the schedule (counted in the optimizer state) warms up from 0 at the first.
    expected, opt_state, _ = step_fn(params, setup.init_opt_state(params), rest, local_batch, 0)
    expected, _, expected_diag = step_fn(expected, opt_state, rest, local_batch, 1)
    expected, expected_diag = jax.device_get((expected, expected_diag))

    replicated = NamedSharding(mesh, P())
    params = to_global(host[0], lambda v: NamedSharding(mesh, fsdp_spec(v)))
    rest, global_batch = to_global(host[1:], lambda v: replicated)
    opt_state = jax.jit(setup.init_opt_state)(params)
    new_params, opt_state, _ = step_fn(params, opt_state, rest, global_batch, 0)
    new_params, _, diag = step_fn(new_params, opt_state, rest, global_batch, 1)
    got, diag = multihost_utils.process_allgather((new_params, diag), tiled=True)
    sharded_leaves = sum(fsdp_spec(v) == P("d") for v in jax.tree.leaves(host[0]))
    errors = entrywise_differences(got, expected)
    changes = entrywise_differences(expected, host[0])
    # The diagnostics of the second step: losses, G's statistics and camegrad's coefficients.
    diag_errors = {
        name: float(
            np.max(np.abs(np.asarray(diag[name], np.float64) - expected_diag[name]))
            / max(float(np.max(np.abs(expected_diag[name]))), 1e-30)
        )
        for name in COMPARED_DIAGNOSTICS
    }
    return {
        # Adam divides each entry's gradient by its own scale: where a gradient is near 0 its
        # round-off (which differs with the partitioning) can move the step by O(lr), so the
        # parameters are compared on average and the diagnostics entry by entry.
        "model_param_mean_error": float(np.mean(errors)),
        "model_param_mean_change": float(np.mean(changes)),
        "model_diagnostics_relative_error": diag_errors,
        "model_sharded_leaves": int(sharded_leaves),
    }


def main(port: int, process_id: int) -> None:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        local_device_ids=list(range(4)),
    )
    assert jax.process_count() == 2 and len(jax.devices()) == 8, jax.devices()
    assert len(jax.local_devices()) == 4
    params, x, losses = problem()
    tx = optax.chain(cg.camegrad(0.5, 1.5, 0.2, num_tasks=3), optax.adam(1e-3))

    def step(p, s, x):
        values, grads = cg.task_gradients(losses, p, x)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, values

    # The single-process reference: the same step on one local device, no mesh.
    local = jax.local_devices()[0]
    reference = jax.jit(step)(*jax.device_put((params, tx.init(params), x), local))
    reference = jax.device_get(reference)

    # One global mesh over both processes' devices; FSDP: the weights' leading axis sharded,
    # the small heads and the batch replicated.
    mesh = Mesh(np.array(jax.devices()), ("d",))
    specs = {"w1": P("d"), "w2": P("d"), "heads": P()}
    shardings = {name: NamedSharding(mesh, spec) for name, spec in specs.items()}
    replicated = NamedSharding(mesh, P())
    # Every process holds the full host values; each builds its own shards of the global arrays.
    sharded = {
        name: jax.make_array_from_callback(value.shape, shardings[name], lambda i, v=value: v[i])
        for name, value in jax.device_get(params).items()
    }
    host_x = np.asarray(x)
    global_x = jax.make_array_from_callback(host_x.shape, replicated, lambda i: host_x[i])
    state = jax.jit(tx.init)(sharded)
    jitted = jax.jit(step)
    hlo = jitted.lower(sharded, state, global_x).compile().as_text()
    new_params, new_state, values = jitted(sharded, state, global_x)
    # A second step on the first one's outputs, as a training loop runs.
    new_params, new_state, values = jitted(new_params, new_state, global_x)
    reference = jax.jit(step)(*jax.device_put(reference[:2], local), jax.device_put(x, local))

    gathered = multihost_utils.process_allgather(
        (new_params, new_state[0].coefficients, values), tiled=True
    )
    got_params, got_coefficients, got_values = gathered
    errors = {
        "max_param_error": max(
            float(np.max(np.abs(np.asarray(got_params[k]) - np.asarray(reference[0][k]))))
            for k in params
        ),
        "coefficients_error": float(
            np.max(np.abs(np.asarray(got_coefficients) - np.asarray(reference[1][0].coefficients)))
        ),
        "loss_error": float(np.max(np.abs(np.asarray(got_values) - np.asarray(reference[2])))),
        "has_all_reduce": "all-reduce" in hlo,
        "param_sharding": str(new_params["w1"].sharding.spec),
        "addressable_shards": len(new_params["w1"].addressable_shards),
        "process_count": jax.process_count(),
    }
    errors.update(reference_model_step(mesh))
    if process_id == 0:
        print(json.dumps(errors), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
