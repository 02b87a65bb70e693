"""Reading a run directory back: its configuration, its checkpoints, and the metrics of one.

:func:`restore_run` rebuilds a run (configuration, tokenizer, image normalisation) from its
directory and restores a checkpoint; the trainer resumes through it, and the comparison samples
update noise at a run's final parameters through it. A run restored on data other than the data
it recorded (their fingerprint, see :mod:`camegrad_jax.rrg.rundir`) is refused.

Example:
  >>> from camegrad_jax.rrg.restore import evaluate_run
  >>> evaluate_run("runs/rrg", split="val")["metrics"]["ce_example_f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from camegrad_jax.rrg import checkpoint as ckpt
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.data import RRGDataset
from camegrad_jax.rrg.diagnostics import StepLog
from camegrad_jax.rrg.evaluation import evaluate_split
from camegrad_jax.rrg.experiment import Setup, build_setup
from camegrad_jax.rrg.model import RRGModel
from camegrad_jax.rrg.results import CONFIG_FILE, json_ready
from camegrad_jax.rrg.rundir import data_fingerprint, fingerprint_changes, resolve_data_paths
from camegrad_jax.rrg.tokenizer import Tokenizer

__all__ = ["RestoredRun", "checkpoint_target", "evaluate_run", "restore_run", "saved_config"]


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A run restored from its directory: setup, checkpointed arrays and meta.

    ``opt_state`` and ``step_log`` are None for a ``best`` checkpoint (only parameters are
    kept there).
    """

    setup: Setup
    params: nnx.State
    rest: nnx.State
    opt_state: Any
    meta: dict[str, Any]
    step_log: StepLog | None

    def model(self) -> RRGModel:
        return self.setup.model(self.params, self.rest)


def checkpoint_target(
    setup: Setup, kind: ckpt.CheckpointKind, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The abstract tree a ``kind`` checkpoint of ``setup``'s run restores into."""
    target = {"params": setup.params, "rest": setup.rest}
    if kind == ckpt.LATEST:
        target["opt_state"] = jax.eval_shape(setup.tx.init, setup.params)
        target["step"] = jax.ShapeDtypeStruct((), jnp.int32)
        target["step_log"] = StepLog.abstract_arrays(meta["step_log_layout"], meta["step"])
    return target


def restore_run(
    save_dir: str | Path,
    kind: ckpt.CheckpointKind = ckpt.LATEST,
    *,
    config_changes: Mapping[str, Any] | None = None,
    dataset: RRGDataset | None = None,
) -> RestoredRun:
    """Rebuild the run in ``save_dir`` (its config, tokenizer and image normalisation) and
    restore its ``kind`` checkpoint.

    Args:
      save_dir: the run directory.
      kind: ``"latest"`` (parameters and optimizer state) or ``"best"`` (parameters).
      config_changes: fields to change in the stored config that do not change the arrays'
        structure, e.g. ``ann_path``/``image_dir`` when the data moved (``save_dir`` is set to
        the given one).
      dataset: the run's data, already loaded (its tokenizer and image normalisation must be
        the run's); by default it is rebuilt from the stored config.

    Raises:
      ValueError: the data differ from the fingerprint the run recorded, saying how.
    """
    meta = ckpt.read_checkpoint_meta(save_dir, kind)
    changes = {"save_dir": str(save_dir), **(config_changes or {})}
    config = resolve_data_paths(TrainConfig.from_dict(meta["config"]).replace(**changes))
    if not config.uses_synthetic_data:
        _check_data(save_dir, meta, config, None)  # Cheap: before the images are read.
    tokenizer = Tokenizer.load(ckpt.tokenizer_path(save_dir))
    if dataset is not None and (
        dataset.tokenizer != tokenizer
        or (dataset.image_mean, dataset.image_std) != (meta["image_mean"], meta["image_std"])
    ):
        raise ValueError(
            f"`dataset` is not the data of the run in {save_dir}: its tokenizer or image "
            "normalisation differs."
        )
    setup = build_setup(
        config,
        tokenizer=tokenizer,
        image_mean=meta["image_mean"],
        image_std=meta["image_std"],
        dataset=dataset,
    )
    if config.uses_synthetic_data:
        _check_data(save_dir, meta, config, setup.dataset)
    target = checkpoint_target(setup, kind, meta)
    state, meta = ckpt.restore_checkpoint(save_dir, kind, target)
    return RestoredRun(
        setup,
        state["params"],
        state["rest"],
        state.get("opt_state"),
        meta,
        StepLog(jax.device_get(state["step_log"])) if "step_log" in state else None,
    )


def _check_data(
    save_dir: str | Path, meta: Mapping[str, Any], config: TrainConfig, dataset: Any
) -> None:
    recorded = meta.get("data_fingerprint")
    if recorded is None:
        return  # A run from before data fingerprints: nothing to compare with.
    changes = fingerprint_changes(recorded, data_fingerprint(config, dataset))
    if changes:
        where = "" if config.uses_synthetic_data else f" at {config.ann_path}"
        raise ValueError(
            f"The data{where} are not the data the run in {save_dir} started on: "
            f"{'; '.join(changes)}. Pass the run's own data (--ann-path/--image-dir if it moved)."
        )


def saved_config(save_dir: str | Path) -> TrainConfig:
    """The configuration of the run in ``save_dir``: its latest checkpoint's, or, for a run
    interrupted before its first checkpoint, its ``config.json``."""
    if ckpt.has_checkpoint(save_dir, ckpt.LATEST):
        return TrainConfig.from_dict(ckpt.read_checkpoint_meta(save_dir, ckpt.LATEST)["config"])
    path = Path(save_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No latest checkpoint in {Path(save_dir)} (and no {CONFIG_FILE}).")
    return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def evaluate_run(
    save_dir: str | Path,
    *,
    split: str = "test",
    kind: ckpt.CheckpointKind = ckpt.BEST,
    beam_size: int | None = None,
    meteor: bool | None = None,
    ann_path: str | None = None,
    image_dir: str | None = None,
) -> dict[str, Any]:
    """Metrics of a run's checkpoint on ``split``.

    Args:
      save_dir: the run directory.
      split: ``"test"`` or ``"val"``.
      kind: ``"best"`` or ``"latest"``.
      beam_size: default the run's.
      meteor: default the run's setting for the split (``meteor_test`` / ``meteor_val``).
      ann_path, image_dir: where the run's annotation data now lives, if it moved (its
        fingerprint must match the run's: other data are refused).

    Returns:
      ``{"save_dir", "checkpoint", "epoch", "step", "split", "beam_size", "metrics"}``;
      with the run's defaults, ``metrics`` equals ``results.json``'s ``test``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"`split` should be 'val' or 'test'. Found `split = {split!r}`.")
    changes = {} if ann_path is None else {"ann_path": str(ann_path), "image_dir": image_dir}
    if image_dir is not None:
        changes["image_dir"] = str(image_dir)
    restored = restore_run(save_dir, kind, config_changes=changes)
    config = restored.setup.config
    beam_size = config.beam_size if beam_size is None else beam_size
    if meteor is None:
        meteor = config.meteor_test if split == "test" else config.meteor_val
    metrics, _ = evaluate_split(
        restored.model(),
        restored.setup.dataset,
        split,
        beam_size=beam_size,
        batch_size=config.eval_batch_size,
        meteor=meteor,
    )
    return json_ready(
        {
            "save_dir": str(save_dir),
            "checkpoint": kind,
            "epoch": restored.meta["epochs_done"],
            "step": restored.meta["step"],
            "split": split,
            "beam_size": beam_size,
            "metrics": metrics,
        }
    )
