"""Hyper-parameter checks shared by every transformation.

Checks run in the factory, so a bad value fails where it was written. Under
`optax.inject_hyperparams` the numeric hyper-parameters reach the factory as traced arrays
inside `update`; a traced value cannot be inspected, so it is checked once, concretely, when
`init` runs, and passes through unchecked afterwards.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _describe(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0:
        return repr(np.asarray(value).item())
    return repr(value)


def check_non_negative(value: Any, name: str) -> None:
    """Raises `ValueError` unless `value` is a finite real number ≥ 0 (or a traced array)."""
    if is_traced(value):
        return
    if np.ndim(value) != 0 or not np.isfinite(value) or value < 0:
        raise ValueError(
            f"Parameter `{name}` should be a finite non-negative float. "
            f"Found `{name} = {_describe(value)}`."
        )


def check_positive(value: Any, name: str) -> None:
    if is_traced(value):
        return
    if np.ndim(value) != 0 or not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"Parameter `{name}` should be a finite positive float. "
            f"Found `{name} = {_describe(value)}`."
        )


def check_unit_interval(value: Any, name: str) -> None:
    if is_traced(value):
        return
    if np.ndim(value) != 0 or not (0.0 <= value <= 1.0):
        raise ValueError(
            f"Parameter `{name}` should be a float in [0, 1]. Found `{name} = {_describe(value)}`."
        )


def check_positive_int(value: Any, name: str) -> None:
    """Raises `ValueError` unless `value` is a positive integer (or a traced array).

    Examples:
      >>> from camegrad_jax._validation import check_positive_int
      >>> check_positive_int(0, "num_tasks")
      Traceback (most recent call last):
      ...
      ValueError: Parameter `num_tasks` should be a positive integer. Found `num_tasks = 0`.
    """
    if is_traced(value):
        return
    if isinstance(value, bool) or np.ndim(value) != 0 or int(value) != value or value < 1:
        raise ValueError(
            f"Parameter `{name}` should be a positive integer. Found `{name} = {_describe(value)}`."
        )


def check_choice(value: Any, choices: tuple, name: str) -> None:
    """Raises `ValueError` unless `value` is one of `choices` (static strings or numbers)."""
    if is_traced(value):
        return
    if isinstance(value, bool) or value not in choices:
        raise ValueError(
            f"Parameter `{name}` should be one of {choices}. Found `{name} = {value!r}`."
        )


def check_task_weights(task_weights: Any, name: str = "task_weights") -> None:
    """Task weights must be a 1-D sequence of finite positive numbers."""
    if task_weights is None or is_traced(task_weights):
        return
    values = np.asarray(task_weights, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"Parameter `{name}` should be a non-empty 1-D sequence of positive floats. "
            f"Found `{name} = {task_weights!r}` with shape {values.shape}."
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"Parameter `{name}` should hold finite positive floats. Found `{name} = "
            f"{values.tolist()!r}`."
        )


def resolve_num_tasks(num_tasks: Any, task_weights: Any) -> int | None:
    """The number of tasks implied by `num_tasks` and `task_weights`, checked for agreement.

    Called when the state is built: under `optax.inject_hyperparams` an integer `num_tasks`
    arrives as a (concrete) array there.
    """
    from_weights = None if task_weights is None else int(np.shape(task_weights)[0])
    if num_tasks is None:
        return from_weights
    if is_traced(num_tasks):
        raise ValueError(
            "Parameter `num_tasks` sizes the optimizer state and must be concrete when `init` "
            "runs; under `optax.inject_hyperparams` with a jitted init, pass it in `static_args`."
        )
    check_positive_int(num_tasks, "num_tasks")
    num_tasks = int(num_tasks)
    if from_weights is not None and from_weights != num_tasks:
        raise ValueError(
            f"Parameter `task_weights` has {from_weights} entries but `num_tasks = {num_tasks}`."
        )
    return num_tasks


def weights_vector(task_weights: Any, num_tasks: int, dtype: Any) -> jax.Array:
    """Task weights as a (K,) array, checked against the task axis seen at update time."""
    if task_weights is None:
        return jnp.ones((num_tasks,), dtype)
    weights = jnp.asarray(task_weights, dtype)
    if weights.shape != (num_tasks,):
        raise ValueError(
            f"Parameter `task_weights` has shape {weights.shape}, but the stacked gradients carry "
            f"a task axis of size K = {num_tasks}."
        )
    return weights
