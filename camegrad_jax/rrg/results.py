"""What a training run leaves in its directory, as typed records.

:func:`camegrad_jax.rrg.train.train` returns a :class:`RunResults` and writes it to
``results.json``; :mod:`camegrad_jax.rrg.compare` reads finished runs back with
:meth:`RunResults.from_dict`. ``to_dict`` gives back the JSON of the format
``"camegrad-rrg-results/1"`` key for key, in its order, so a record read from a file and written
again is the same file, and run folders written before these records existed still load (files
of earlier versions, without ``divergence`` or with fewer configuration fields, load with the
values those versions ran with).

Example:
  >>> from camegrad_jax.rrg.results import Selection
  >>> Selection("ce_example_f1", epoch=2, step=16, value=0.25).to_dict()
  {'metric': 'ce_example_f1', 'split': 'val', 'epoch': 2, 'step': 16, 'value': 0.25}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np

from camegrad_jax.rrg.config import TrainConfig

__all__ = [
    "CONFIG_FILE",
    "RESULTS_FILE",
    "RESULTS_FORMAT",
    "STEP_LOG_FILE",
    "TEST_REPORTS_FILE",
    "EpochRecord",
    "Record",
    "RunResults",
    "Selection",
    "Timing",
    "json_ready",
    "read_results",
    "write_atomically",
]

RESULTS_FILE = "results.json"
STEP_LOG_FILE = "steps.npz"
TEST_REPORTS_FILE = "test_reports.json"
CONFIG_FILE = "config.json"
RESULTS_FORMAT = "camegrad-rrg-results/1"

Status = Literal["complete", "stopped", "diverged"]
Metrics = dict[str, Any]  # metric name -> number (or None, and a few notes as strings)


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: an interrupt leaves the old file
    or the new one, never a truncated one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


_R = TypeVar("_R", bound="Record")


class Record:
    """A frozen dataclass kept in JSON as the dict of its fields, in their order; the fields
    named in ``OMITTED_WHEN_NONE`` are left out while None (absent, not null, as the files
    have always had them)."""

    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in self.OMITTED_WHEN_NONE:
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_dict(cls: type[_R], values: Mapping[str, Any]) -> _R:
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class EpochRecord(Record):
    """One trained epoch: its last step, the mean training losses over its steps, the learning
    rate of its last step, and, where it was validated, the validation metrics and their time."""

    OMITTED_WHEN_NONE = ("val", "val_seconds")

    epoch: int
    step: int
    train_loss_lm: float | None
    train_loss_cls: float | None
    learning_rate: float | None
    val: Metrics | None = None
    val_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Selection(Record):
    """The checkpoint kept as best: ``metric`` on ``split`` (``TrainConfig.selection_metric``),
    and the ``epoch``, ``step`` and ``value`` where it was best (None before any validation)."""

    metric: str
    split: str = "val"
    epoch: int | None = None
    step: int | None = None
    value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"metric": self.metric, "split": self.split}
        if self.epoch is not None:  # Validated: all three, whatever their values.
            out.update(epoch=self.epoch, step=self.step, value=self.value)
        return out


@dataclasses.dataclass(frozen=True)
class Timing(Record):
    """``wall_seconds`` over every resume of the run; ``peak_rss_mb`` of the last process."""

    wall_seconds: float
    peak_rss_mb: float


@dataclasses.dataclass(frozen=True)
class RunResults:
    """The results of a training run, as written to ``results.json`` (non-finite numbers as
    None).

    Attributes:
      status: ``"complete"``, ``"stopped"`` (``stop_after_epoch``; resume it later) or
        ``"diverged"``.
      config: the run's configuration.
      data: ``source`` (``"synthetic"``/``"annotation"``), ``dataset_name``, ``split_sizes``,
        ``vocab_size``, ``max_len``, ``num_views``, ``image_size``, ``fingerprint`` (see
        `camegrad_jax.rrg.rundir.data_fingerprint`).
      model: ``num_params``, ``num_shared_params`` (the visual encoder).
      optimizer: ``name``, ``factory``, ``options`` (its keyword arguments), ``task_weights``,
        ``baseline_clip`` (None unless "linear"), ``steps_per_epoch``, ``total_steps``.
      epochs: one record per trained epoch.
      selection: where the best checkpoint (by validation ``ce_example_f1``; ties: the later
        epoch) was.
      divergence: None, or where the run diverged: ``step``, ``epoch``, and the losses and
        update norm there.
      test: metrics of the best checkpoint on test (None unless complete): ``BLEU_1``..
        ``BLEU_4``, ``METEOR`` (None when skipped, with ``METEOR_note``), ``ROUGE_L``,
        ``ce_example_{precision,recall,f1,avg}``, ``ce_label_macro_{precision,recall,f1,avg}``,
        and their ``_no_nf_`` forms, ``aux_{auc_macro,auc_micro,auc_macro_num_labels}``,
        ``aux_{precision,recall,f1}_{macro,micro}`` (or the auxiliary task's own metrics),
        ``num_reports``, ``mean_generated_words``.
      diagnostics: ``num_steps`` and, per field of the per-step log (see
        :mod:`camegrad_jax.rrg.diagnostics`) and for ``update_to_joint_norm``, its ``mean``,
        ``std``, ``min``, ``max``, ``q05``, ``q25``, ``q50``, ``q75``, ``q95`` (lists for
        per-task fields); ``conflict.mean`` is the share of steps in conflict.
      notes: how the metrics were computed (references, labeler, METEOR).
      timing: wall time and peak memory.
      files: ``step_log`` (``steps.npz``, one array per per-step field) and ``test_reports``
        (``test_reports.json``: id, generated and reference report).
      format: ``"camegrad-rrg-results/1"``.
    """

    status: Status
    config: TrainConfig
    data: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    epochs: tuple[EpochRecord, ...]
    selection: Selection
    divergence: dict[str, Any] | None
    test: Metrics | None
    diagnostics: dict[str, Any]
    notes: tuple[str, ...]
    timing: Timing
    files: dict[str, str]
    format: str = RESULTS_FORMAT

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` content (JSON-ready, in the file's key order)."""
        return json_ready(
            {
                "format": self.format,
                "status": self.status,
                "config": self.config.to_dict(),
                "data": self.data,
                "model": self.model,
                "optimizer": self.optimizer,
                "epochs": [epoch.to_dict() for epoch in self.epochs],
                "selection": self.selection.to_dict(),
                "divergence": self.divergence,
                "test": self.test,
                "diagnostics": self.diagnostics,
                "notes": list(self.notes),
                "timing": self.timing.to_dict(),
                "files": self.files,
            }
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunResults:
        """Inverse of :meth:`to_dict`."""
        if values.get("format") != RESULTS_FORMAT:
            raise ValueError(
                f"Results of format {RESULTS_FORMAT!r} expected. Found {values.get('format')!r}."
            )
        return cls(
            status=values["status"],
            config=TrainConfig.from_dict(values["config"]),
            data=dict(values["data"]),
            model=dict(values["model"]),
            optimizer=dict(values["optimizer"]),
            epochs=tuple(EpochRecord.from_dict(epoch) for epoch in values["epochs"]),
            selection=Selection.from_dict(values["selection"]),
            divergence=values.get("divergence"),  # Absent from files of before it existed.
            test=values["test"],
            diagnostics=dict(values["diagnostics"]),
            notes=tuple(values["notes"]),
            timing=Timing.from_dict(values["timing"]),
            files=dict(values["files"]),
            format=values["format"],
        )

    def to_json(self) -> str:
        """The text of ``results.json``."""
        return json.dumps(self.to_dict(), indent=1)

    def write(self, run_dir: str | Path) -> None:
        """Write ``run_dir/results.json`` atomically."""
        write_atomically(Path(run_dir) / RESULTS_FILE, self.to_json())


def read_results(run_dir: str | Path) -> RunResults:
    """The :class:`RunResults` in ``run_dir/results.json``."""
    text = (Path(run_dir) / RESULTS_FILE).read_text(encoding="utf-8")
    return RunResults.from_dict(json.loads(text))
