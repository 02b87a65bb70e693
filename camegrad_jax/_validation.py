"""Hyper-parameter checks shared by every transformation.

Checks run in the factory, so a bad value fails where it was written: a value of the wrong type
(a string, a bool, a complex number) raises `TypeError`, a value out of range `ValueError`, both
naming the argument and the value. Under `optax.inject_hyperparams` the numeric hyper-parameters
reach the factory as traced arrays inside `update`; a traced value cannot be inspected, so it is
checked concretely when `init` runs, and afterwards its check returns a traced verdict that the
transformation turns into a NaN update when a schedule leaves the valid range (see `Verdict`).
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


# A check's verdict: True once a concrete value has passed (a bad one raised), or a traced bool
# for a value that `optax.inject_hyperparams` passes as a traced array. The factory hands the
# traced verdicts to the transformation, which poisons its update with NaN when one is False:
# a schedule that leaves the valid range must not give a silently wrong step.
Verdict = bool | jax.Array


def _check_real_scalar(value: Any, name: str, expected: str) -> None:
    """Raises `TypeError` unless `value` is a real number: a Python or NumPy int/float, or a 0-d
    array of a real numeric dtype (bools, strings and complex numbers are refused by name)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        ok = np.ndim(value) == 0 and (
            jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        )
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise TypeError(
            f"Parameter `{name}` should be {expected}. Found `{name} = {_describe(value)}` of "
            f"type {type(value).__name__}."
        )


def check_non_negative(value: Any, name: str) -> Verdict:
    """Raises unless `value` is a finite real number ≥ 0; see `Verdict` for traced values."""
    _check_real_scalar(value, name, "a finite non-negative float")
    if is_traced(value):
        return jnp.isfinite(value) & (value >= 0)
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"Parameter `{name}` should be a finite non-negative float. "
            f"Found `{name} = {_describe(value)}`."
        )
    return True


def check_positive(value: Any, name: str) -> Verdict:
    _check_real_scalar(value, name, "a finite positive float")
    if is_traced(value):
        return jnp.isfinite(value) & (value > 0)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"Parameter `{name}` should be a finite positive float. "
            f"Found `{name} = {_describe(value)}`."
        )
    return True


def check_unit_interval(value: Any, name: str) -> Verdict:
    _check_real_scalar(value, name, "a float in [0, 1]")
    if is_traced(value):
        return (value >= 0) & (value <= 1)
    if not (0.0 <= value <= 1.0):
        raise ValueError(
            f"Parameter `{name}` should be a float in [0, 1]. Found `{name} = {_describe(value)}`."
        )
    return True


def check_positive_int(value: Any, name: str) -> Verdict:
    """Raises unless `value` is a positive integer; see `Verdict` for traced values.

    Examples:
      >>> from camegrad_jax._validation import check_positive_int
      >>> check_positive_int(0, "num_tasks")
      Traceback (most recent call last):
      ...
      ValueError: Parameter `num_tasks` should be a positive integer. Found `num_tasks = 0`.
    """
    _check_real_scalar(value, name, "a positive integer")
    if is_traced(value):
        return value >= 1
    if int(value) != value or value < 1:
        raise ValueError(
            f"Parameter `{name}` should be a positive integer. Found `{name} = {_describe(value)}`."
        )
    return True


def check_non_negative_int(value: Any, name: str) -> Verdict:
    """Raises unless `value` is an integer ≥ 0; see `Verdict` for traced values.

    Examples:
      >>> from camegrad_jax._validation import check_non_negative_int
      >>> check_non_negative_int(-1, "f")
      Traceback (most recent call last):
      ...
      ValueError: Parameter `f` should be a non-negative integer. Found `f = -1`.
    """
    _check_real_scalar(value, name, "a non-negative integer")
    if is_traced(value):
        return value >= 0
    if int(value) != value or value < 0:
        raise ValueError(
            f"Parameter `{name}` should be a non-negative integer. "
            f"Found `{name} = {_describe(value)}`."
        )
    return True


def all_valid(*verdicts: Verdict) -> Verdict:
    """The conjunction of check verdicts: True when every value was concrete."""
    traced = [v for v in verdicts if v is not True]
    if not traced:
        return True
    return jnp.all(jnp.stack([jnp.asarray(v, bool) for v in traced]))


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
    """The number of tasks implied by `num_tasks` and `task_weights`, checked for agreement;
    None when neither gives it (the state is then sized by the first stacked gradients).

    Under `optax.inject_hyperparams` an integer `num_tasks` arrives as an array, traced when
    `init` itself is jitted: it then counts as unknown, like an absent one.
    """
    from_weights = None if task_weights is None else int(np.shape(task_weights)[0])
    if num_tasks is None or is_traced(num_tasks):
        return from_weights
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
