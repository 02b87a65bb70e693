"""Multi-task methods by name, and the optimizer chain of the public CAME-Grad training recipe.

:data:`MULTITASK_METHODS` maps a name to a factory of the core library and the keyword
arguments that name always passes; it is read from the library's registry
(:data:`camegrad_jax.METHODS`), so a method added there is a choice here.
:func:`build_multitask` builds one, :func:`build_optimizer` puts it in front of AdamW:

    optax.chain(multitask, [optax.clip(0.1) for "linear" only], optax.adamw(schedule, ...))

A training-step method (registry kind ``"step"``: STGU) is not a transformation:
:func:`build_step_method` builds it around :func:`step_optimizer`, the same AdamW, whose learning
rate the train step sets once per batch.

The multi-task transformation is first, as it must be: it turns gradients with a leading task
axis into one update. The element-wise clip sits on the baseline path only, as in the public
CAME-Grad code (which clips the scalarised gradient and hands CAME-Grad's update to AdamW
unclipped).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

import camegrad_jax

__all__ = [
    "MULTITASK_METHODS",
    "MultitaskMethod",
    "available_methods",
    "build_multitask",
    "build_optimizer",
    "build_step_method",
    "check_method_options",
    "learning_rate_schedule",
    "multitask_options",
    "step_optimizer",
    "weight_decay_mask",
]


@dataclasses.dataclass(frozen=True)
class MultitaskMethod:
    """A registry entry.

    Attributes:
      factory: name of the public ``camegrad_jax`` factory (looked up when built, so entries
        can name methods that a given version of the library does not export yet).
      fixed: keyword arguments always passed (e.g. an ablation switch).
      hyper: names of `TrainConfig` hyper-parameters (``c``, ``gamma``, ``alpha``) the method
        takes; the trainer passes only these.
      baseline: the scalarised baseline, whose combined gradient gets the baseline's
        element-wise clip.
      step: a training step (:func:`build_step_method`), not an optax transformation.
      defaults: values of the factory's required arguments that the run's own settings
        (``seed``, ``epoch_length``, ``method_options``) replace when they give them.
    """

    factory: str
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    hyper: tuple[str, ...] = ()
    baseline: bool = False
    step: bool = False
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self) -> Callable[..., optax.GradientTransformation] | None:
        return getattr(camegrad_jax, self.factory, None)


def _from_registry(info: camegrad_jax.MethodInfo) -> MultitaskMethod:
    fixed = dict(info.fixed)
    if info.baseline:
        # Diagnostics on, so the baseline records the same gradient statistics as every method.
        fixed["diagnostics"] = True
    return MultitaskMethod(
        info.factory.__name__,
        fixed,
        info.paper_hyper,
        info.baseline,
        step=info.kind == "step",
        defaults=dict(info.example_kwargs),
    )


# Every row of the library's registry whose update needs at most the losses (the trainer passes
# ``value=losses`` and nothing else) and that is defined for the reference model's two tasks,
# the training steps included.
MULTITASK_METHODS: dict[str, MultitaskMethod] = {
    info.name: _from_registry(info)
    for info in camegrad_jax.registered_methods(inputs=("value",), task_count=2)
}

# Arguments the trainer supplies to the factories that accept them (by their signature).
_CONTEXT_ARGUMENTS = ("seed", "epoch_length")
# Arguments `build_multitask` always passes: not options a user may set.
_SETUP_ARGUMENTS = ("num_tasks", "task_weights", "shared_mask", "loss_fn", "optimizer")


def available_methods() -> tuple[str, ...]:
    """Names of `MULTITASK_METHODS` whose factory this version of ``camegrad_jax`` exports."""
    return tuple(name for name, method in MULTITASK_METHODS.items() if method.resolve())


def _method(name: str) -> tuple[MultitaskMethod, Callable[..., optax.GradientTransformation]]:
    method = MULTITASK_METHODS.get(name)
    if method is None:
        raise ValueError(
            f"Unknown multi-task method {name!r}. Known methods: {', '.join(MULTITASK_METHODS)}."
        )
    factory = method.resolve()
    if factory is None:
        raise ValueError(
            f"Multi-task method {name!r} needs `camegrad_jax.{method.factory}`, which this "
            f"version of camegrad_jax does not export. Available: {', '.join(available_methods())}."
        )
    return method, factory


def build_multitask(
    name: str,
    num_tasks: int = 2,
    task_weights: Any = None,
    shared_mask: Any = None,
    **hyper: Any,
) -> optax.GradientTransformationExtraArgs:
    """The multi-task transformation registered as ``name``.

    Args:
      name: a key of `MULTITASK_METHODS`.
      num_tasks: K.
      task_weights: static weights λ, one per task.
      shared_mask: the shared leaves (G and β come from them; the other leaves get the
        linear-scalarization gradient).
      **hyper: further keyword arguments of the factory (e.g. ``c``, ``gamma``, ``alpha``).

    Returns:
      The transformation; it must come first in a chain (its input has a task axis).

    Raises:
      ValueError: for an unknown name or a method this library version does not export.

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax.rrg.optim import build_multitask
      >>> tx = build_multitask("linear", task_weights=[1.0, 4.0])
      >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # one row per task
      >>> update, _ = tx.update(grads, tx.init({"w": jnp.zeros(2)}))
      >>> update["w"]
      Array([1., 4.], dtype=float32)
    """
    method, factory = _method(name)
    if method.step:
        raise ValueError(
            f"Multi-task method {name!r} is a training step, not a transformation: build it "
            "with `build_step_method`."
        )
    return factory(
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        **{**method.defaults, **method.fixed, **hyper},
    )


def build_step_method(
    name: str,
    loss_fn: Callable[..., jax.Array],
    optimizer: optax.GradientTransformation,
    num_tasks: int = 2,
    task_weights: Any = None,
    **options: Any,
) -> camegrad_jax.STGU:
    """The training-step method registered as ``name`` (registry kind ``"step"``).

    Args:
      name: a key of `MULTITASK_METHODS` whose entry has ``step``.
      loss_fn: ``loss_fn(params, *args) -> (K,)`` task losses.
      optimizer: the optimizer each of its parameter updates applies (`step_optimizer`).
      num_tasks: K.
      task_weights: static weights λ, one per task.
      **options: further keyword arguments of the factory.
    """
    method, factory = _method(name)
    if not method.step:
        raise ValueError(f"Multi-task method {name!r} is a transformation: use `build_multitask`.")
    return factory(
        loss_fn,
        optimizer,
        num_tasks=num_tasks,
        task_weights=task_weights,
        **method.fixed,
        **options,
    )


def multitask_options(
    name: str, values: Mapping[str, Any], context: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments the trainer passes to ``build_multitask(name, ...)``.

    Args:
      name: a key of `MULTITASK_METHODS`.
      values: configured hyper-parameters (``c``, ``gamma``, ``alpha``...); only those the
        entry declares in ``hyper`` are kept.
      context: run facts (``seed``, ``epoch_length``) passed to the factories whose signature
        takes them.
    """
    method, factory = _method(name)
    parameters = inspect.signature(factory).parameters
    options = {key: values[key] for key in method.hyper}
    options.update(
        {key: context[key] for key in _CONTEXT_ARGUMENTS if key in context and key in parameters}
    )
    return options


