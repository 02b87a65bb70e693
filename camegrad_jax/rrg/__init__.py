"""Reference multi-task setup: radiology report generation (RRG) in Flax.

A shared image encoder feeds a report decoder (task 1: report generation) and a 14-label
clinical classification head (task 2), on a deterministic synthetic chest-radiograph data set by
default, or on IU X-Ray / MIMIC-CXR in the R2Gen ``annotation.json`` layout. The core library
(``camegrad_jax``) never imports this sub-package.
"""

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
from camegrad_jax.rrg.labeler import (
    CheXbertLabeler,
    LabelerAgreement,
    check_labels,
    label_reports,
    labeler_agreement,
)
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
    beam_search_decode,
    classification_probs,
    greedy_decode,
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

__all__ = [
    "BLANK",
    "BOS_ID",
    "DATASET_VIEWS",
    "DEFAULT_MAX_LEN",
    "EOS_ID",
    "NEGATIVE",
    "NUM_LABEL_CLASSES",
    "NUM_OBSERVATIONS",
    "OBSERVATIONS",
    "PAD_ID",
    "POSITIVE",
    "SPLITS",
    "UNCERTAIN",
    "UNK_ID",
    "AnnotationError",
    "CheXbertLabeler",
    "EncodedSplit",
    "LabelerAgreement",
    "ModelConfig",
    "RRGDataset",
    "RRGModel",
    "RawSplit",
    "SyntheticConfig",
    "Tokenizer",
    "auxiliary_head_metrics",
    "base_probs",
    "beam_search_decode",
    "build_dataset",
    "check_labels",
    "classification_probs",
    "clean_report",
    "clinical_efficacy_example_based",
    "clinical_efficacy_label_macro",
    "evaluate_reports",
    "generate_synthetic",
    "greedy_decode",
    "label_reports",
    "labeler_agreement",
    "load_dataset",
    "loss_vector",
    "losses",
    "losses_with_aux",
    "nlg_scores",
    "positive_rate",
    "read_annotation",
    "roc_auc",
    "shared_parameter_mask",
    "synthetic_dataset",
    "write_r2gen_layout",
]
