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
  >>> results.test["ce_example_f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
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
from camegrad_jax.rrg.experiment import build_setup, make_train_step
from camegrad_jax.rrg.optim import MULTITASK_METHODS
from camegrad_jax.rrg.restore import checkpoint_target, restore_run, saved_config
from camegrad_jax.rrg.results import (
    CONFIG_FILE,
    RESULTS_FILE,
    RESULTS_FORMAT,
    STEP_LOG_FILE,
    TEST_REPORTS_FILE,
    RunResults,
    json_ready,
    write_atomically,
)
from camegrad_jax.rrg.rundir import RunLock, check_writable, data_fingerprint, resolve_data_paths

__all__ = ["TrainingDiverged", "config_differences", "train"]

# Fields a resumed run may change: where its data now lives (the data fingerprint must still
# match), and METEOR on the final test (it changes no training step).
_RESUMABLE_CHANGES = ("ann_path", "image_dir", "meteor_test")
# Per-step fields that must stay finite; the first step where one is not is where a run diverged.
_DIVERGENCE_FIELDS = ("loss_lm", "loss_cls", "update_norm")


class TrainingDiverged(RuntimeError):
    """A run stopped at a non-finite loss or update; ``results`` is what it wrote to
    ``results.json`` (``"status": "diverged"``)."""

    def __init__(self, message: str, results: RunResults):
        super().__init__(message)
        self.results = results


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
            write_atomically(self.save_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
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
        target = checkpoint_target(self.setup, ckpt.BEST, {})
        state, _ = ckpt.restore_checkpoint(self.save_dir, ckpt.BEST, target)
        metrics, generated = self.evaluate(state["params"], "test", self.config.meteor_test)
        return json_ready(metrics), generated

    def results(self, test: dict[str, Any] | None) -> RunResults:
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
        # Through JSON's types first: the record returned is the one read back from the file.
        record = json_ready(
            {
                "format": RESULTS_FORMAT,
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
        return RunResults.from_dict(record)

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

    def write_results(self, test: dict[str, Any] | None, generated: list[str] | None) -> RunResults:
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
            write_atomically(self.save_dir / TEST_REPORTS_FILE, json.dumps(reports, indent=1))
        # Last: a results.json marks a finished write (`compare` reuses a complete one).
        results.write(self.save_dir)
        return results


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    dataset: RRGDataset | None = None,
) -> RunResults:
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
      The :class:`camegrad_jax.rrg.results.RunResults` (its attributes list every field), also
      written to ``save_dir/results.json``.

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
) -> RunResults:
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
