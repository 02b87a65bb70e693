"""Tests of the ``camegrad-rrg`` command line (`camegrad_jax.rrg.cli`), called in-process."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rrg_tiny import TINY_DATA_FLAGS, TINY_FLAGS

from camegrad_jax.rrg.cli import COMMANDS, main
from camegrad_jax.rrg.data import load_dataset
from camegrad_jax.rrg.optim import available_methods
from camegrad_jax.rrg.results import RESULTS_FILE
from camegrad_jax.rrg.synthetic import SyntheticConfig, generate_synthetic

pytestmark = pytest.mark.usefixtures("compilation_cache")

LAYOUT = SyntheticConfig(num_train=64, num_val=16, num_test=16, image_size=16)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layout")
    args = ["--num-train", "64", "--num-val", "16", "--num-test", "16", "--image-size", "16"]
    assert main(["make-synthetic", str(out), *args]) == 0
    return out / "annotation.json"


@pytest.fixture(scope="module")
def cli_run(layout, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("cli_run")
    argv = ["train", "--ann-path", str(layout), "--dataset-name", "iu_xray"]
    assert main([*argv, *TINY_FLAGS, "--save-dir", str(save_dir)]) == 0
    return save_dir


@pytest.mark.parametrize("command", [None, *(c.name for c in COMMANDS)])
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: camegrad-rrg{'' if command is None else ' ' + command}")
    if command == "train":
        for flag in ("--ann-path", "--optimizer", "--c", "--gamma", "--alpha", "--resume"):
            assert flag in usage
        assert ",".join(available_methods()) in usage


def test_module_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "camegrad_jax.rrg.cli", "make-synthetic", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "annotation.json" in done.stdout


def test_make_synthetic_writes_a_layout_the_loader_reads(layout):
    dataset = load_dataset(layout, dataset_name="iu_xray", image_size=16)
    generated = generate_synthetic(LAYOUT)
    for split in ("train", "val", "test"):
        assert dataset.splits[split].reports == generated[split].reports
        np.testing.assert_array_equal(dataset.splits[split].labels, generated[split].labels)
    assert dataset.splits["train"].images.shape == (64, 2, 16, 16)


def test_train_on_the_written_layout_then_evaluate(cli_run, layout, capsys, tmp_path):
    results = json.loads((cli_run / RESULTS_FILE).read_text())
    assert results["status"] == "complete"
    assert results["data"]["source"] == "annotation"
    assert results["config"]["ann_path"] == str(layout)
    assert results["optimizer"]["name"] == "camegrad"
    capsys.readouterr()
    output = tmp_path / "metrics.json"
    assert main(["evaluate", str(cli_run), "--output", str(output)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(output.read_text())
    assert printed["metrics"] == results["test"]


def test_user_errors_exit_with_a_message(cli_run, tmp_path, capsys):
    cases = [
        (["train", "--resume", "--save-dir", str(cli_run), "--epochs", "5"], "differ from it: "),
        (["train", "--save-dir", str(cli_run), *TINY_FLAGS], "already holds a run"),
        (["train", "--resume", "--save-dir", str(tmp_path / "none")], "No latest checkpoint"),
        (["evaluate", str(tmp_path / "none")], "No best checkpoint"),
        (["train", "--epochs", "0", "--save-dir", str(tmp_path / "x")], "`epochs` should be"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert f"camegrad-rrg {argv[0]}: error: " in (err := capsys.readouterr().err), argv
        assert message in err, (argv, err)


def test_bad_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--optimizer", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method-option", "no_equals_sign"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_evaluate_prints_the_metrics_before_writing_them(cli_run, tmp_path, capsys):
    not_a_file = tmp_path / "taken"
    not_a_file.mkdir()  # Writable folder, but the output path itself cannot be a file.
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(cli_run), "--output", str(not_a_file)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    results = json.loads((cli_run / RESULTS_FILE).read_text())
    assert json.loads(captured.out)["metrics"] == results["test"]
    assert captured.err.count("\n") == 1 and str(not_a_file) in captured.err


def test_a_run_is_pinned_to_its_data(layout, tmp_path, monkeypatch, capsys):
    """Relative paths are resolved when the run starts; other data at the same (relative) path
    are refused by --resume and evaluate, saying what changed; the same data moved and passed
    by their new location are accepted."""
    shutil.copytree(layout.parent, tmp_path / "start" / "data")
    monkeypatch.chdir(tmp_path / "start")
    run = tmp_path / "run"
    argv = ["train", "--ann-path", "data/annotation.json", "--save-dir", str(run), *TINY_FLAGS]
    assert main([*argv, "--optimizer", "linear", "--stop-after-epoch", "1"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["ann_path"] == str(tmp_path / "start" / "data" / "annotation.json")

    # Elsewhere, the same relative path holds 8 more training studies.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(layout.parent, tmp_path / "data")
    annotation = json.loads((tmp_path / "data" / "annotation.json").read_text())
    annotation["train"] += [{**entry, "id": f"{entry['id']}b"} for entry in annotation["train"][:8]]
    (tmp_path / "data" / "annotation.json").write_text(json.dumps(annotation))
    capsys.readouterr()
    for command in (
        ["train", "--resume", "--save-dir", str(run), "--ann-path", "data/annotation.json"],
        ["evaluate", str(run), "--ann-path", "data/annotation.json"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'data' / 'annotation.json'} are not the data the run" in err, err
        assert "studies: train 64 -> 72" in err and "image files: 192 -> 208" in err, err

    # The run's own data, moved: resumed from another folder, by their new location.
    (tmp_path / "start" / "data").rename(tmp_path / "moved")
    assert (
        main(["train", "--resume", "--save-dir", str(run), "--ann-path", "moved/annotation.json"])
        == 0
    )
    results = json.loads((run / RESULTS_FILE).read_text())
    assert results["status"] == "complete" and results["data"]["split_sizes"]["train"] == 64
    assert results["config"]["ann_path"] == str(tmp_path / "moved" / "annotation.json")
    capsys.readouterr()
    assert (
        main(["evaluate", str(run), "--ann-path", str(tmp_path / "moved" / "annotation.json")]) == 0
    )
    assert json.loads(capsys.readouterr().out)["metrics"] == results["test"]


def test_a_diverging_run_is_named(tmp_path, capsys):
    save_dir = tmp_path / "run"
    argv = ["train", *TINY_FLAGS, *TINY_DATA_FLAGS, "--optimizer", "linear", "--lr", "1e30"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--save-dir", str(save_dir)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    found = re.search(r"error: the run in .* diverged at step (\d+) \(loss lm (\S+), cls ", err)
    assert found, err
    assert "no epoch ended before it, so there is no checkpoint" in err
    results = json.loads((save_dir / RESULTS_FILE).read_text())
    step = int(found.group(1))
    assert results["status"] == "diverged" and results["divergence"]["step"] == step
    assert results["epochs"] == [] and results["test"] is None
    assert not (save_dir / "checkpoints").exists()
    # The step named is the first whose loss or update is not finite.
    log = np.load(save_dir / "steps.npz")
    watched = np.stack([log["loss_lm"], log["loss_cls"], log["update_norm"]], axis=1)
    assert log["step"][-1] == step and not np.all(np.isfinite(watched[-1]))
    assert np.all(np.isfinite(watched[:-1]))


def test_make_synthetic_can_write_the_v1_data(tmp_path):
    args = ["--num-train", "4", "--num-val", "2", "--num-test", "2", "--image-size", "16"]
    assert main(["make-synthetic", str(tmp_path), *args, "--generator", "v1"]) == 0
    written = json.loads((tmp_path / "annotation.json").read_text())
    v1 = generate_synthetic(
        SyntheticConfig(num_train=4, num_val=2, num_test=2, image_size=16, generator="v1")
    )
    assert [e["report"] for e in written["train"]] == list(v1["train"].reports)
