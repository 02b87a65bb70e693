"""Entries of the interoperability suite for the gradient-based methods.

`pcgrad`, `imtl_g`, `aligned_mtl` and `upgrad` have no numeric hyper-parameter to schedule
(pcgrad's `seed` only seeds the state); `mgda` schedules its integer `solver_maxiter`, which
`optax.inject_hyperparams` passes as a traced array. `mgda_loss_plus` takes the loss values
(`value=losses`) through every wrapper of the suite.
"""

from __future__ import annotations

from method_registry import Method

from camegrad_jax._aligned_mtl import aligned_mtl
from camegrad_jax._cagrad import cagrad
from camegrad_jax._excess_mtl import excess_mtl
from camegrad_jax._fairgrad import fairgrad
from camegrad_jax._imtl_g import imtl_g
from camegrad_jax._mgda import mgda
from camegrad_jax._nash_mtl import nash_mtl
from camegrad_jax._pcgrad import pcgrad
from camegrad_jax._sdmgrad import sdmgrad
from camegrad_jax._upgrad import upgrad

GRADIENT_METHODS: list[Method] = [
    Method("cagrad", cagrad, injectable=("c", 0.4)),
    Method("pcgrad", pcgrad),
    Method("mgda", mgda, injectable=("solver_maxiter", 200)),
    Method("mgda_loss_plus", mgda, {"normalization": "loss+"}, needs_values=True),
    Method("imtl_g", imtl_g),
    Method("nash_mtl", nash_mtl, injectable=("max_norm", 1.0)),
    Method("aligned_mtl", aligned_mtl),
    Method("upgrad", upgrad),
    Method("fairgrad", fairgrad, injectable=("alpha", 2.0)),
    Method("excess_mtl", excess_mtl, injectable=("robust_step_size", 0.5)),
    Method("sdmgrad", sdmgrad, injectable=("lamda", 0.3)),
]
