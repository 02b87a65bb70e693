"""The transformation on a device mesh: 8 simulated CPU devices, in a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One subprocess with four host devices compiles every layout: 80 s, so in the slow run only
# (with the two-process test, `test_multiprocess.py`).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    script = Path(__file__).parent / "helpers" / "sharding_check.py"
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["data_parallel", "fsdp"])
def test_sharded_step_equals_single_device(results, layout):
    result = results[layout]
    assert result["max_param_error"] < 1e-6
    assert result["loss_error"] < 1e-5
    assert result["coefficients_error"] < 1e-5
    assert result["has_all_reduce"]


def test_data_parallel_gathers_nothing(results):
    assert results["data_parallel"]["all_gathers"] == 0


@pytest.mark.parametrize(
    "case", ["fsdp_transform_only", "fsdp_transform_four_tasks", "fsdp_transform_two_tasks"]
)
def test_gram_is_reduced_across_shards_not_gathered(results, case):
    result = results[case]
    assert result["has_all_reduce"]
    assert result["all_gathers"] == 0
    assert result["max_error"] < 1e-5
    # The update keeps the parameters' sharding (no replication of the result either).
    assert "'d'" in result["output_sharding_kept"]


def test_fsdp_step_keeps_parameter_sharding(results):
    assert "'d'" in results["fsdp"]["output_sharding_kept"]
