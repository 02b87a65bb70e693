"""Every script in examples/ runs at tiny settings: its losses fall and stay finite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# Tiny settings per example (the defaults are for a reader; these keep the suite fast).
TINY = {
    "optax_quickstart": {"steps": 40, "log_every": 20},
    "flax_nnx": {"steps": 40, "log_every": 20},
    "flax_linen_trainstate": {"steps": 40, "log_every": 20},
    "three_tasks_shared_mask": {"steps": 40, "log_every": 20},
    "two_task_quickstart": {"steps": 40},
}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # Dataclasses (Flax Linen modules) look their module up.
    spec.loader.exec_module(module)
    return module


def test_every_example_has_tiny_settings():
    assert sorted(TINY) == sorted(path.stem for path in EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("name", [name for name in TINY if name != "two_task_quickstart"], ids=str)
def test_example_losses_fall(name, capsys):
    result = load(name).main(**TINY[name])
    losses = result["losses"]
    assert losses.shape[0] == TINY[name]["steps"]
    assert np.all(np.isfinite(losses))
    # The tasks conflict, so one of them may rise for a while; their sum must fall.
    assert losses[-5:].sum(axis=1).mean() < 0.9 * losses[0].sum()
    assert f"step {TINY[name]['steps']:4d}" in capsys.readouterr().out


def test_two_task_quickstart_runs(capsys):
    results = load("two_task_quickstart").main(**TINY["two_task_quickstart"])
    assert [r["optimizer"] for r in results] == ["linear scalarization", "CAME-Grad"]
    for result in results:
        assert np.isfinite(result["final_total"])
    assert "CAME-Grad" in capsys.readouterr().out
