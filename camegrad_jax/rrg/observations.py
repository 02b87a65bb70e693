"""The 14 CheXpert observations and the 4-way label encoding used across `camegrad_jax.rrg`."""

from __future__ import annotations

OBSERVATIONS: tuple[str, ...] = (
    "enlarged_cardiomediastinum",
    "cardiomegaly",
    "lung_opacity",
    "lung_lesion",
    "edema",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "pneumothorax",
    "pleural_effusion",
    "pleural_other",
    "fracture",
    "support_devices",
    "no_finding",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)

# Label values, as in CheXpert/CheXbert's 4-class heads.
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = 0, 1, 2, 3
NUM_LABEL_CLASSES = 4