def check_method_options(name: str, options: Mapping[str, Any]) -> None:
    """Check ``options`` (``TrainConfig.method_options``) against the factory of ``name``.

    Each key must be a keyword parameter of the factory that the trainer does not set itself
    (``num_tasks``, ``task_weights``, ``shared_mask``, nor the entry's ``fixed`` arguments).
    A value whose parameter defaults to a number must be a finite number (an int where the
    default is an int); other values are left to the factory to check.

    Raises:
      ValueError: naming the method, the key and the value, and listing the accepted keys.

    Examples:
      >>> from camegrad_jax.rrg.optim import check_method_options
      >>> check_method_options("camegrad", {"solver_maxiter": 50})
      >>> check_method_options("camegrad", {"foo": 1})
      Traceback (most recent call last):
      ...
      ValueError: `method_options` key 'foo' is not an option of method 'camegrad'...
    """
    method, factory = _method(name)
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    reserved = {*_SETUP_ARGUMENTS, *method.fixed}
    accepted = [
        key
        for key, p in parameters.items()
        if key not in reserved
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"`method_options` key {key!r} is not an option of method {name!r} "
                f"(camegrad_jax.{method.factory}); its options are: {', '.join(accepted)}."
            )
        default = parameters[key].default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        kind = int if isinstance(default, int) else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
            expected = "an int" if kind is int else "a finite number"
            raise ValueError(
                f"`method_options[{key!r}]` of method {name!r} should be {expected} (its "
                f"default is {default!r}). Found `{key} = {value!r}`."
            )


def learning_rate_schedule(
    peak: float, total_steps: int, warmup_fraction: float, final_fraction: float
) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_fraction`` of the steps, then cosine decay to
    ``final_fraction × peak`` at ``total_steps``."""
    warmup = int(round(warmup_fraction * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=final_fraction * peak,
    )


def weight_decay_mask(params: Any) -> Any:
    """True for the parameters AdamW decays: matrices and conv kernels (``ndim >= 2``); not
    biases, norm scales or other vectors, as the public CAME-Grad code groups them."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def step_optimizer(params: Any, *, weight_decay: float) -> optax.GradientTransformation:
    """The AdamW of `build_optimizer` (no clip) for a training-step method, with its learning
    rate a hyper-parameter in the state (``optax.inject_hyperparams``): the train step sets it
    from the schedule once per batch, however many parameter updates the method makes, as the
    official STGU code steps its scheduler once per batch."""
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=0.0,
        b1=0.9,
        b2=0.999,
        weight_decay=weight_decay,
        mask=weight_decay_mask(params),
    )


def build_optimizer(
    multitask: optax.GradientTransformation,
    params: Any,
    schedule: optax.Schedule,
    *,
    weight_decay: float,
    clip: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``chain(multitask, [clip], adamw(schedule, b1=0.9, b2=0.999, weight_decay, mask))``.

    Args:
      multitask: a transformation over stacked per-task gradients (first in the chain).
      params: the parameters (for the weight-decay mask).
      schedule: AdamW's learning rate.
      weight_decay: decoupled weight decay, on matrices only (`weight_decay_mask`).
      clip: element-wise clip of the combined gradient before AdamW, or None.
    """
    adamw = optax.adamw(
        schedule, b1=0.9, b2=0.999, weight_decay=weight_decay, mask=weight_decay_mask(params)
    )
    members = [multitask] + ([optax.clip(clip)] if clip is not None else []) + [adamw]
    return optax.chain(*members)
