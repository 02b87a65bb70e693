"""Tests of what keeps a run from being stranded, hung or mixed (issue 12) that need no
training: METEOR's Java process, writable folders, config and option checks, and
``make-synthetic``'s refusal to overwrite. The run lock and the data fingerprints are in
``test_rundir.py``; the tests that train are in ``test_train.py`` and ``test_cli.py``, beside
the runs they reuse."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from camegrad_jax.rrg.cli import main
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.metrics import METEOR_TIMEOUT_VARIABLE, meteor_score, nlg_scores
from camegrad_jax.rrg.rundir import (
    check_writable,
)

REPORTS = ["no pleural effusion .", "the heart is enlarged ."]
REFERENCES = ["no pleural effusion or pneumothorax .", "mild cardiomegaly ."]


def fake_java(folder: Path, body: str) -> Path:
    """A ``java`` executable running ``body`` (sh), first on a PATH of its own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "java"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return folder


def test_meteor_is_null_with_the_reason_when_java_exits_at_once(tmp_path, monkeypatch):
    folder = fake_java(tmp_path / "bin", "echo 'Error: broken runtime' >&2\nexit 1")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="exit status 1"):
        scores = nlg_scores(REPORTS, REFERENCES)
    assert time.perf_counter() - started < 30
    assert scores["METEOR"] is None
    assert "exit status 1" in scores["METEOR_note"] and "broken runtime" in scores["METEOR_note"]
    # The other scores are those computed without METEOR.
    skipped = nlg_scores(REPORTS, REFERENCES, meteor=False)
    assert {k: v for k, v in scores.items() if k.startswith(("BLEU", "ROUGE"))} == {
        k: v for k, v in skipped.items() if k.startswith(("BLEU", "ROUGE"))
    }


def test_meteor_kills_a_java_that_never_answers(tmp_path, monkeypatch):
    # The wrapper starts a child and waits: the whole process group must go, or the child
    # would keep the pipe open and the call would never return.
    pid_file = tmp_path / "child.pid"
    folder = fake_java(tmp_path / "bin", f"sleep 1000 &\necho $! > {pid_file}\nwait")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(METEOR_TIMEOUT_VARIABLE, "1")
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="no answer within 1 s"):
        scores = nlg_scores(REPORTS, REFERENCES)
    assert time.perf_counter() - started < 20
    assert scores["METEOR"] is None and METEOR_TIMEOUT_VARIABLE in scores["METEOR_note"]
    child = int(pid_file.read_text())
    for _ in range(50):  # The kill is asynchronous; the zombie is reaped by init.
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the fake java's child survived the timeout")


def test_meteor_timeout_is_checked(monkeypatch):
    monkeypatch.setenv(METEOR_TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ValueError, match="CAMEGRAD_RRG_METEOR_TIMEOUT = 'soon'"):
        nlg_scores(REPORTS, REFERENCES)
    with pytest.raises(ValueError, match="`meteor_timeout` should be a positive number"):
        nlg_scores(REPORTS, REFERENCES, meteor_timeout=0)


def test_unwritable_folders_are_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    inside = str(blocker / "sub")
    cases = [
        (["train", "--save-dir", inside, "--epochs", "1"], "cannot write to the save directory"),
        (["compare", "--out", inside, "--compilation-cache", "none"], "output folder"),
        (["make-synthetic", inside, "--num-train", "4"], "cannot write to the output folder"),
        (["evaluate", str(tmp_path), "--output", f"{inside}/m.json"], "folder of --output"),
    ]
    for argv, message in cases:
        started = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and inside in err, (argv, err)
        assert time.perf_counter() - started < 10, argv  # Nothing was trained or generated.
    with pytest.raises(PermissionError, match="cannot write to the save directory"):
        check_writable(inside, "save directory")


def test_make_synthetic_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    small = ["--num-train", "4", "--num-val", "2", "--num-test", "2", "--image-size", "16"]
    user_file = tmp_path / "annotation.json"
    user_file.write_text('{"mine": true}')
    with pytest.raises(SystemExit) as exit_info:
        main(["make-synthetic", str(tmp_path), *small])
    assert exit_info.value.code == 2
    assert f"{user_file} already exists; pass --force" in capsys.readouterr().err
    assert user_file.read_text() == '{"mine": true}'
    assert not (tmp_path / "images").exists()

    only_images = tmp_path / "other"
    image = only_images / "images" / "study" / "0.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"user's image")
    with pytest.raises(SystemExit):
        main(["make-synthetic", str(only_images), *small])
    assert f"{image} already exists" in capsys.readouterr().err
    assert image.read_bytes() == b"user's image"

    assert main(["make-synthetic", str(tmp_path), *small, "--force"]) == 0
    written = json.loads(user_file.read_text())
    assert [len(written[split]) for split in ("train", "val", "test")] == [4, 2, 2]


FLOAT_FIELDS = [name for name, value in TrainConfig().to_dict().items() if isinstance(value, float)]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_config_rejects_every_non_finite_number(value):
    assert {"learning_rate", "weight_decay", "c", "gamma", "alpha", "dropout"} <= set(FLOAT_FIELDS)
    for name in FLOAT_FIELDS:
        with pytest.raises(ValueError, match=f"`{name}` should be finite"):
            TrainConfig(**{name: value})


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--lr", "inf"], "`learning_rate` should be finite. Found `learning_rate = inf`"),
        (["--weight-decay", "nan"], "`weight_decay` should be finite"),
        (["--method-option", "foo=1"], "key 'foo' is not an option of method 'camegrad'"),
        (["--method-option", "solver_maxiter=lots"], "should be an int"),
        (["--method-option", "gamma=NaN"], "should be a finite number"),
        (["--method-option", "shared_mask=1"], "key 'shared_mask' is not an option"),
        (["--optimizer", "camegrad_no_s1", "--method-option", "rectify=true"], "'rectify'"),
    ],
)
def test_bad_numbers_and_method_options_are_one_line(flag, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--save-dir", str(tmp_path / "run"), *flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("camegrad-rrg train: error: ") and message in err, err
    assert not (tmp_path / "run" / "config.json").exists()


def test_method_options_accept_the_factorys_parameters():
    config = TrainConfig(method_options={"solver_maxiter": 50, "solver": "apg", "seed": 3})
    assert config.method_options["solver_maxiter"] == 50
    TrainConfig(optimizer="nash_mtl", method_options={"max_norm": 2, "optim_niter": 5})
    with pytest.raises(ValueError, match="its options are: .*max_norm"):
        TrainConfig(optimizer="nash_mtl", method_options={"max_nrom": 2})


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_driver_matches_pycocoevalcap():
    """The driver with a time limit gives pycocoevalcap's own ``Meteor`` score, bit for bit
    (``|||`` in a hypothesis and an empty one included)."""
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {0: [REFERENCES[0]], 1: [REFERENCES[1]], 2: ["the lungs are clear ."]}
    res = {0: [REPORTS[0]], 1: ["heart size is normal ||| lungs clear ."], 2: [""]}
    assert meteor_score(gts, res) == (Meteor().compute_score(gts, res)[0], None)
