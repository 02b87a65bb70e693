"""Two JAX processes on this machine, one global mesh of 8 CPU devices (gloo over loopback):
the FSDP-sharded camegrad train steps (an MLP, and the reference model's) equal one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# About 1–2 minutes on 2 shared cores: two processes compile and run the step and its reference.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "helpers" / "multiprocess_check.py"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(port), str(process_id)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for process_id in (0, 1)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def test_two_processes_form_one_mesh(result):
    assert result["process_count"] == 2
    # w1's 64 rows over 8 devices: each process holds 4 of the 8 shards.
    assert result["addressable_shards"] == 4
    assert "'d'" in result["param_sharding"]


def test_sharded_two_process_step_equals_one_process(result):
    assert result["max_param_error"] < 1e-6
    assert result["coefficients_error"] < 1e-5
    assert result["loss_error"] < 1e-5
    # The Gram matrix is summed across the shards (and so across the processes).
    assert result["has_all_reduce"]


def test_reference_model_train_steps_equal_one_process(result):
    assert result["model_sharded_leaves"] > 0
    errors = result["model_diagnostics_relative_error"]
    assert {"coefficients", "joint_norm", "update_norm"} <= set(errors)
    assert max(errors.values()) < 1e-4, errors
    assert result["model_param_mean_change"] > 1e-5  # the second step did move the parameters
    assert result["model_param_mean_error"] < 0.01 * result["model_param_mean_change"]
