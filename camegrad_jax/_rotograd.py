r"""RotoGrad: per-task rotations of the shared representation, and gradient-norm homogenisation.

Javaloy & Valera (ICLR 2022) put a learned rotation :math:`R_k \in SO(m)` between the shared
representation z and each task head, :math:`z_k = R_k z`, and change the backward pass:

* **rotations** (direction homogenisation) — each :math:`R_k` is trained by its own objective,
  not by the task losses, to rotate a common reference direction onto its task's gradient;
* **scaling** (magnitude homogenisation) — the backbone receives the task gradients with respect
  to z, normalised to a common norm weighted by each task's convergence ratio.

This module follows the official implementation (https://github.com/adrianjav/rotograd,
``rotograd/rotograd.py``, class ``RotoGrad``). It offers the two parts separately, because they
are trained by different objectives and optimizers (the official README steps the rotations with
their own optimizer and a smaller learning rate):

* :class:`RotoGrad`, a Flax NNX module holding the rotations, that maps z to its K rotated copies
  and computes the rotations' objective :meth:`RotoGrad.rotation_loss`;
* :func:`rotograd_scaling`, the optax transformation of the backbone's stacked task gradients.

Both need the task gradients with respect to the shared representation z (not with respect to
the parameters): a batch-shaped quantity the stacked parameter gradients do not determine. They
take them explicitly (``representation_grads``), computed by differentiating the K losses with
respect to a zero "probe" added to z (see :func:`rotograd_scaling`'s example). Scaling by norms
measured on the parameters instead would be a different method, and is not offered.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from camegrad_jax import _loss_values, _tree, _validation
from camegrad_jax._aggregation import (
    Weighting,
    WeightingResult,
    stacked_gradient_transformation,
)

_NAME = "rotograd_scaling"
# The official code's floor on gradient norms (`clamp_min(1e-15)`): it only matters for a task
# whose representation gradient is exactly zero.
_NORM_FLOOR = 1e-15


class Rotation(nnx.Variable):
    """RotoGrad's rotation parameters: trained by :meth:`RotoGrad.rotation_loss`, not by the task
    losses. Not an ``nnx.Param``, so ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leaves them to
    their own optimizer (``wrt=Rotation``)."""


def _rotate(rotations: jax.Array, vectors: jax.Array) -> jax.Array:
    """(K, m, m) rotations applied to the first m features of (K, ..., d) vectors."""
    size = rotations.shape[-1]
    head = jnp.einsum("kij,k...j->k...i", rotations, vectors[..., :size])
    return jnp.concatenate([head, vectors[..., size:]], axis=-1)


def _stacked_norms(tree: Any, num_tasks: int, dtype: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    squares = [jnp.sum(jnp.square(leaf.astype(dtype)).reshape(num_tasks, -1), 1) for leaf in leaves]
    return jnp.sqrt(sum(squares))


class RotoGrad(nnx.Module):
    r"""K learned rotations of a shared representation (the rotating part of RotoGrad).

    ``rotograd(z)`` maps a representation z of shape (..., d) to K copies of shape (K, ..., d)
    whose first m = ``rotation_size`` features are rotated, :math:`z_k = R_k z`; the remaining
    d − m features pass unchanged (the official ``rotation_shape`` smaller than the output).
    Head k reads copy k. The rotations are parametrised as the official code does through
    geotorch's ``orthogonal(triv="expm")``: :math:`R_k = \exp(A_k - A_k^\top)` with :math:`A_k` the
    strictly lower triangle of an unconstrained matrix (stored as a :class:`Rotation`), starting
    at :math:`R_k = I` (the official ``torch.eye`` initial value). The forward pass treats
    :math:`R_k` as a constant (the official ``R.detach()``): the task losses do not train it.

    Training step (the official ``RotoGrad.backward``), with :math:`g_k = \nabla_z L_k` the
    gradient of task k's loss with respect to the *unrotated* z through its branch:

    1. the backbone's parameters receive :func:`rotograd_scaling` of their stacked task
       gradients, the heads their plain task gradients;
    2. the rotations descend :meth:`rotation_loss` ``(g)`` with their own optimizer.

    Args:
      num_tasks: K, the number of task heads.
      rotation_size: m, the number of leading features of z that are rotated.
      param_dtype: dtype of the rotation parameters.
    """

    def __init__(self, num_tasks: int, rotation_size: int, *, param_dtype: Any = jnp.float32):
        _validation.check_positive_int(num_tasks, "num_tasks")
        _validation.check_positive_int(rotation_size, "rotation_size")
        self.num_tasks = int(num_tasks)
        self.rotation_size = int(rotation_size)
        self.generators = Rotation(
            jnp.zeros((self.num_tasks, self.rotation_size, self.rotation_size), param_dtype)
        )

    def rotations(self) -> jax.Array:
        """(K, m, m) the rotation matrices :math:`R_k`."""
        lower = jnp.tril(self.generators[...], -1)
        return jax.vmap(jax.scipy.linalg.expm)(lower - jnp.swapaxes(lower, -1, -2))

    def _check_features(self, x: jax.Array, name: str) -> None:
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] < self.rotation_size:
            raise ValueError(
                f"`{name}` should have at least rotation_size = {self.rotation_size} features on "
                f"its last axis. Found shape {jnp.shape(x)}."
            )

    def __call__(self, z: jax.Array) -> jax.Array:
        """(..., d) → (K, ..., d): the K rotated copies :math:`R_k z` of the representation."""
        self._check_features(z, "z")
        rotations = jax.lax.stop_gradient(self.rotations()).astype(z.dtype)
        return _rotate(rotations, jnp.broadcast_to(z, (self.num_tasks, *jnp.shape(z))))

    def rotation_loss(self, representation_grads: jax.Array) -> jax.Array:
        r"""The rotations' objective, whose gradient with respect to the :class:`Rotation`
        parameters is the official one.

        With :math:`g_k` the (K, ..., d) task gradients with respect to the unrotated z (through
        each branch) and :math:`\hat g_k = R_k g_k` the gradients with respect to the rotated
        copies :math:`z_k` (both held constant):

        .. math::

          \bar g = \frac{\|\tfrac1K\sum_k g_k\|}{K} \sum_k \frac{g_k}{\|g_k\|}, \qquad
          \mathcal{L}_{rot} = \sum_k \operatorname{mean}_{\text{batch}}
            \bigl\|R_k \bar g - \hat g_k\bigr\|^2 ,

        norms taken over the whole (batch × feature) tensors, the squared norm inside over the
        features of each sample, the mean over the remaining (batch) axes.
        """
        self._check_features(representation_grads, "representation_grads")
        if jnp.shape(representation_grads)[0] != self.num_tasks:
            raise ValueError(
                f"`representation_grads` should carry K = {self.num_tasks} task gradients on its "
                f"leading axis. Found shape {jnp.shape(representation_grads)}."
            )
        rotations = self.rotations()
        grads = jax.lax.stop_gradient(representation_grads).astype(rotations.dtype)
        rotated_grads = _rotate(jax.lax.stop_gradient(rotations), grads)
        k = self.num_tasks
        norms = _stacked_norms(grads, k, grads.dtype)
        mean_norm = jnp.sqrt(jnp.sum(jnp.square(jnp.mean(grads, axis=0))))
        scale = jnp.where(norms > 0, mean_norm / jnp.where(norms > 0, norms, 1.0), 0.0)
        reference = jnp.mean(scale.reshape((k,) + (1,) * (grads.ndim - 1)) * grads, axis=0)
        reference = jnp.broadcast_to(reference, grads.shape)
        residual = _rotate(rotations, reference) - rotated_grads
        per_sample = jnp.sum(jnp.square(residual), axis=-1)
        return jnp.sum(jnp.mean(per_sample.reshape(k, -1), axis=1))


class RotoGradScalingState(NamedTuple):
    """:func:`rotograd_scaling`'s own state (``MultiTaskState.method_state``)."""

    initial_norms: jax.Array  # (K,) float32, ‖g_k‖ at the first step (or after the burn-in).
    count: jax.Array  # () int32, number of updates so far.


