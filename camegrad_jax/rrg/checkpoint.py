"""Orbax checkpoints of a training run: the latest one (to resume) and the best one (to test).

A run directory holds::

    save_dir/
      config.json                      the TrainConfig, readable
      tokenizer.json                   the tokenizer the run was trained with
      checkpoints/latest/<step>/       arrays: params, rest (base_probs), opt_state, step
      checkpoints/best/<step>/         arrays: params, rest  (best validation CE F1)
      results.json, steps.npz          written by the trainer

Each checkpoint is two orbax items: ``state`` (a pytree of arrays, restored against a target of
the same structure, so NamedTuple optimizer states come back typed) and ``meta`` (JSON: epoch,
step, config, history...). An orbax ``CheckpointManager`` keeping one step per kind writes the
new step before deleting the old one, so an interrupted save leaves the previous checkpoint.

A resumed run repeats the steps after its latest checkpoint. When the interrupt fell between an
epoch's "best" and "latest" saves, the repeated epoch saves a "best" checkpoint of a step that
is already there; `save_checkpoint` then replaces it (moved aside by a rename, so an interrupt
at any point leaves either the old or the new checkpoint, never half of one).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp

__all__ = [
    "BEST",
    "LATEST",
    "CheckpointKind",
    "checkpoint_path",
    "has_checkpoint",
    "read_checkpoint_meta",
    "restore_checkpoint",
    "save_checkpoint",
    "tokenizer_path",
]

CheckpointKind = Literal["latest", "best"]
LATEST: CheckpointKind = "latest"
BEST: CheckpointKind = "best"
_KINDS = (LATEST, BEST)
# A step folder being replaced is renamed with this suffix (orbax lists only integer names).
_REPLACED = ".replaced"


def checkpoint_path(save_dir: str | Path, kind: CheckpointKind) -> Path:
    """The folder of the ``kind`` checkpoints of the run in ``save_dir``.

    Examples:
      >>> from camegrad_jax.rrg.checkpoint import checkpoint_path
      >>> checkpoint_path("/runs/a", "best").as_posix()
      '/runs/a/checkpoints/best'
      >>> checkpoint_path("/runs/a", "last")
      Traceback (most recent call last):
      ...
      ValueError: `kind` should be one of ('latest', 'best'). Found `kind = 'last'`.
    """
    if kind not in _KINDS:
        raise ValueError(f"`kind` should be one of {_KINDS}. Found `kind = {kind!r}`.")
    return Path(save_dir).absolute() / "checkpoints" / kind


def tokenizer_path(save_dir: str | Path) -> Path:
    return Path(save_dir) / "tokenizer.json"


def _manager(save_dir: str | Path, kind: CheckpointKind, *, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=create, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(checkpoint_path(save_dir, kind), options=options)


def _latest_step(manager: ocp.CheckpointManager, save_dir: str | Path, kind: str) -> int:
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"No {kind} checkpoint in {Path(save_dir)}.")
    return step


def has_checkpoint(save_dir: str | Path, kind: CheckpointKind) -> bool:
    if not checkpoint_path(save_dir, kind).is_dir():
        return False
    with _manager(save_dir, kind, create=False) as manager:
        return manager.latest_step() is not None


def save_checkpoint(
    save_dir: str | Path,
    kind: CheckpointKind,
    step: int,
    state: Any,
    meta: dict[str, Any],
) -> None:
    """Write ``state`` (a pytree of arrays) and ``meta`` (JSON) as the ``kind`` checkpoint,
    replacing the previous one (also one of the same ``step``)."""
    folder = checkpoint_path(save_dir, kind)
    if folder.is_dir():
        # Left by an interrupted replacement: orbax ignores it, so it is only disk space.
        for leftover in folder.glob(f"*{_REPLACED}"):
            shutil.rmtree(leftover)
    previous = folder / str(step)
    replaced = folder / f"{step}{_REPLACED}"
    if previous.is_dir():
        previous.rename(replaced)
    with _manager(save_dir, kind, create=True) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        manager.wait_until_finished()
    if replaced.is_dir():
        shutil.rmtree(replaced)


def read_checkpoint_meta(save_dir: str | Path, kind: CheckpointKind) -> dict[str, Any]:
    """The JSON part of the ``kind`` checkpoint (no arrays are read)."""
    with _manager(save_dir, kind, create=False) as manager:
        step = _latest_step(manager, save_dir, kind)
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_checkpoint(
    save_dir: str | Path, kind: CheckpointKind, target: Any
) -> tuple[Any, dict[str, Any]]:
    """The ``kind`` checkpoint's state, restored into the structure of ``target`` (arrays or
    ``jax.ShapeDtypeStruct`` leaves), and its meta."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with _manager(save_dir, kind, create=False) as manager:
        step = _latest_step(manager, save_dir, kind)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
    return restored.state, restored.meta
