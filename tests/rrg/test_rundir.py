"""The run directory's guards: one writer at a time (a killed writer's lock is not stale), and
the data fingerprint naming what changed between two runs on the same directory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from camegrad_jax.rrg.cli import main
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.rundir import RunLock, data_fingerprint, fingerprint_changes
from camegrad_jax.rrg.synthetic import SyntheticConfig, synthetic_dataset, write_r2gen_layout


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_not_stale(tmp_path, capsys):
    with RunLock(tmp_path):
        with pytest.raises(FileExistsError, match=f"being written by process {os.getpid()} "):
            RunLock(tmp_path).acquire()
        # A trainer is refused before it does anything with the directory.
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--save-dir", str(tmp_path), "--epochs", "1"])
        assert exit_info.value.code == 2
        assert "being written by process" in capsys.readouterr().err
        assert not (tmp_path / "config.json").exists()
    # Released: taken again at once.
    RunLock(tmp_path).acquire().release()

    # Another process holding the lock (an flock on .lock, its pid written there, as a
    # trainer does) is named; once killed with SIGKILL, its lock file is left, but no lock.
    holder_code = (
        "import fcntl, os, time\n"
        f"fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0)\n"
        "os.write(fd, f'{os.getpid()} on elsewhere'.encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FileExistsError, match=f"process {holder.pid} on"):
        RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    assert (tmp_path / ".lock").read_text().startswith(f"{holder.pid} on")
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()} on")


def test_annotation_fingerprint_names_what_changed(tmp_path):
    source = SyntheticConfig(num_train=6, num_val=2, num_test=2, image_size=16)
    ann_path = write_r2gen_layout(source, tmp_path / "data")
    config = TrainConfig(ann_path=str(ann_path))
    before = data_fingerprint(config)
    assert before["num_images"] == 2 * 10 and before["split_sizes"]["train"] == 6

    # Moved: the same data elsewhere match.
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    moved_config = config.replace(ann_path=str(moved / "annotation.json"))
    assert fingerprint_changes(before, data_fingerprint(moved_config)) == []

    annotation = json.loads((moved / "annotation.json").read_text())
    annotation["train"].append({**annotation["train"][0], "id": "extra"})
    (moved / "annotation.json").write_text(json.dumps(annotation))
    changes = fingerprint_changes(before, data_fingerprint(moved_config))
    assert "the annotation file's content changed (studies: train 6 -> 7)" in changes
    assert "image files: 20 -> 22" in changes

    annotation["train"].pop()
    (moved / "annotation.json").write_text(json.dumps(annotation))
    image = moved / "images" / annotation["val"][0]["image_path"][0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert fingerprint_changes(before, data_fingerprint(moved_config)) == [
        f"bytes of images: {before['image_bytes']} -> {before['image_bytes'] + 1}"
    ]


def test_synthetic_fingerprint_follows_the_generated_studies():
    config = TrainConfig(synthetic_train_size=6, synthetic_val_size=2, synthetic_test_size=2)
    dataset = synthetic_dataset(config.synthetic_config(), max_len=config.max_len)
    first = data_fingerprint(config, dataset)
    again = synthetic_dataset(config.synthetic_config(), max_len=config.max_len)
    assert data_fingerprint(config, again) == first
    split = dataset.splits["val"]
    changed_images = split.images.copy()
    changed_images[0, 0, 0, 0] += np.float32(1.0)
    val = dataclasses.replace(split, images=changed_images)
    altered = dataclasses.replace(dataset, splits={**dataset.splits, "val": val})
    changes = fingerprint_changes(first, data_fingerprint(config, altered))
    assert changes and "generator changed" in changes[0]
