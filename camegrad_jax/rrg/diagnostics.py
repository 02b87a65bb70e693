"""What the optimizer did at every step, read off its state, and how to summarise it.

:func:`step_diagnostics` runs inside the jitted train step: it finds the
:class:`camegrad_jax.MultiTaskState` in any optimizer state and returns a small dict of arrays
(both losses, the gradient statistics, the coefficients, and the method's own scalars such as
CAME-Grad's dual weights and solver iterations). The trainer fetches these dicts to the host in
batches of steps, not one by one, so logging adds no per-step synchronisation.

Every norm and cosine is taken on the *shared* parameters (the visual encoder), where the
multi-task methods act; the other parameters receive the plain weighted sum of gradients.

Per-step fields (arrays over steps, in ``steps.npz``):

* ``step``, ``epoch``, ``learning_rate``, ``loss_lm``, ``loss_cls``;
* with gradient statistics (every Gram-based method, and "linear" with diagnostics):
  ``cosine_similarity`` (of the two task gradients; for K > 2 the most conflicting pair),
  ``conflict`` (cosine < 0), ``magnitude_collapse_ratio`` (‖g_lin‖ / Σ‖h_i‖),
  ``joint_norm`` (‖g_lin‖ = ‖Σ λ_i g_i‖), ``update_norm`` (‖Σ β_i g_i‖, the multi-task
  output before AdamW), ``task_norms`` (‖λ_i g_i‖, shape (steps, K));
* ``coefficients`` (β, shape (steps, K));
* the method's own vectors and scalars, e.g. for CAME-Grad ``dual_weights`` (steps, K),
  ``direction_norm``, ``noise_norm``, ``solver_iterations``, ``solver_error``,
  ``duality_gap``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from camegrad_jax import GradientStats, MultiTaskState
from camegrad_jax.rrg.config import TASK_NAMES

__all__ = [
    "QUANTILES",
    "StepLog",
    "find_multitask_state",
    "step_diagnostics",
    "summarize_step_log",
]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def find_multitask_state(opt_state: Any) -> MultiTaskState | None:
    """The first :class:`camegrad_jax.MultiTaskState` inside an optimizer state, if any.

    Found by its type name with ``optax.tree_utils``, as optax's own state look-ups are, so
    any wrapper (``chain``, ``inject_hyperparams``, ``masked``, ...) may hold it."""
    found = optax.tree_utils.tree_get_all_with_path(
        opt_state,
        MultiTaskState.__name__,
        filtering=lambda _, node: isinstance(node, MultiTaskState),
    )
    return found[0][1] if found else None


def _is_loggable(name: str, value: Any, num_tasks: int) -> bool:
    if name == "key" or not isinstance(value, jax.Array):
        return False
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return False
    return value.ndim <= 1 and value.size <= num_tasks * num_tasks


def step_diagnostics(losses: jax.Array, opt_state: Any) -> dict[str, jax.Array]:
    """The per-step fields (see the module docstring) from the losses and the optimizer state
    after the update. Call it inside the jitted step."""
    out = {f"loss_{name}": losses[i] for i, name in enumerate(TASK_NAMES)}
    state = find_multitask_state(opt_state)
    if state is None:
        return out
    num_tasks = state.coefficients.shape[0]
    stats = state.stats
    if isinstance(stats, GradientStats):
        pairs = ~jnp.eye(num_tasks, dtype=bool)
        out["cosine_similarity"] = jnp.min(jnp.where(pairs, stats.cosine_similarity, jnp.inf))
        out["conflict"] = stats.any_conflict
        out["magnitude_collapse_ratio"] = stats.magnitude_collapse_ratio
        out["joint_norm"] = stats.joint_norm
        out["update_norm"] = stats.update_norm
        out["task_norms"] = stats.task_norms
    out["coefficients"] = state.coefficients
    method_state = state.method_state
    for name in getattr(method_state, "_fields", ()):
        value = getattr(method_state, name)
        if _is_loggable(name, value, num_tasks):
            out[name if name not in out else f"method_{name}"] = value
    return out


class StepLog:
    """Per-step fields accumulated on the host, one array per field (rows are steps).

    Checkpoints store :meth:`arrays` with the other arrays (:meth:`layout` describes them for
    a typed restore), and the trainer writes them to ``steps.npz``.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None):
        self.columns: dict[str, list[np.ndarray]] = {
            name: list(np.asarray(values)) for name, values in (arrays or {}).items()
        }

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), ()))

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append host records (dicts of numpy scalars/vectors, one per step)."""
        for record in records:
            if self.columns and set(record) != set(self.columns):
                raise ValueError(
                    f"Step record fields {sorted(record)} differ from the log's "
                    f"{sorted(self.columns)}."
                )
            for name, value in record.items():
                self.columns.setdefault(name, []).append(np.asarray(value))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.stack(values) for name, values in self.columns.items()}

    def layout(self) -> dict[str, dict[str, Any]]:
        """``{field: {"shape": per-step shape, "dtype": name}}``, JSON-ready."""
        return {
            name: {"shape": list(values[0].shape), "dtype": values[0].dtype.name}
            for name, values in self.columns.items()
        }

    @staticmethod
    def abstract_arrays(layout: Mapping[str, Mapping[str, Any]], length: int) -> dict[str, Any]:
        """``jax.ShapeDtypeStruct``s of the :meth:`arrays` of a log of ``length`` steps."""
        return {
            name: jax.ShapeDtypeStruct((length, *spec["shape"]), np.dtype(spec["dtype"]))
            for name, spec in layout.items()
        }

    def save_npz(self, path: str) -> None:
        np.savez(path, **self.arrays())


def _describe(values: np.ndarray) -> dict[str, Any]:
    values = values.astype(np.float64)
    quantiles = np.quantile(values, QUANTILES, axis=0)
    out = {
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "min": values.min(axis=0),
        "max": values.max(axis=0),
    }
    out.update(
        {f"q{round(100 * q):02d}": value for q, value in zip(QUANTILES, quantiles, strict=True)}
    )
    return {k: np.asarray(v).tolist() for k, v in out.items()}


def summarize_step_log(log: StepLog) -> dict[str, Any]:
    """Mean, std, min, max and quantiles of every per-step field (per component for vector
    fields); the mean of ``conflict`` is the share of steps in conflict. Adds
    ``update_to_joint_norm`` (‖update‖ / ‖g_lin‖ per step) when both norms were logged.

    Examples:
      >>> from camegrad_jax.rrg.diagnostics import StepLog, summarize_step_log
      >>> log = StepLog()
      >>> log.extend([{"step": 0, "conflict": True, "update_norm": 1.0, "joint_norm": 2.0},
      ...             {"step": 1, "conflict": False, "update_norm": 3.0, "joint_norm": 3.0}])
      >>> summary = summarize_step_log(log)
      >>> summary["num_steps"], summary["conflict"]["mean"]
      (2, 0.5)
      >>> summary["update_to_joint_norm"]["min"], summary["update_to_joint_norm"]["max"]
      (0.5, 1.0)
    """
    arrays = log.arrays()
    if not len(log):
        return {"num_steps": 0}
    summary: dict[str, Any] = {"num_steps": len(log)}
    for name, values in arrays.items():
        if name not in ("step", "epoch"):
            summary[name] = _describe(values)
    if "update_norm" in arrays and "joint_norm" in arrays:
        joint = arrays["joint_norm"]
        usable = joint > 0
        if usable.any():
            summary["update_to_joint_norm"] = _describe(
                arrays["update_norm"][usable] / joint[usable]
            )
    return summary
