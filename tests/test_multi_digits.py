"""The Multi-Digits benchmark (`benchmarks/multi_digits.py`): the composites' invariants, Δm,
the method selection, and a tiny training run. The source digits here are stand-ins (one noisy
pattern per class) so that the tests need neither scikit-learn nor its data."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "multi_digits.py"


@pytest.fixture(scope="module")
def md():
    spec = importlib.util.spec_from_file_location("multi_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["multi_digits"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stand_in_digits(count=300, seed=0):
    """(count, 8, 8) images in [0, 1]: a fixed random pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    patterns = (rng.uniform(size=(10, 8, 8)) > 0.6).astype(np.float32)
    labels = rng.integers(0, 10, count).astype(np.int32)
    noise = rng.normal(0, 0.15, (count, 8, 8))
    return np.clip(patterns[labels] + noise, 0, 1).astype(np.float32), labels


def test_composites_have_the_documented_shapes_and_labels(md):
    images, labels = stand_in_digits()
    data = md.make_multi_digits(images, labels, num_train=50, num_test=20, seed=3)
    assert data.train_images.shape == (50, 14, 14, 1)
    assert data.test_images.shape == (20, 14, 14, 1)
    assert data.train_labels.shape == (50, 3) and data.test_labels.shape == (20, 3)
    for targets in (data.train_labels, data.test_labels):
        assert targets[:, :2].min() >= 0 and targets[:, :2].max() <= 9
        np.testing.assert_array_equal(targets[:, 2], targets[:, 0] + targets[:, 1])
    assert data.train_images.min() >= 0 and data.train_images.max() <= 1


def test_composites_are_deterministic_in_the_seed(md):
    images, labels = stand_in_digits()
    first = md.make_multi_digits(images, labels, num_train=30, num_test=10, seed=1)
    again = md.make_multi_digits(images, labels, num_train=30, num_test=10, seed=1)
    other = md.make_multi_digits(images, labels, num_train=30, num_test=10, seed=2)
    np.testing.assert_array_equal(first.train_images, again.train_images)
    np.testing.assert_array_equal(first.test_labels, again.test_labels)
    assert not np.array_equal(first.train_images, other.train_images)


def test_digits_sit_in_their_corners_and_test_digits_are_unseen(md):
    # Source image n is constant (n + 1) / N, so a composite's corner pixel names its source.
    count = 40
    images = np.broadcast_to(((np.arange(count) + 1) / count)[:, None, None], (count, 8, 8))
    labels = np.arange(count) % 10
    data = md.make_multi_digits(images, labels, num_train=200, num_test=100, seed=0, max_shift=0)
    for composites, targets in (
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ):
        left = np.rint(composites[:, 0, 0, 0] * count).astype(int) - 1  # only the left digit
        right = np.rint(composites[:, 13, 13, 0] * count).astype(int) - 1  # only the right one
        np.testing.assert_array_equal(labels[left], targets[:, 0])
        np.testing.assert_array_equal(labels[right], targets[:, 1])
        # Where they overlap (rows and columns 6 and 7), the brighter one shows.
        np.testing.assert_allclose(
            composites[:, 6, 6, 0], np.maximum(images[left, 0, 0], images[right, 0, 0])
        )
        # Outside both digits, the canvas is empty.
        np.testing.assert_array_equal(composites[:, 0, 13, 0], 0.0)
    train_sources = set(np.rint(data.train_images[:, 0, 0, 0] * count).astype(int))
    test_sources = set(np.rint(data.test_images[:, 0, 0, 0] * count).astype(int))
    assert train_sources.isdisjoint(test_sources)
    assert len(test_sources) <= round(0.3 * count)


