"""How the interoperability suite (`test_interop.py`) builds each method."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import optax

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


CORE_METHODS = [
    Method("camegrad", cg.camegrad, injectable=("alpha", 0.3)),
    Method("camegrad_apg", cg.camegrad, {"solver": "apg"}, injectable=("c", 0.4)),
    Method("camegrad_setting_b", cg.camegrad, {"enhance": "noise"}, injectable=("gamma", 1.2)),
    Method("linear_scalarization", cg.linear_scalarization),
    Method("linear_scalarization_diagnostics", cg.linear_scalarization, {"diagnostics": True}),
]
