"""Training and evaluation of the reference report-generation model with any multi-task method.

Each step is :func:`camegrad_jax.rrg.experiment.make_train_step`: the stacked per-task gradients
go through an optax chain whose first member is the multi-task method. Dropout keys are drawn
from ``fold_in(key(seed), step)`` and batches ordered by ``(seed, epoch)``, so a run resumed
from its latest checkpoint repeats exactly what the uninterrupted run would have done. After
each epoch (every ``eval_every``) the model is evaluated on val, the best one by example-based
CE F1 is kept, and at the end the best checkpoint is evaluated on test.

A run is guarded (see :mod:`camegrad_jax.rrg.rundir`): its save directory is checked writable
and locked before any work, its data paths are made absolute and its data fingerprinted, and a
resumed or evaluated run refuses data that differ from the fingerprint. A non-finite loss or
update stops the run with :class:`TrainingDiverged`, after ``results.json`` is written with
``"status": "diverged"``; the checkpoints on disk are the last good ones.

Example (the default run: a few minutes on two CPU cores):
  >>> from camegrad_jax.rrg.config import TrainConfig
  >>> from camegrad_jax.rrg.train import train
  >>> results = train(TrainConfig(save_dir="runs/rrg"))  # doctest: +SKIP
  >>> results["test"]["ce_example_f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from camegrad_jax.rrg import checkpoint as ckpt
from camegrad_jax.rrg.config import TASK_NAMES, TrainConfig
from camegrad_jax.rrg.data import RRGDataset
from camegrad_jax.rrg.diagnostics import StepLog, summarize_step_log
from camegrad_jax.rrg.evaluation import evaluate_split
from camegrad_jax.rrg.experiment import Setup, build_setup, make_train_step
from camegrad_jax.rrg.model import RRGModel
from camegrad_jax.rrg.optim import MULTITASK_METHODS
from camegrad_jax.rrg.rundir import (
    RunLock,
    check_writable,
    data_fingerprint,
    fingerprint_changes,
    resolve_data_paths,
)
from camegrad_jax.rrg.tokenizer import Tokenizer

__all__ = [
    "RESULTS_FILE",
    "STEP_LOG_FILE",
    "TEST_REPORTS_FILE",
    "RestoredRun",
    "TrainingDiverged",
    "evaluate_run",
    "json_ready",
    "restore_run",
    "saved_config",
    "train",
]

RESULTS_FILE = "results.json"
STEP_LOG_FILE = "steps.npz"
TEST_REPORTS_FILE = "test_reports.json"
CONFIG_FILE = "config.json"
_RESULTS_FORMAT = "camegrad-rrg-results/1"
# Fields a resumed run may change: where its data now lives (the data fingerprint must still
# match), and METEOR on the final test (it changes no training step).
_RESUMABLE_CHANGES = ("ann_path", "image_dir", "meteor_test")
# Per-step fields that must stay finite; the first step where one is not is where a run diverged.
_DIVERGENCE_FIELDS = ("loss_lm", "loss_cls", "update_norm")


class TrainingDiverged(RuntimeError):
    """A run stopped at a non-finite loss or update; ``results`` is what it wrote to
    ``results.json`` (``"status": "diverged"``)."""

    def __init__(self, message: str, results: dict[str, Any]):
        super().__init__(message)
        self.results = results


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


def _checkpoint_target(
    setup: Setup, kind: ckpt.CheckpointKind, meta: Mapping[str, Any]
) -> dict[str, Any]:
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
    target = _checkpoint_target(setup, kind, meta)
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


def _write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename: an interrupt leaves the old file
    or the new one, never a truncated one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


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


def _finite(record: Mapping[str, Any]) -> bool:
    return all(np.all(np.isfinite(record[f])) for f in _DIVERGENCE_FIELDS if f in record)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def config_differences(saved: TrainConfig, given: TrainConfig) -> list[str]:
    """Fields of ``given`` that a resume of the run of ``saved`` may not change (``save_dir``
    and `_RESUMABLE_CHANGES` aside)."""
    left, right = saved.to_dict(), given.to_dict()
    allowed = {"save_dir", *_RESUMABLE_CHANGES}
    return [name for name in left if name not in allowed and left[name] != right[name]]


def _check_same_config(saved: TrainConfig, given: TrainConfig) -> None:
    differences = config_differences(saved, given)
    if differences:
        raise ValueError(
            f"A resumed run keeps its saved config; these fields differ from it: "
            f"{', '.join(differences)}."
        )


class _Trainer:
    """The state of one call of :func:`train` (a class only to share it between steps)."""

    def __init__(
        self, config: TrainConfig, *, resume: bool, progress: bool, dataset: RRGDataset | None
    ):
        self.started = time.perf_counter()
        self.save_dir = Path(config.save_dir)
        self.progress = progress
        self.step = 0
        self.epochs_done = 0
        self.history: list[dict[str, Any]] = []
        self.step_log = StepLog()
        self.best: dict[str, Any] | None = None
        self.previous_elapsed = 0.0
        self.diverged: dict[str, Any] | None = None
        if resume and ckpt.has_checkpoint(self.save_dir, ckpt.LATEST):
            self._resume(config)
        else:
            if resume:
                # Interrupted before its first "latest" checkpoint: nothing to continue, so the
                # run starts again, from its saved config.
                _check_same_config(saved_config(self.save_dir), config)
            elif ckpt.has_checkpoint(self.save_dir, ckpt.LATEST):
                raise FileExistsError(
                    f"{self.save_dir} already holds a run: resume it (`resume=True`, "
                    "`--resume`) or choose another save directory."
                )
            self.setup = build_setup(config, dataset=dataset)
            self.fingerprint = data_fingerprint(config, self.setup.dataset)
            # Copies: the train step donates its parameters, and `setup.params` stay usable.
            self.params = jax.tree.map(jnp.copy, self.setup.params)
            self.rest = self.setup.rest
            self.opt_state = self.setup.init_opt_state(self.params)
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.setup.dataset.tokenizer.save(ckpt.tokenizer_path(self.save_dir))
            _write_atomically(self.save_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
        self.config = self.setup.config
        self.step_fn = make_train_step(
            self.setup.graphdef, self.setup.tx, self.setup.schedule, self.config.seed
        )

    def _resume(self, config: TrainConfig) -> None:
        meta = ckpt.read_checkpoint_meta(self.save_dir, ckpt.LATEST)
        _check_same_config(TrainConfig.from_dict(meta["config"]), config)
        changes = {name: getattr(config, name) for name in _RESUMABLE_CHANGES}
        restored = restore_run(self.save_dir, ckpt.LATEST, config_changes=changes)
        self.setup = restored.setup
        self.fingerprint = restored.meta.get("data_fingerprint") or data_fingerprint(
            self.setup.config, self.setup.dataset
        )
        self.params, self.rest, self.opt_state = restored.params, restored.rest, restored.opt_state
        meta = restored.meta
        self.step = meta["step"]
        self.epochs_done = meta["epochs_done"]
        self.history = meta["history"]
        self.step_log = restored.step_log
        self.best = meta["best"]
        self.previous_elapsed = meta["elapsed_seconds"]

    def elapsed(self) -> float:
        return self.previous_elapsed + time.perf_counter() - self.started

    def meta(self) -> dict[str, Any]:
        dataset = self.setup.dataset
        return json_ready(
            {
                "config": self.config.to_dict(),
                "step": self.step,
                "epochs_done": self.epochs_done,
                "history": self.history,
                "step_log_layout": self.step_log.layout(),
                "best": self.best,
                "image_mean": dataset.image_mean,
                "image_std": dataset.image_std,
                "elapsed_seconds": self.elapsed(),
                "data_fingerprint": self.fingerprint,
            }
        )

    def run_epoch(self, epoch: int, bar: tqdm) -> bool:
        """Train one epoch; False when it diverged (``self.diverged`` says where)."""
        config = self.config
        pending: list[dict[str, jax.Array]] = []
        first = len(self.step_log)

        def flush() -> None:
            records = jax.device_get(pending)
            start = self.step - len(records)
            for offset, record in enumerate(records):
                record.update(step=np.int32(start + offset + 1), epoch=np.int32(epoch + 1))
            bad = next((i for i, record in enumerate(records) if not _finite(record)), None)
            if bad is not None:
                # The steps fetched after the first bad one only carry its NaNs on.
                records = records[: bad + 1]
                self.diverged = {
                    "step": int(records[-1]["step"]),
                    "epoch": epoch + 1,
                    **{f: float(records[-1][f]) for f in _DIVERGENCE_FIELDS if f in records[-1]},
                }
            self.step_log.extend(records)
            bar.update(len(records))
            last = records[-1]
            bar.set_postfix(
                epoch=epoch + 1,
                **{f"L_{task}": f"{float(last[f'loss_{task}']):.3f}" for task in TASK_NAMES},
            )
            pending.clear()

        batches = self.setup.dataset.iterate_batches(
            "train", config.batch_size, seed=config.seed, epoch=epoch, shuffle=True, drop_last=True
        )
        for batch in batches:
            self.params, self.opt_state, diagnostics = self.step_fn(
                self.params, self.opt_state, self.rest, batch, jnp.int32(self.step)
            )
            pending.append(diagnostics)
            self.step += 1
            if len(pending) == config.log_every:
                flush()
                if self.diverged:
                    return False
        if pending:
            flush()
            if self.diverged:
                return False
        columns = self.step_log.arrays()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.step}
        for task in TASK_NAMES:
            record[f"train_loss_{task}"] = float(columns[f"loss_{task}"][first:].mean())
        record["learning_rate"] = float(columns["learning_rate"][-1])
        self.history.append(record)
        return True

    def evaluate(self, params: nnx.State, split: str, meteor: bool) -> tuple[dict, list[str]]:
        config = self.config
        return evaluate_split(
            self.setup.model(params, self.rest),
            self.setup.dataset,
            split,
            beam_size=config.beam_size,
            batch_size=config.eval_batch_size,
            meteor=meteor,
        )

    def validate(self, epoch: int) -> None:
        started = time.perf_counter()
        metrics, _ = self.evaluate(self.params, "val", self.config.meteor_val)
        metrics = json_ready(metrics)
        record = self.history[-1]
        record["val"] = metrics
        record["val_seconds"] = time.perf_counter() - started
        selection_metric = self.config.selection_metric
        value = metrics[selection_metric]
        # `>=` as the public CAME-Grad trainer: on a tie the later epoch is kept.
        if self.best is None or value >= self.best["value"]:
            self.best = {"epoch": epoch + 1, "step": self.step, "value": value}
            ckpt.save_checkpoint(
                self.save_dir,
                ckpt.BEST,
                self.step,
                {"params": self.params, "rest": self.rest},
                self.meta(),
            )
        if self.progress:
            tqdm.write(
                f"epoch {epoch + 1}: L_lm {record['train_loss_lm']:.4f}  "
                f"L_cls {record['train_loss_cls']:.4f}  val {selection_metric} {value:.4f}  "
                f"BLEU_4 {metrics['BLEU_4']:.4f}"
            )

    def save_latest(self) -> None:
        state = {
            "params": self.params,
            "rest": self.rest,
            "opt_state": self.opt_state,
            "step": jnp.int32(self.step),
            "step_log": self.step_log.arrays(),
        }
        ckpt.save_checkpoint(self.save_dir, ckpt.LATEST, self.step, state, self.meta())

    def test(self) -> tuple[dict[str, Any], list[str]]:
        target = _checkpoint_target(self.setup, ckpt.BEST, {})
        state, _ = ckpt.restore_checkpoint(self.save_dir, ckpt.BEST, target)
        metrics, generated = self.evaluate(state["params"], "test", self.config.meteor_test)
        return json_ready(metrics), generated

    def results(self, test: dict[str, Any] | None) -> dict[str, Any]:
        config, setup, dataset = self.config, self.setup, self.setup.dataset
        num_params = sum(leaf.size for leaf in jax.tree.leaves(setup.params))
        shared = sum(
            leaf.size
            for leaf, is_shared in zip(
                jax.tree.leaves(setup.params), jax.tree.leaves(setup.shared_mask), strict=True
            )
            if is_shared
        )
        notes = [
            "References are the R2Gen-cleaned reference reports; CE labels both sides with the "
            f"rule-based labeler; best checkpoint by val {config.selection_metric} (ties: later "
            "epoch).",
            "Gradient statistics (cosine, norms, collapse ratio) are on the shared parameters "
            "(the visual encoder).",
        ]
        if not config.meteor_val:
            notes.append("METEOR not computed on val (meteor_val=False): val METEOR is null.")
        if test is not None and test.get("METEOR") is None:
            notes.append(f"Test METEOR is null: {test.get('METEOR_note')}")
        return json_ready(
            {
                "format": _RESULTS_FORMAT,
                "status": self.status(),
                "config": config.to_dict(),
                "data": {
                    "source": "synthetic" if config.uses_synthetic_data else "annotation",
                    "dataset_name": dataset.dataset_name,
                    "split_sizes": {name: len(split) for name, split in dataset.splits.items()},
                    "vocab_size": dataset.tokenizer.vocab_size,
                    "max_len": dataset.max_len,
                    "num_views": dataset.num_views,
                    "image_size": dataset.image_size,
                    "fingerprint": self.fingerprint,
                },
                "model": {"num_params": num_params, "num_shared_params": shared},
                "optimizer": {
                    "name": config.optimizer,
                    "factory": MULTITASK_METHODS[config.optimizer].factory,
                    "options": dict(setup.multitask_options),
                    "task_weights": list(config.task_weights),
                    "baseline_clip": (
                        config.baseline_clip
                        if MULTITASK_METHODS[config.optimizer].baseline
                        else None
                    ),
                    "steps_per_epoch": setup.steps_per_epoch,
                    "total_steps": setup.total_steps,
                },
                "epochs": self.history,
                "selection": {
                    "metric": self.config.selection_metric,
                    "split": "val",
                    **(self.best or {}),
                },
                "divergence": self.diverged,
                "test": test,
                "diagnostics": summarize_step_log(self.step_log),
                "notes": notes,
                "timing": {
                    "wall_seconds": self.elapsed(),
                    "peak_rss_mb": _peak_rss_mb(),
                },
                "files": {"step_log": STEP_LOG_FILE, "test_reports": TEST_REPORTS_FILE},
            }
        )

    def status(self) -> str:
        if self.diverged:
            return "diverged"
        return "complete" if self.epochs_done == self.config.epochs else "stopped"

    def divergence_message(self) -> str:
        where = self.diverged
        losses = ", ".join(f"{task} {where[f'loss_{task}']:.4g}" for task in TASK_NAMES)
        update = where.get("update_norm")
        update_text = "" if update is None or math.isfinite(update) else f"; update norm {update}"
        if self.epochs_done:
            kept = (
                f"the last good checkpoint (epoch {self.epochs_done}, step "
                f"{self.epochs_done * self.setup.steps_per_epoch}) is kept"
            )
        else:
            kept = "no epoch ended before it, so there is no checkpoint"
        return (
            f"the run in {self.save_dir} diverged at step {where['step']} (loss {losses}"
            f"{update_text}); {kept}; {RESULTS_FILE} has status 'diverged'. A lower learning "
            "rate may help."
        )

    def write_results(self, test: dict[str, Any] | None, generated: list[str] | None) -> dict:
        results = self.results(test)
        self.step_log.save_npz(str(self.save_dir / STEP_LOG_FILE))
        if generated is not None:
            data = self.setup.dataset.splits["test"]
            reports = [
                {
                    "id": study,
                    "generated": text,
                    "reference": self.setup.dataset.tokenizer.clean(ref),
                }
                for study, text, ref in zip(data.ids, generated, data.reports, strict=True)
            ]
            _write_atomically(self.save_dir / TEST_REPORTS_FILE, json.dumps(reports, indent=1))
        # Last: a results.json marks a finished write (`compare` reuses a complete one).
        _write_atomically(self.save_dir / RESULTS_FILE, json.dumps(results, indent=1))
        return results


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    dataset: RRGDataset | None = None,
) -> dict[str, Any]:
    """Train, validate every ``eval_every`` epochs, test the best checkpoint, write results.

    Args:
      config: the run; ``config.save_dir`` receives checkpoints, tokenizer, ``results.json``,
        ``steps.npz`` (per-step diagnostics) and ``test_reports.json``.
      resume: continue the run saved in ``config.save_dir`` from its latest checkpoint;
        ``config`` must equal the saved one, but for ``save_dir``, ``meteor_test`` and the data
        paths (the data must match the run's fingerprint). The continuation is exact: same
        batches, dropout masks and optimizer state as without the interruption. A run
        interrupted at any point resumes: between or inside an epoch's two checkpoint saves,
        or before its first checkpoint (it then starts again).
      progress: show a progress bar over the steps and a line per evaluated epoch.
      stop_after_epoch: stop once this many epochs are done (resume later); the results then
        have ``"status": "stopped"`` and no test metrics.
      dataset: the data ``config`` describes, already loaded (e.g. shared by the runs of a
        comparison); by default it is loaded from ``config``. A resumed run reloads its own.

    Returns:
      The results, also written to ``save_dir/results.json`` (non-finite numbers as null):

      * ``format`` (``"camegrad-rrg-results/1"``), ``status`` (``"complete"``/``"stopped"``/
        ``"diverged"``), ``divergence`` (null, or where the run diverged: ``step``, ``epoch``,
        and the losses and update norm there);
      * ``config``: the `TrainConfig` as a dict;
      * ``data``: ``source`` (``"synthetic"``/``"annotation"``), ``dataset_name``,
        ``split_sizes``, ``vocab_size``, ``max_len``, ``num_views``, ``image_size``,
        ``fingerprint`` (see `camegrad_jax.rrg.rundir.data_fingerprint`);
      * ``model``: ``num_params``, ``num_shared_params`` (the visual encoder);
      * ``optimizer``: ``name``, ``factory``, ``options`` (its keyword arguments),
        ``task_weights``, ``baseline_clip`` (null unless "linear"), ``steps_per_epoch``,
        ``total_steps``;
      * ``epochs``: one record per epoch: ``epoch``, ``step``, ``train_loss_lm``,
        ``train_loss_cls`` (means over the epoch's steps), ``learning_rate`` (last step's),
        and where validated ``val`` (the metrics below) and ``val_seconds``;
      * ``selection``: ``metric`` (``"ce_example_f1"``), ``split`` (``"val"``), and the best
        ``epoch``, ``step``, ``value``;
      * ``test``: metrics of the best checkpoint on test (null when stopped): ``BLEU_1``..
        ``BLEU_4``, ``METEOR`` (null when skipped, with ``METEOR_note``), ``ROUGE_L``,
        ``ce_example_{precision,recall,f1,avg}``, ``ce_label_macro_{precision,recall,f1,avg}``,
        ``aux_{auc_macro,auc_micro,auc_macro_num_labels}``,
        ``aux_{precision,recall,f1}_{macro,micro}``, ``num_reports``, ``mean_generated_words``;
      * ``diagnostics``: ``num_steps`` and, per field of the per-step log (see
        :mod:`camegrad_jax.rrg.diagnostics`) and for ``update_to_joint_norm``, its ``mean``,
        ``std``, ``min``, ``max``, ``q05``, ``q25``, ``q50``, ``q75``, ``q95`` (lists for
        per-task fields); ``conflict.mean`` is the share of steps in conflict;
      * ``notes``: how the metrics were computed (references, labeler, METEOR);
      * ``timing``: ``wall_seconds`` (across resumes), ``peak_rss_mb`` (this process);
      * ``files``: ``step_log`` (``steps.npz``, one array per per-step field) and
        ``test_reports`` (``test_reports.json``: id, generated and reference report).

    Raises:
      TrainingDiverged: a loss or the update became non-finite (after writing the results).
      PermissionError: ``save_dir`` cannot be written (before any work).
      FileExistsError: another trainer is writing ``save_dir``, or it holds a run and
        ``resume`` is False.
      ValueError: a resumed run's config or data differ from its saved ones.
    """
    config = resolve_data_paths(config)
    if resume and not Path(config.save_dir).is_dir():
        # Before the checks below, which would create it.
        raise FileNotFoundError(f"No latest checkpoint in {config.save_dir} (no such folder).")
    check_writable(config.save_dir, "save directory")
    with RunLock(config.save_dir):
        return _train_locked(config, resume, progress, stop_after_epoch, dataset)


def _train_locked(
    config: TrainConfig,
    resume: bool,
    progress: bool,
    stop_after_epoch: int | None,
    dataset: RRGDataset | None,
) -> dict[str, Any]:
    trainer = _Trainer(config, resume=resume, progress=progress, dataset=dataset)
    config = trainer.config
    stop = config.epochs if stop_after_epoch is None else min(stop_after_epoch, config.epochs)
    with tqdm(
        total=trainer.setup.total_steps,
        initial=trainer.step,
        desc=config.optimizer,
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for epoch in range(trainer.epochs_done, stop):
            if not trainer.run_epoch(epoch, bar):
                raise TrainingDiverged(
                    trainer.divergence_message(), trainer.write_results(None, None)
                )
            trainer.epochs_done = epoch + 1
            if trainer.epochs_done % config.eval_every == 0 or trainer.epochs_done == config.epochs:
                trainer.validate(epoch)
            trainer.save_latest()
    if trainer.epochs_done < config.epochs:
        return trainer.write_results(None, None)
    test, generated = trainer.test()
    return trainer.write_results(test, generated)


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
