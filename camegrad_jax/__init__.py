"""camegrad-jax: multi-task gradient methods, CAME-Grad first, as composable optax transformations.

Every method takes a stacked per-task gradient pytree (each leaf with a leading task axis of size
K, as returned by :func:`task_gradients`) and returns an update shaped like the parameters:

    tx = optax.chain(camegrad_jax.camegrad(c, gamma, alpha), optax.adam(lr))

The number of tasks K is read from the first stacked gradients; the multi-task transformation
must come first in the chain (a chain in another order is refused at the first update).
"""

from camegrad_jax._aggregation import (
    MultiTaskState,
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._aligned_mtl import aligned_mtl, aligned_mtl_coefficients, aligned_mtl_weighting
from camegrad_jax._cagrad import (
    CAGradState,
    CAGradWeights,
    cagrad,
    cagrad_weighting,
    cagrad_weights,
)
from camegrad_jax._camegrad import (
    CameGradState,
    CameGradWeights,
    camegrad,
    camegrad_weighting,
    camegrad_weights,
)
from camegrad_jax._config import config, config_coefficients, config_weighting
from camegrad_jax._cr_mogm import CRMOGMState, cr_mogm, cr_mogm_weighting
from camegrad_jax._db_mtl import db_mtl
from camegrad_jax._diagnostics import GradientStats, gradient_stats
from camegrad_jax._dual import DualSolution, dual_objective, solve_dual
from camegrad_jax._dualproj import dualproj, dualproj_coefficients, dualproj_weighting
from camegrad_jax._dwa import DWAState, dwa, dwa_weighting
from camegrad_jax._excess_mtl import ExcessMTLState, ExcessMTLWeights, excess_mtl
from camegrad_jax._fairgrad import FairGradState, fairgrad, fairgrad_weighting, solve_fairgrad
from camegrad_jax._famo import FamoState, famo, famo_weighting
from camegrad_jax._geometric_mean import geometric_mean, geometric_mean_weighting
from camegrad_jax._graddrop import GradDropState, graddrop
from camegrad_jax._gradnorm import GradNormState, gradnorm, gradnorm_weighting
from camegrad_jax._gradvac import GradVacState, gradvac, gradvac_coefficients, gradvac_weighting
from camegrad_jax._gram_only import gram_only_gradients
from camegrad_jax._grouping import GroupedState
from camegrad_jax._imtl_g import imtl_g, imtl_g_coefficients, imtl_g_weighting
from camegrad_jax._imtl_l import IMTLLState, imtl_l, imtl_l_weighting
from camegrad_jax._krum import krum, krum_coefficients, krum_weighting
from camegrad_jax._linear import linear_scalarization, linear_weighting
from camegrad_jax._loss_weighting import LossWeighting
from camegrad_jax._mgda import MGDAState, MGDAWeights, mgda, mgda_weighting, mgda_weights
from camegrad_jax._mmpareto import mmpareto, mmpareto_coefficients, mmpareto_weighting
from camegrad_jax._moco import MoCoState, moco
from camegrad_jax._modo import MoDoState, modo, modo_weighting
from camegrad_jax._nash_mtl import NashMTLState, nash_mtl, nash_mtl_weighting, solve_nash
from camegrad_jax._native_gram import native_gram_status
from camegrad_jax._pcd import PCDState, pcd, pcd_weighting
from camegrad_jax._pcgrad import PCGradState, pcgrad, pcgrad_coefficients, pcgrad_weighting
from camegrad_jax._registry import METHODS, MethodInfo, method_info, registered_methods
from camegrad_jax._rlw import RLWState, rlw, rlw_weighting
from camegrad_jax._rotograd import Rotation, RotoGrad, RotoGradScalingState, rotograd_scaling
from camegrad_jax._scale_invariant import scale_invariant, scale_invariant_weighting
from camegrad_jax._sdmgrad import SDMGradState, sdmgrad, sdmgrad_weighting, sdmgrad_weights
from camegrad_jax._stch import STCHState, stch, stch_weighting
from camegrad_jax._stgu import STGU, STGUState, STGUStepInfo, stgu
from camegrad_jax._task_gradients import task_gradients
from camegrad_jax._task_gram import task_gram
from camegrad_jax._tracking import TrackedState
from camegrad_jax._trimmed_mean import trimmed_mean
from camegrad_jax._uncertainty_weighting import (
    UncertaintyWeightingState,
    uncertainty_weighting,
    uncertainty_weighting_weighting,
)
from camegrad_jax._upgrad import upgrad, upgrad_coefficients, upgrad_weighting

__version__ = "0.1.0"

__all__ = [
    "CAGradState",
    "CAGradWeights",
    "CameGradState",
    "CameGradWeights",
    "CRMOGMState",
    "DualSolution",
    "DWAState",
    "ExcessMTLState",
    "ExcessMTLWeights",
    "FairGradState",
    "FamoState",
    "GradDropState",
    "GradientStats",
    "METHODS",
    "MethodInfo",
    "GradNormState",
    "IMTLLState",
    "GradVacState",
    "GroupedState",
    "MGDAState",
    "MGDAWeights",
    "MoCoState",
    "MoDoState",
    "MultiTaskState",
    "NashMTLState",
    "PCDState",
    "PCGradState",
    "RLWState",
    "Rotation",
    "RotoGrad",
    "RotoGradScalingState",
    "STCHState",
    "SDMGradState",
    "STGU",
    "STGUState",
    "STGUStepInfo",
    "TrackedState",
    "UncertaintyWeightingState",
    "WeightingResult",
    "aligned_mtl",
    "aligned_mtl_coefficients",
    "cagrad",
    "cagrad_weights",
    "camegrad",
    "camegrad_weights",
    "config",
    "config_coefficients",
    "cr_mogm",
    "db_mtl",
    "dual_objective",
    "dualproj",
    "dualproj_coefficients",
    "dwa",
    "excess_mtl",
    "fairgrad",
    "famo",
    "graddrop",
    "gradient_stats",
    "geometric_mean",
    "gradnorm",
    "gradvac",
    "gradvac_coefficients",
    "gram_only_gradients",
    "imtl_g",
    "imtl_g_coefficients",
    "imtl_l",
    "krum",
    "krum_coefficients",
    "linear_scalarization",
    "method_info",
    "mgda",
    "mgda_weights",
    "mmpareto",
    "mmpareto_coefficients",
    "moco",
    "modo",
    "nash_mtl",
    "pcd",
    "pcgrad",
    "pcgrad_coefficients",
    "registered_methods",
    "rlw",
    "stgu",
    "rotograd_scaling",
    "scale_invariant",
    "native_gram_status",
    "sdmgrad",
    "sdmgrad_weights",
    "solve_dual",
    "solve_fairgrad",
    "solve_nash",
    "stacked_gradient_transformation",
    "stch",
    "task_gradients",
    "task_gram",
    "trimmed_mean",
    "uncertainty_weighting",
    "upgrad",
    "upgrad_coefficients",
    "rlw_weighting",
    "gradnorm_weighting",
    "linear_weighting",
    "camegrad_weighting",
    "cagrad_weighting",
    "pcgrad_weighting",
    "mgda_weighting",
    "imtl_g_weighting",
    "nash_mtl_weighting",
    "aligned_mtl_weighting",
    "upgrad_weighting",
    "fairgrad_weighting",
    "sdmgrad_weighting",
    "modo_weighting",
    "dualproj_weighting",
    "config_weighting",
    "gradvac_weighting",
    "krum_weighting",
    "cr_mogm_weighting",
    "pcd_weighting",
    "mmpareto_weighting",
    "Weighting",
    "uncertainty_weighting_weighting",
    "famo_weighting",
    "imtl_l_weighting",
    "stch_weighting",
    "scale_invariant_weighting",
    "dwa_weighting",
    "geometric_mean_weighting",
    "LossWeighting",
]
