"""The methods the interoperability and card-usage suites run: every optax-transformation row of
the library's registry (`camegrad_jax.registered_methods`) whose update needs at most the loss
values, plus a few variants that exercise other code paths of a row's factory.

Rows needing other inputs are run by their own test files: `rotograd_scaling` needs the task
gradients with respect to a shared representation (`tests/test_rotograd.py`), and `krum` at least
three tasks (`tests/test_krum.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import optax
import pytest

import camegrad_jax as cg


class Method(NamedTuple):
    name: str
    factory: Callable[..., optax.GradientTransformation]  # the public factory
    fixed: dict[str, Any] = {}  # keyword arguments this entry always passes
    needs_values: bool = False  # update needs `value=losses`
    # A numeric hyper-parameter to schedule under inject_hyperparams, with a valid value.
    injectable: tuple[str, float] | None = None

    def partial(self, num_tasks: int):
        return functools.partial(self.factory, num_tasks=num_tasks, **self.fixed)

    def build(self, num_tasks: int, **hyper):
        return self.partial(num_tasks)(**hyper)


def from_registry(info: cg.MethodInfo) -> Method:
    fixed = {**info.fixed, **info.example_kwargs}
    return Method(info.name, info.factory, fixed, info.needs_values, info.schedulable)


# The suites' problems have two tasks: rows that need more (Krum) run in their own test files.
REGISTERED = [
    from_registry(info)
    for info in cg.registered_methods(
        kinds=("gram", "gradient", "loss"), inputs=("value",), task_count=2
    )
]

# Other code paths of registered factories: the second dual solver, the diagnostics of the
# stateless baseline, a normalisation that reads the losses, and a second distribution.
EXTRA_VARIANTS = [
    Method("camegrad_apg", cg.camegrad, {"solver": "apg"}, injectable=("c", 0.4)),
    Method("linear_diagnostics", cg.linear_scalarization, {"diagnostics": True}),
    Method("mgda_loss_plus", cg.mgda, {"normalization": "loss+"}, needs_values=True),
    Method("rlw_dirichlet", cg.rlw, {"distribution": "dirichlet", "seed": 3}),
]

METHODS = REGISTERED + EXTRA_VARIANTS


def is_variant(method: Method) -> bool:
    """Whether `method` is another configuration of a row run under its own name (an extra
    variant above, or a registry row that declares `variant_of`, e.g. CAME-Grad's ablations)."""
    if method in EXTRA_VARIANTS:
        return True
    return cg.method_info(method.name).variant_of is not None


# The framework checks (lax.scan, downstream wrappers, nnx.Optimizer, a Linen TrainState)
# exercise how a method's state travels through them. By default they run on one row of each
# kind of state: warm-started dual weights (camegrad), none (linear), per-leaf magnitudes
# (mmpareto), learned weights over the whole tree (gradnorm), a loss history (famo), PRNG keys
# (rlw, graddrop), a tracked average (gradvac), a loss-transforming head (stch); `-m slow` runs
# them on every row.
FRAMEWORK_SAMPLE = {
    "camegrad",
    "linear",
    "mmpareto",
    "gradnorm",
    "famo",
    "rlw",
    "gradvac",
    "graddrop",
    "stch",
}


def default_or_slow(methods: list[Method], in_default_run) -> list:
    """The parametrisation of `methods`: those `in_default_run` by default, the rest slow."""
    return [
        m if in_default_run(m) else pytest.param(m, marks=pytest.mark.slow, id=m.name)
        for m in methods
    ]
