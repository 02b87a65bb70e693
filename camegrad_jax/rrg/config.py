"""The training configuration of the reference report-generation setup, with its defaults.

:class:`TrainConfig` holds everything a run depends on: data source and sizes, model sizes,
the optimizer (a multi-task method by name, its hyper-parameters, and the AdamW recipe of the
public CAME-Grad code), evaluation and checkpointing. It round-trips through JSON
(:meth:`TrainConfig.to_dict` / :meth:`TrainConfig.from_dict`) and is stored with every
checkpoint, so a run can be resumed or evaluated from its directory alone.

The defaults are the synthetic default run: a CPU-sized model trained for a few minutes on two
CPU cores (see ``benchmarks/run_benchmarks.py --sections full_run`` for the measured wall time).
Its peak learning rate (2e-3) and length (12 epochs, 372 steps) are what this from-scratch model
needs for both tasks to learn in that time: at 5e-4 for 8 epochs the decoder wrote one report for
every study; 1e-3 for 12 epochs, or 3e-3 for 8, learned less (README, "Results").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from camegrad_jax.rrg.aux_tasks import ALIGNMENT, AUX_TASKS
from camegrad_jax.rrg.data import DATASET_VIEWS, DEFAULT_MAX_LEN
from camegrad_jax.rrg.model import ModelConfig
from camegrad_jax.rrg.optim import MULTITASK_METHODS, check_method_options
from camegrad_jax.rrg.synthetic import GENERATORS, SyntheticConfig

__all__ = ["SELECTION_METRICS", "TASK_NAMES", "TrainConfig"]

# Val metrics a run may select its best checkpoint by (see `TrainConfig.selection_metric`).
SELECTION_METRICS = ("ce_example_f1", "ce_example_no_nf_f1", "BLEU_4")

# The two losses, in the order of `loss_vector`. The second slot holds the auxiliary task of
# every variant (`TrainConfig.aux`); it keeps the name "cls" in logs and results.
TASK_NAMES: tuple[str, str] = ("lm", "cls")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run of the reference RRG model.

    Attributes:
      save_dir: run directory (checkpoints, tokenizer, results, per-step log).
      seed: seed of the model initialisation, the batch order and the dropout masks.

      ann_path: R2Gen ``annotation.json``; None trains on the synthetic data set.
      image_dir: folder of the images (default ``images/`` next to ``ann_path``).
      dataset_name: ``"iu_xray"`` (two views) or ``"mimic_cxr"`` (one) for ``ann_path`` data;
        synthetic data takes it from ``synthetic_num_views``.
      vocab_threshold: vocabulary frequency threshold (None: R2Gen's default of the data set).
      synthetic_seed: seed of the synthetic data set (fixed across training seeds).
      synthetic_train_size, synthetic_val_size, synthetic_test_size: synthetic studies/split.
      synthetic_num_views: 2 (IU X-Ray style) or 1 (MIMIC-CXR style).
      synthetic_generator: ``"v2"`` (realistic data, the default) or ``"v1"`` (the data the
        README's v1 results were measured on); see `camegrad_jax.rrg.synthetic`. A stored
        config without this field predates v2 and reads as ``"v1"``.
      image_size: square side the images are drawn or resized to.
      max_len: token length, BOS and EOS included; also the decoding length.

      conv_features, norm_groups, d_model, num_heads, d_ff, num_encoder_layers,
      num_decoder_layers, dropout, label_smoothing: model sizes (see `ModelConfig`).
      aux: the auxiliary task beside report generation, a name of
        `camegrad_jax.rrg.aux_tasks.AUX_TASKS`: ``"classification"`` (the label head, the
        default), ``"classification-prompt"`` (its answers also prompt the decoder, as in
        PromptMRG) or ``"alignment"`` (image–report InfoNCE, as in REVTAF/WCL).
      alignment_weak: with ``aux="alignment"``, studies with equal labels are positives of one
        another (WCL's weak supervision).

      epochs: training epochs.
      batch_size: training batch size (the last partial batch of an epoch is dropped).
      optimizer: multi-task method, a name of ``optim.MULTITASK_METHODS``.
      c, gamma, alpha: CAME-Grad's hyper-parameters (``c`` also CAGrad's); passed to the
        methods that declare them.
      method_options: further keyword arguments of the method's factory (JSON values),
        checked by `optim.check_method_options`.
      cls_weight: λ of the auxiliary loss (the classification loss by default); task weights
        are ``[1, cls_weight]``.
      learning_rate: peak learning rate of AdamW (2e-3 measured best for this model trained
        from scratch in a few hundred steps; see above).
      warmup_fraction: share of the training steps of the linear warm-up from 0.
      final_lr_fraction: the cosine decay ends at this fraction of the peak.
      weight_decay: AdamW's decoupled weight decay, on parameters with ``ndim >= 2`` only.
      baseline_clip: element-wise gradient clip of the ``"linear"`` baseline, as the public
        CAME-Grad code clips the scalarised gradient (None: no clip).

      beam_size: 1 decodes greedily; more runs beam search.
      eval_batch_size: batch size of decoding.
      eval_every: evaluate on val every this many epochs (and after the last one).
      selection_metric: the val metric whose best epoch is the "best" checkpoint tested at the
        end, one of `SELECTION_METRICS`. The default is the paper's clinical F1 over the 14
        labels; ``"ce_example_no_nf_f1"`` leaves No Finding out, so that a model writing the
        same normal report for every study cannot win the selection (on the small synthetic
        validation split it otherwise can: see the results page).
      meteor_val, meteor_test: compute METEOR on val / on the final test evaluation (each call
        starts a Java process, about 15 s).
      log_every: host fetch of the per-step diagnostics and progress-bar refresh, in steps.

    Every float field must be finite: ``nan`` and ``inf`` are rejected, naming the field.
    """

    save_dir: str = "runs/rrg"
    seed: int = 0

    ann_path: str | None = None
    image_dir: str | None = None
    dataset_name: str = "iu_xray"
    vocab_threshold: int | None = None
    synthetic_seed: int = 0
    synthetic_train_size: int = 1000
    synthetic_val_size: int = 100
    synthetic_test_size: int = 200
    synthetic_num_views: int = 2
    synthetic_generator: str = "v2"
    image_size: int = 64
    max_len: int = DEFAULT_MAX_LEN

    conv_features: tuple[int, ...] = (16, 32, 64, 64)
    norm_groups: int = 8
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    num_encoder_layers: int = 1
    num_decoder_layers: int = 1
    dropout: float = 0.1
    label_smoothing: float = 0.1
    aux: str = "classification"
    alignment_weak: bool = False

    epochs: int = 12
    batch_size: int = 32
    optimizer: str = "camegrad"
    c: float = 0.5
    gamma: float = 1.5
    alpha: float = 0.2
    method_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    cls_weight: float = 4.0
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.1
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.05
    baseline_clip: float | None = 0.1

    beam_size: int = 1
    eval_batch_size: int = 64
    eval_every: int = 1
    selection_metric: str = "ce_example_f1"
    meteor_val: bool = False
    meteor_test: bool = True
    log_every: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_features", tuple(self.conv_features))
        object.__setattr__(self, "method_options", dict(self.method_options))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            # NaN passes every comparison below, and infinity most: rejected here, by name.
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(
                    f"`{field.name}` should be finite. Found `{field.name} = {value}`."
                )
        positive = (
            "epochs",
            "batch_size",
            "eval_batch_size",
            "eval_every",
            "log_every",
            "beam_size",
            "synthetic_train_size",
            "synthetic_val_size",
            "synthetic_test_size",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` should be a positive int. Found `{name} = {value!r}`.")
        for name in ("seed", "synthetic_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"`{name}` should be a non-negative int. Found `{name} = {value!r}`."
                )
        if self.dataset_name not in DATASET_VIEWS:
            raise ValueError(
                f"`dataset_name` should be one of {tuple(DATASET_VIEWS)}. Found "
                f"`dataset_name = {self.dataset_name!r}`."
            )
        if self.synthetic_generator not in GENERATORS:
            raise ValueError(
                f"`synthetic_generator` should be one of {GENERATORS}. Found "
                f"`synthetic_generator = {self.synthetic_generator!r}`."
            )
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(
                f"`selection_metric` should be one of {SELECTION_METRICS}. Found "
                f"`selection_metric = {self.selection_metric!r}`."
            )
        if self.aux not in AUX_TASKS:
            raise ValueError(f"`aux` should be one of {AUX_TASKS}. Found `aux = {self.aux!r}`.")
        if self.alignment_weak and self.aux != ALIGNMENT:
            raise ValueError(
                f"`alignment_weak` needs `aux = {ALIGNMENT!r}`. Found `aux = {self.aux!r}`."
            )
        if self.optimizer not in MULTITASK_METHODS:
            raise ValueError(
                f"`optimizer` should be one of {tuple(MULTITASK_METHODS)}. Found "
                f"`optimizer = {self.optimizer!r}`."
            )
        for name in ("learning_rate", "cls_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` should be positive. Found `{getattr(self, name)}`.")
        for name in ("warmup_fraction", "final_lr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` should lie in [0, 1]. Found `{getattr(self, name)}`.")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` should be >= 0. Found `{self.weight_decay}`.")
        if self.baseline_clip is not None and not self.baseline_clip > 0:
            raise ValueError(
                f"`baseline_clip` should be positive or None. Found `{self.baseline_clip}`."
            )
        if self.method_options:
            check_method_options(self.optimizer, self.method_options)

    @property
    def uses_synthetic_data(self) -> bool:
        return self.ann_path is None

    @property
    def task_weights(self) -> tuple[float, float]:
        """λ of ``[L_lm, L_cls]``."""
        return (1.0, self.cls_weight)

    def synthetic_config(self) -> SyntheticConfig:
        return SyntheticConfig(
            seed=self.synthetic_seed,
            num_train=self.synthetic_train_size,
            num_val=self.synthetic_val_size,
            num_test=self.synthetic_test_size,
            image_size=self.image_size,
            num_views=self.synthetic_num_views,
            generator=self.synthetic_generator,
        )

    def model_config(self, vocab_size: int, max_views: int) -> ModelConfig:
        """The model of this run, for a tokenizer of ``vocab_size`` ids."""
        return ModelConfig(
            vocab_size=vocab_size,
            image_size=self.image_size,
            conv_features=self.conv_features,
            norm_groups=self.norm_groups,
            max_views=max_views,
            d_model=self.d_model,
            num_heads=self.num_heads,
            d_ff=self.d_ff,
            num_encoder_layers=self.num_encoder_layers,
            num_decoder_layers=self.num_decoder_layers,
            dropout=self.dropout,
            max_len=self.max_len,
            label_smoothing=self.label_smoothing,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["conv_features"] = list(self.conv_features)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (they would be ignored).

        Examples:
          >>> from camegrad_jax.rrg.config import TrainConfig
          >>> config = TrainConfig(optimizer="linear", conv_features=(8, 16))
          >>> TrainConfig.from_dict(config.to_dict()) == config
          True
          >>> TrainConfig.from_dict({"optimiser": "linear"})
          Traceback (most recent call last):
          ...
          ValueError: Unknown TrainConfig fields: ['optimiser'].
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields: {unknown}.")
        # Configs stored before the v2 generator existed trained on v1 data.
        return cls(**{"synthetic_generator": "v1", **values})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
