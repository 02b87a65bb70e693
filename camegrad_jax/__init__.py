"""camegrad-jax: multi-task gradient methods, CAME-Grad first, as composable optax transformations.

Every method takes a stacked per-task gradient pytree (each leaf with a leading task axis of size
K, as returned by :func:`task_gradients`) and returns an update shaped like the parameters:

    tx = optax.chain(camegrad_jax.camegrad(c=0.5, gamma=1.5, alpha=0.2, num_tasks=2),
                     optax.adam(1e-3))
"""

from camegrad_jax._aggregation import (
    MultiTaskState,
    WeightingResult,
    stacked_gradient_transformation,
)
from camegrad_jax._camegrad import CameGradState, CameGradWeights, camegrad, camegrad_weights
from camegrad_jax._diagnostics import GradientStats, gradient_stats
from camegrad_jax._dual import DualSolution, dual_objective, solve_dual
from camegrad_jax._gram_only import gram_only_gradients
from camegrad_jax._linear import linear_scalarization
from camegrad_jax._task_gradients import task_gradients

__version__ = "0.1.0"

__all__ = [
    "CameGradState",
    "CameGradWeights",
    "DualSolution",
    "GradientStats",
    "MultiTaskState",
    "WeightingResult",
    "camegrad",
    "camegrad_weights",
    "dual_objective",
    "gradient_stats",
    "gram_only_gradients",
    "linear_scalarization",
    "solve_dual",
    "stacked_gradient_transformation",
    "task_gradients",
]
