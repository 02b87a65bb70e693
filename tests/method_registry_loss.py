"""Entries of the interoperability suite for the loss-based methods and the paper's other
comparators.

`rotograd_scaling` is not listed: its update needs the task gradients with respect to the shared
representation (`representation_grads`), which the suite's problems do not have;
`tests/test_rotograd.py` runs it through the same kinds of checks on a model that has one.
`rlw` has no numeric hyper-parameter to schedule (its only one, `seed`, is an integer that
seeds the state); `tests/test_rlw.py` checks it under `inject_hyperparams`.
"""

from __future__ import annotations

from method_registry import Method

from camegrad_jax._dwa import dwa
from camegrad_jax._famo import famo
from camegrad_jax._gradnorm import gradnorm
from camegrad_jax._mmpareto import mmpareto
from camegrad_jax._rlw import rlw
from camegrad_jax._uncertainty_weighting import uncertainty_weighting

LOSS_METHODS: list[Method] = [
    Method(
        "uncertainty_weighting",
        uncertainty_weighting,
        needs_values=True,
        injectable=("learning_rate", 0.05),
    ),
    Method("gradnorm", gradnorm, needs_values=True, injectable=("alpha", 1.5)),
    Method("famo", famo, needs_values=True, injectable=("learning_rate", 0.025)),
    Method("dwa", dwa, {"epoch_length": 3}, needs_values=True, injectable=("temperature", 2.0)),
    Method("rlw", rlw),
    Method("rlw_dirichlet", rlw, {"distribution": "dirichlet", "seed": 3}),
    Method("mmpareto", mmpareto, injectable=("gamma", 1.5)),
]
