"""Reference multi-task setup: radiology report generation in Flax (never imported by the core)."""

from camegrad_jax.rrg.observations import (
    BLANK,
    NEGATIVE,
    NUM_LABEL_CLASSES,
    NUM_OBSERVATIONS,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
)

__all__ = [
    "BLANK",
    "NEGATIVE",
    "NUM_LABEL_CLASSES",
    "NUM_OBSERVATIONS",
    "OBSERVATIONS",
    "POSITIVE",
    "UNCERTAIN",
]
