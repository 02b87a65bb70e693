"""A tiny training configuration shared by the trainer, CLI and comparison tests, a compilation
cache, and simulated kills during a checkpoint save.

Compiling the train step dominates these tests on a CPU. Every tiny run has the same shapes, so
with JAX's persistent compilation cache the step compiles once per optimizer and is loaded from
disk by every later run in this session (and in later sessions): a fresh `jax.jit` closure with
the same program hits the on-disk cache, never the in-memory one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import orbax.checkpoint as ocp

from camegrad_jax.rrg import checkpoint as ckpt
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.rundir import persistent_compilation_cache

# 64 training studies in batches of 8 (8 steps an epoch), 16x16 images, one layer each way.
TINY_FIELDS = {
    "synthetic_train_size": 64,
    "synthetic_val_size": 16,
    "synthetic_test_size": 16,
    "image_size": 16,
    "max_len": 30,
    "conv_features": (8, 16),
    "norm_groups": 4,
    "d_model": 32,
    "num_heads": 2,
    "d_ff": 64,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "epochs": 2,
    "batch_size": 8,
    "learning_rate": 3e-3,
    "eval_batch_size": 16,
    "meteor_test": False,
    "log_every": 3,
}

# The same run as `train` flags (the synthetic sizes are set when writing the layout).
TINY_FLAGS = [
    *("--image-size", "16", "--max-len", "30", "--conv-features", "8,16", "--norm-groups", "4"),
    *("--d-model", "32", "--num-heads", "2", "--d-ff", "64"),
    *("--num-encoder-layers", "1", "--num-decoder-layers", "1"),
    *("--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--eval-batch-size", "16"),
    *("--no-meteor-test", "--log-every", "3", "--no-progress"),
]


# The synthetic sizes of TINY_FIELDS as flags (for commands that generate the data themselves).
TINY_DATA_FLAGS = [
    *("--synthetic-train-size", "64", "--synthetic-val-size", "16"),
    *("--synthetic-test-size", "16"),
]

COMPILATION_CACHE_DIR = Path(tempfile.gettempdir()) / "camegrad-jax-test-compilation-cache"


def tiny_config(save_dir: Path | str, **changes) -> TrainConfig:
    return TrainConfig(save_dir=str(save_dir), **{**TINY_FIELDS, **changes})


def compilation_cache_enabled():
    """JAX's persistent compilation cache in a fixed temporary folder, for the block."""
    return persistent_compilation_cache(COMPILATION_CACHE_DIR)


class Interrupted(BaseException):
    """A simulated kill: a BaseException, as KeyboardInterrupt, so nothing on the way catches
    it."""


def interrupt_save(monkeypatch, kind: str, step: int, phase: str) -> list[bool]:
    """Make the save of the ``kind`` checkpoint of ``step`` stop the run ``"before"`` it,
    ``"inside"`` it (orbax killed as it starts writing: a partial temporary folder is left),
    or ``"after"`` it. Returns a list that holds True once the interrupt happened."""
    real = ckpt.save_checkpoint
    fired: list[bool] = []

    def killed_write(manager, save_step, *args, **kwargs):
        partial = Path(manager.directory) / f"{save_step}.orbax-checkpoint-tmp-0"
        partial.mkdir(parents=True)
        (partial / "state").write_bytes(b"half a checkpoint")
        raise Interrupted

    def save(save_dir, save_kind, save_step, state, meta):
        if fired or (save_kind, save_step) != (kind, step):
            return real(save_dir, save_kind, save_step, state, meta)
        fired.append(True)
        if phase == "inside":
            with mock.patch.object(ocp.CheckpointManager, "save", killed_write):
                real(save_dir, save_kind, save_step, state, meta)
        if phase == "after":
            real(save_dir, save_kind, save_step, state, meta)
        raise Interrupted

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    return fired
