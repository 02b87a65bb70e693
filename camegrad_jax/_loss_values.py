"""What the loss-based methods share: the K task losses passed to ``update`` as ``value``.

optax passes a scalar objective to ``update`` as the extra argument ``value`` (see
``optax.contrib.reduce_on_plateau``); the loss-based methods here take the vector of the K task
losses the same way, ``tx.update(grads, state, params, value=losses)``, e.g. the first output of
:func:`camegrad_jax.task_gradients`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from camegrad_jax import _validation


def task_losses(extra_args: dict[str, Any], num_tasks: int, name: str, dtype: Any) -> jax.Array:
    """The (K,) task losses from ``update``'s extra arguments, in ``dtype`` (≥ float32).

    Examples:
      >>> import jax.numpy as jnp
      >>> from camegrad_jax._loss_values import task_losses
      >>> task_losses({"value": jnp.array([0.5, 2.0])}, 2, "famo", jnp.float32)
      Array([0.5, 2. ], dtype=float32)
      >>> task_losses({}, 2, "famo", jnp.float32)
      Traceback (most recent call last):
      ...
      ValueError: famo needs the K task losses: pass them to update as `value=losses` ...
    """
    value = extra_args.get("value")
    if value is None:
        raise ValueError(
            f"{name} needs the K task losses: pass them to update as `value=losses` (shape "
            f"({num_tasks},)), e.g. the losses returned by `camegrad_jax.task_gradients`."
        )
    if jnp.shape(value) != (num_tasks,):
        raise ValueError(
            f"{name} expects `value` to hold the K = {num_tasks} task losses (shape "
            f"({num_tasks},)). Found `value` with shape {jnp.shape(value)}."
        )
    return jnp.asarray(value).astype(dtype)


def all_finite(*arrays: jax.Array) -> jax.Array:
    """() bool: whether every entry is finite. A step that is not keeps the method's state, and
    its coefficients become NaN so that a downstream ``optax.apply_if_finite`` rejects it."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays]))


def keep_if(condition: jax.Array, new: Any, old: Any) -> Any:
    """``new`` where ``condition`` holds, ``old`` elsewhere, leaf by leaf (same structure)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def check_finite(value: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite real number (or a traced array)."""
    if _validation.is_traced(value):
        return
    if np.ndim(value) != 0 or isinstance(value, bool) or not np.isfinite(value):
        raise ValueError(
            f"Parameter `{name}` should be a finite float. Found `{name} = {value!r}`."
        )


def check_integer(value: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer (or a traced array)."""
    if _validation.is_traced(value):
        return
    if (
        isinstance(value, bool)
        or np.ndim(value) != 0
        or not np.isfinite(value)
        or int(value) != value
    ):
        raise ValueError(f"Parameter `{name}` should be an integer. Found `{name} = {value!r}`.")


def check_finite_per_task(value: Any, name: str, num_tasks: int | None) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite float or a 1-D sequence of finite floats,
    one per task where K is known already (otherwise `per_task` checks it at the first update)."""
    if _validation.is_traced(value):
        return
    values = np.asarray(value, dtype=np.float64)
    if values.ndim > 1 or not np.all(np.isfinite(values)):
        raise ValueError(
            f"Parameter `{name}` should be a finite float or a 1-D sequence of K finite floats. "
            f"Found `{name} = {value!r}`."
        )
    if num_tasks is not None:
        per_task(value, num_tasks, name, jnp.float32)


def per_task(value: Any, num_tasks: int, name: str, dtype: Any) -> jax.Array:
    """A float or K floats as a (K,) array in ``dtype``; raises ``ValueError`` on another length.

    Examples:
      >>> from camegrad_jax._loss_values import per_task
      >>> per_task(0.5, 2, "min_loss", "float32")
      Array([0.5, 0.5], dtype=float32)
      >>> per_task([0.0, 1.0, 2.0], 2, "min_loss", "float32")
      Traceback (most recent call last):
      ...
      ValueError: Parameter `min_loss` has 3 entries but K = 2 tasks.
    """
    if np.ndim(value) == 1 and np.shape(value)[0] != num_tasks:
        raise ValueError(
            f"Parameter `{name}` has {np.shape(value)[0]} entries but K = {num_tasks} tasks."
        )
    return jnp.broadcast_to(jnp.asarray(value, dtype), (num_tasks,))
