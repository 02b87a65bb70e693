"""Reference multi-task setup: radiology report generation (RRG) in Flax.

A shared image encoder feeds a report decoder (task 1: report generation) and a 14-label
clinical classification head (task 2; or another auxiliary task, see
:mod:`camegrad_jax.rrg.aux_tasks`), on a deterministic synthetic chest-radiograph data set by
default, or on IU X-Ray / MIMIC-CXR in the R2Gen ``annotation.json`` layout. The core library
(``camegrad_jax``) never imports this sub-package.
"""

from camegrad_jax.rrg.aux_tasks import (
    AUX_TASKS,
    AlignedRRGModel,
    PromptedRRGModel,
    build_model,
    contrastive_alignment_loss,
    retrieval_metrics,
)
from camegrad_jax.rrg.checkpoint import restore_checkpoint, save_checkpoint
from camegrad_jax.rrg.chexbert import CheXbertLabeler
from camegrad_jax.rrg.config import SELECTION_METRICS, TASK_NAMES, TrainConfig
from camegrad_jax.rrg.data import (
    DATASET_VIEWS,
    DEFAULT_MAX_LEN,
    SPLITS,
    AnnotationError,
    EncodedSplit,
    RawSplit,
    RRGDataset,
    base_probs,
    build_dataset,
    load_dataset,
    positive_rate,
    read_annotation,
)
from camegrad_jax.rrg.decoding import beam_search_decode, classification_probs, greedy_decode
from camegrad_jax.rrg.diagnostics import StepLog, step_diagnostics, summarize_step_log
from camegrad_jax.rrg.evaluation import evaluate_split, generate_reports
from camegrad_jax.rrg.experiment import Setup, build_setup, make_train_step, update_samples
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.labeler_agreement import LabelerAgreement, check_labels, labeler_agreement
from camegrad_jax.rrg.metrics import (
    auxiliary_head_metrics,
    clinical_efficacy_example_based,
    clinical_efficacy_label_macro,
    evaluate_reports,
    nlg_scores,
    roc_auc,
)
from camegrad_jax.rrg.model import (
    ModelConfig,
    RRGModel,
    loss_vector,
    losses,
    losses_with_aux,
    shared_parameter_mask,
)
from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)
from camegrad_jax.rrg.optim import (
    MULTITASK_METHODS,
    MultitaskMethod,
    available_methods,
    build_multitask,
    build_optimizer,
    build_step_method,
    step_optimizer,
)
from camegrad_jax.rrg.restore import evaluate_run, restore_run
from camegrad_jax.rrg.results import RESULTS_FILE, STEP_LOG_FILE, RunResults
from camegrad_jax.rrg.synthetic import (
    SyntheticConfig,
    generate_synthetic,
    synthetic_dataset,
    write_r2gen_layout,
)
from camegrad_jax.rrg.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    clean_report,
)
from camegrad_jax.rrg.train import train

__all__ = [
    "AUX_TASKS",
    "AlignedRRGModel",
    "PromptedRRGModel",
    "build_model",
    "contrastive_alignment_loss",
    "retrieval_metrics",
    "BLANK",
    "BOS_ID",
    "DATASET_VIEWS",
    "DEFAULT_MAX_LEN",
    "EOS_ID",
    "MULTITASK_METHODS",
    "NEGATIVE",
    "NUM_LABEL_CLASSES",
    "NUM_OBSERVATIONS",
    "OBSERVATIONS",
    "PAD_ID",
    "POSITIVE",
    "RESULTS_FILE",
    "SELECTION_METRICS",
    "SPLITS",
    "STEP_LOG_FILE",
    "TASK_NAMES",
    "UNCERTAIN",
    "UNK_ID",
    "AnnotationError",
    "CheXbertLabeler",
    "EncodedSplit",
    "LabelerAgreement",
    "ModelConfig",
    "MultitaskMethod",
    "RawSplit",
    "RRGDataset",
    "RRGModel",
    "RunResults",
    "Setup",
    "StepLog",
    "SyntheticConfig",
    "Tokenizer",
    "TrainConfig",
    "auxiliary_head_metrics",
    "available_methods",
    "base_probs",
    "beam_search_decode",
    "build_dataset",
    "build_multitask",
    "build_optimizer",
    "build_setup",
    "build_step_method",
    "check_labels",
    "classification_probs",
    "clean_report",
    "clinical_efficacy_example_based",
    "clinical_efficacy_label_macro",
    "evaluate_reports",
    "evaluate_run",
    "evaluate_split",
    "generate_reports",
    "generate_synthetic",
    "greedy_decode",
    "label_reports",
    "labeler_agreement",
    "load_dataset",
    "loss_vector",
    "losses",
    "losses_with_aux",
    "make_train_step",
    "nlg_scores",
    "positive_rate",
    "read_annotation",
    "restore_checkpoint",
    "restore_run",
    "roc_auc",
    "save_checkpoint",
    "shared_parameter_mask",
    "step_diagnostics",
    "step_optimizer",
    "summarize_step_log",
    "synthetic_dataset",
    "train",
    "update_samples",
    "write_r2gen_layout",
]