def test_shifts_stay_within_their_range(md):
    images, labels = stand_in_digits()
    data = md.make_multi_digits(images, labels, num_train=200, num_test=10, seed=0)
    # The left digit starts within 2 pixels of the top-left corner, the right one ends within
    # 2 of the bottom-right: nothing can reach row/column 0 of the right digit's far corner.
    composites = data.train_images[..., 0]
    assert np.any(composites[:, :2, :2] > 0)
    assert np.all(composites[:, 12:, :2] == 0) and np.all(composites[:, :2, 12:] == 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.zeros((5, 7, 7))}, "`images` should have shape"),
        ({"labels": np.zeros(4, int)}, "`images` should have shape"),
        ({"canvas": 9, "max_shift": 2}, "`canvas` should be at least"),
    ],
)
def test_bad_inputs_are_refused(md, kwargs, message):
    images, labels = stand_in_digits(5)
    arguments = {"images": images, "labels": labels, "num_train": 2, "num_test": 2, "seed": 0}
    with pytest.raises(ValueError, match=message):
        md.make_multi_digits(**{**arguments, **kwargs})


def test_delta_m_signs_follow_the_metric_direction(md):
    baseline = np.array([0.8, 0.5, 2.0])  # accuracies (higher better), MAE (lower better)
    metrics = np.array([[0.88, 0.5, 1.0], [0.8, 0.5, 2.0]])
    # (+10% + 0% + 50%) / 3, and no change at all.
    np.testing.assert_allclose(md.delta_m(metrics, baseline, md.ALL_TASKS), [20.0, 0.0])


def test_every_value_only_transformation_is_selected(md):
    import camegrad_jax as cg

    chosen, skipped = md.select_methods(None)
    names = {info.name for info in chosen}
    assert {"linear", "camegrad", "stch", "famo"} <= names
    for info in cg.METHODS:
        expected = info.is_transformation and set(info.inputs) <= {"value"}
        assert (info.name in names) == expected
    assert any(name == "rotograd_scaling" for name, _ in skipped)
    with pytest.raises(SystemExit, match="Unknown methods"):
        md.select_methods(["no_such_method"])


def test_a_tiny_run_trains(md):
    import jax

    import camegrad_jax as cg

    images, labels = stand_in_digits()
    data = md.make_multi_digits(images, labels, num_train=256, num_test=128, seed=0)
    config = md.TrainConfig(steps=60, batch_size=32, seeds=1, tasks=("left", "right"))
    run = md.make_run(config, lambda params: cg.stch(num_tasks=2), needs_values=True)
    # One seed, without run_seeds' vmap: one compilation fewer (the slow test runs the vmap).
    metrics, conflicts, losses = jax.jit(run)(jax.random.key(0), data)
    assert metrics.shape == (2,) and conflicts.shape == (60,) and losses.shape == (60, 2)
    # Chance is 0.1 and the losses start near log 10.
    assert np.all(np.asarray(metrics) > 0.3)
    assert np.all(np.asarray(losses[-10:]).mean(axis=0) < 0.7 * np.log(10))


def test_scikit_learn_digits_load_when_installed(md):
    pytest.importorskip("sklearn")
    images, labels = md.load_source_digits()
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    assert images.min() == 0.0 and images.max() == 1.0


@pytest.mark.slow
def test_quick_command_writes_its_outputs(md, tmp_path):
    images, labels = stand_in_digits(200)
    np.savez(tmp_path / "digits.npz", images=images * 16, labels=labels)
    out = tmp_path / "r.json"
    md.main(
        [
            "--quick",
            "--methods",
            "linear,stch",
            "--digits-npz",
            str(tmp_path / "digits.npz"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "r.md"),
            "--figure",
            str(tmp_path / "r.png"),
        ]
    )
    result = json.loads(out.read_text())
    assert [m["name"] for m in result["methods"]] == ["linear", "stch"]
    assert all(np.isfinite(m["delta_m_mean"]) for m in result["methods"])
    assert "| `stch` |" in (tmp_path / "r.md").read_text()
    assert all(m["vectorised"] for m in result["methods"])
    assert (tmp_path / "r.png").exists()