def rotograd_scaling(
    *,
    burn_in_period: int = 20,
    task_weights: Any = None,
    num_tasks: int | None = None,
    shared_mask: _tree.MaskOrFn = None,
) -> optax.GradientTransformationExtraArgs:
    r"""RotoGrad's gradient-magnitude homogenisation of the backbone's stacked task gradients.

    With :math:`g_k = \nabla_z \lambda_k L_k` the task gradients with respect to the shared
    representation z (passed as ``representation_grads``), :math:`n_k = \|g_k\|` (over the whole
    batch tensor) and :math:`n_k(0)` recorded at the first update and again after
    ``burn_in_period`` updates (the official ``RotoGrad._rep_grad``):

    .. math::

      \alpha_k = \frac{n_k / n_k(0)}{\sum_j n_j / n_j(0)}, \qquad
      W = \sum_k \alpha_k n_k, \qquad
      \nabla_z \leftarrow \sum_k \frac{W}{n_k}\, g_k .

    The backbone's parameters θ receive :math:`J_\theta^\top \nabla_z`; since each
    :math:`\nabla_\theta \lambda_k L_k = J_\theta^\top g_k`, that is exactly
    :math:`\sum_k (W / n_k)\, \lambda_k \nabla_\theta L_k`, the weighted sum of the stacked
    parameter gradients this transformation receives. Norms are floored at 1e-15 as in the
    official code.

    ``shared_mask`` marks the backbone; the other leaves (the heads) receive their plain task
    gradients Σ λ_k g_k, as in the official code with ``normalize_losses=False`` (its default;
    the loss-normalised variant of the heads' gradients is not offered). The rotation parameters
    must not be in the tree this transformation updates: train them with
    :meth:`RotoGrad.rotation_loss`.

    This transformation must be **first** in a chain (its input has a task axis its output does
    not); see :func:`camegrad_jax.camegrad`.

    Args:
      burn_in_period: update after which the reference norms :math:`n_k(0)` are recorded again,
        a positive integer (official default 20).
      task_weights: static positive weights λ of the task losses.
      num_tasks: K, optional: the first stacked gradients size the state otherwise (pass it
        for ``lax.scan`` over steps; see :func:`camegrad_jax.camegrad`).
      shared_mask: the backbone's leaves (default all).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(task_updates, state,
      params=None, *, representation_grads)`` needs ``representation_grads``: a pytree whose
      leaves have a leading task axis of size K, the gradients of the K (unweighted) task losses
      with respect to the shared representation. A step with non-finite representation gradients
      leaves the state unchanged and returns a NaN update.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> import camegrad_jax as cg
      >>> from camegrad_jax import RotoGrad, Rotation, rotograd_scaling
      >>> x = jax.random.normal(jax.random.key(0), (8, 3))
      >>> targets = jnp.stack([x.sum(1), -x[:, 0]])
      >>> rotograd = RotoGrad(num_tasks=2, rotation_size=4)
      >>> params = {"backbone": jnp.ones((3, 4)), "heads": jnp.eye(2, 4)}
      >>> def losses(params, probe):
      ...     z = jnp.tanh(x @ params["backbone"]) + probe  # the probe reads ∇_z
      ...     preds = jnp.einsum("kbd,kd->kb", rotograd(z), params["heads"])
      ...     return jnp.mean((preds - targets) ** 2, axis=1)
      >>> probe = jnp.zeros((8, 4))
      >>> values, (grads, rep_grads) = cg.task_gradients(lambda pp: losses(*pp), (params, probe))
      >>> tx = optax.chain(
      ...     rotograd_scaling(num_tasks=2, shared_mask={"backbone": True, "heads": False}),
      ...     optax.sgd(0.1),
      ... )
      >>> updates, state = tx.update(grads, tx.init(params), params, representation_grads=rep_grads)
      >>> rotation_optimizer = nnx.Optimizer(rotograd, optax.sgd(0.01), wrt=Rotation)
      >>> rotation_grads = nnx.grad(
      ...     lambda m: m.rotation_loss(rep_grads), argnums=nnx.DiffState(0, Rotation)
      ... )(rotograd)
      >>> _ = rotation_optimizer.update(rotograd, rotation_grads)
      >>> rotograd.rotations().shape
      (2, 4, 4)

    References:
      Javaloy & Valera, RotoGrad: Gradient Homogenization in Multitask Learning, ICLR 2022.
      https://arxiv.org/abs/2103.02631 (official code: https://github.com/adrianjav/rotograd)
    """
    _validation.check_positive_int(burn_in_period, "burn_in_period")

    def init_method_state(k: int) -> RotoGradScalingState:
        return RotoGradScalingState(
            initial_norms=jnp.ones((k,), jnp.float32), count=jnp.zeros((), jnp.int32)
        )

    def weighting(gram, state: RotoGradScalingState, weights, **extra_args):
        del gram
        k = weights.shape[0]
        dtype = weights.dtype
        grads = extra_args.get("representation_grads")
        if grads is None:
            raise ValueError(
                "rotograd_scaling needs the task gradients with respect to the shared "
                "representation: pass them to update as `representation_grads=...` (leaves of "
                f"shape (K = {k}, ...)); see the docstring's example."
            )
        if _tree.task_axis_size(grads, "representation_grads") != k:
            shapes = [jnp.shape(g) for g in jax.tree.leaves(grads)]
            raise ValueError(
                f"`representation_grads` should carry K = {k} task gradients on the leading "
                f"axis of every leaf. Found shapes {shapes}."
            )
        norms = jnp.maximum(weights * _stacked_norms(grads, k, dtype), _NORM_FLOOR)
        reset = (state.count == 0) | (state.count == jnp.asarray(burn_in_period, jnp.int32))
        initial = jnp.where(reset, norms, state.initial_norms.astype(dtype))
        convergence = norms / initial
        alphas = convergence / jnp.maximum(jnp.sum(convergence), _NORM_FLOOR)
        common_norm = jnp.sum(alphas * norms)
        coefficients = weights * common_norm / norms

        finite = _loss_values.all_finite(norms)
        new_state = RotoGradScalingState(
            initial_norms=jnp.where(finite, initial, state.initial_norms.astype(dtype)),
            count=jnp.where(finite, optax.safe_int32_increment(state.count), state.count),
        )
        return WeightingResult(jnp.where(finite, coefficients, jnp.nan), new_state)

    return stacked_gradient_transformation(
        Weighting(init_method_state, weighting),
        name=_NAME,
        num_tasks=num_tasks,
        task_weights=task_weights,
        shared_mask=shared_mask,
        uses_gram=False,
    )
