"""An experiment before its first step: data, model, multi-task method, optimizer, jitted step.

:func:`build_setup` turns a :class:`~camegrad_jax.rrg.config.TrainConfig` into a :class:`Setup`;
:func:`make_train_step` is the one jitted step every method shares::

    losses, task_grads = camegrad_jax.task_gradients(loss_fn, params)   # [L_lm, L_cls]
    updates, opt_state = tx.update(task_grads, opt_state, params, value=losses)
    params = optax.apply_updates(params, updates)

with the dropout key ``fold_in(key(seed), step)``. A training-step method (STGU) replaces the
three lines with its own step, ``params, opt_state, info = stgu.step(params, opt_state, rest,
batch, key)``, after the learning rate of its AdamW is set from the schedule.
:func:`update_samples` evaluates the multi-task method alone at fixed parameters, for
measurements of the update noise.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import camegrad_jax
from camegrad_jax import MultiTaskState
from camegrad_jax.rrg.aux_tasks import build_model
from camegrad_jax.rrg.config import TASK_NAMES, TrainConfig
from camegrad_jax.rrg.data import RRGDataset, load_dataset
from camegrad_jax.rrg.diagnostics import step_diagnostics
from camegrad_jax.rrg.labeler import label_reports
from camegrad_jax.rrg.model import RRGModel, loss_vector, shared_parameter_mask
from camegrad_jax.rrg.optim import (
    MULTITASK_METHODS,
    build_multitask,
    build_optimizer,
    build_step_method,
    learning_rate_schedule,
    multitask_options,
    step_optimizer,
)
from camegrad_jax.rrg.synthetic import synthetic_dataset
from camegrad_jax.rrg.tokenizer import Tokenizer

__all__ = [
    "Setup",
    "TrainStep",
    "build_setup",
    "load_data",
    "make_train_step",
    "update_samples",
]

TrainStep = Callable[..., tuple[nnx.State, Any, dict[str, jax.Array]]]


def load_data(
    config: TrainConfig,
    *,
    tokenizer: Tokenizer | None = None,
    image_mean: float | None = None,
    image_std: float | None = None,
) -> RRGDataset:
    """The run's data: synthetic unless ``config.ann_path`` is set; entries of an annotation
    file without ``labels`` are labelled by the rule-based labeler."""
    if config.uses_synthetic_data:
        return synthetic_dataset(
            config.synthetic_config(),
            max_len=config.max_len,
            tokenizer=tokenizer,
            threshold=config.vocab_threshold,
        )
    return load_dataset(
        config.ann_path,
        config.image_dir,
        dataset_name=config.dataset_name,
        image_size=config.image_size,
        max_len=config.max_len,
        label_fn=label_reports,
        tokenizer=tokenizer,
        threshold=config.vocab_threshold,
        image_mean=image_mean,
        image_std=image_std,
    )


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run builds before its first step.

    Attributes:
      config: the run's configuration.
      dataset: the data (tokenizer included).
      graphdef, params, rest: ``nnx.split(model, nnx.Param, ...)`` of the freshly initialised
        model (the variant of ``config.aux``), ``rest`` holding ``base_probs`` from the
        training labels.
      shared_mask: True for the visual encoder's parameters, the only ones both losses share
        (in every auxiliary-task variant).
      steps_per_epoch: training steps per epoch (the last partial batch is dropped).
      schedule: the learning rate by step.
      multitask: the multi-task transformation (first member of ``tx``), or the training
        step of a step method (`camegrad_jax.STGU`).
      multitask_options: the keyword arguments it was built with.
      tx: the whole optimizer chain; for a step method, the step itself (its ``init`` gives
        the optimizer state).
    """

    config: TrainConfig
    dataset: RRGDataset
    graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State
    shared_mask: nnx.State
    steps_per_epoch: int
    schedule: optax.Schedule
    multitask: optax.GradientTransformationExtraArgs | camegrad_jax.STGU
    multitask_options: Mapping[str, Any]
    tx: optax.GradientTransformationExtraArgs | camegrad_jax.STGU

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    def init_opt_state(self, params: nnx.State) -> Any:
        """``tx.init(params)`` with every leaf in a buffer of its own: the train step donates
        the state, and an ``init`` may hand one array to two fields (donating it twice fails).
        """
        return jax.tree.map(jnp.copy, self.tx.init(params))

    def model(self, params: nnx.State | None = None, rest: nnx.State | None = None) -> RRGModel:
        """The model with ``params`` and ``rest`` (default: the initial ones)."""
        return nnx.merge(
            self.graphdef,
            self.params if params is None else params,
            self.rest if rest is None else rest,
        )


def build_setup(
    config: TrainConfig,
    *,
    tokenizer: Tokenizer | None = None,
    image_mean: float | None = None,
    image_std: float | None = None,
    dataset: RRGDataset | None = None,
) -> Setup:
    """Data, model, multi-task method and optimizer of ``config``.

    Args:
      config: the run.
      tokenizer, image_mean, image_std: reuse a run's tokenizer and image normalisation
        (e.g. restored from a checkpoint) rather than computing them from the training split.
      dataset: use this data set instead of loading ``config``'s.
    """
    if dataset is None:
        dataset = load_data(config, tokenizer=tokenizer, image_mean=image_mean, image_std=image_std)
    model_config = config.model_config(dataset.tokenizer.vocab_size, dataset.num_views)
    # RBG keys: on a CPU they compile the initialisers several times faster than threefry.
    model = build_model(
        config.aux,
        model_config,
        rngs=nnx.Rngs(jax.random.key(config.seed, impl="rbg")),
        alignment_weak=config.alignment_weak,
    )
    model.set_base_probs(dataset.base_probs())
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shared_mask = shared_parameter_mask(model)
    steps_per_epoch = dataset.num_batches("train", config.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"`batch_size = {config.batch_size}` exceeds the {len(dataset.splits['train'])} "
            "training studies: an epoch would have no step."
        )
    schedule = learning_rate_schedule(
        config.learning_rate,
        config.epochs * steps_per_epoch,
        config.warmup_fraction,
        config.final_lr_fraction,
    )
    hyper = {"c": config.c, "gamma": config.gamma, "alpha": config.alpha}
    context = {"seed": config.seed, "epoch_length": steps_per_epoch}
    options = multitask_options(config.optimizer, hyper, context)
    options.update(config.method_options)
    if MULTITASK_METHODS[config.optimizer].step:
        multitask = tx = build_step_method(
            config.optimizer,
            _step_loss_fn(graphdef),
            step_optimizer(params, weight_decay=config.weight_decay),
            num_tasks=len(TASK_NAMES),
            task_weights=list(config.task_weights),
            **options,
        )
    else:
        multitask = build_multitask(
            config.optimizer,
            num_tasks=len(TASK_NAMES),
            task_weights=list(config.task_weights),
            shared_mask=shared_mask,
            **options,
        )
        clip = config.baseline_clip if MULTITASK_METHODS[config.optimizer].baseline else None
        tx = build_optimizer(
            multitask, params, schedule, weight_decay=config.weight_decay, clip=clip
        )
    return Setup(
        config=config,
        dataset=dataset,
        graphdef=graphdef,
        params=params,
        rest=rest,
        shared_mask=shared_mask,
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
        multitask=multitask,
        multitask_options=options,
        tx=tx,
    )


def _step_loss_fn(graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    """The losses a training-step method evaluates: ``loss_fn(params, rest, batch, key)``."""

    def loss_fn(params, rest, batch, key):
        return loss_vector(graphdef, params, rest, batch, train=True, dropout_key=key)

    return loss_fn


def _dropout_key(seed: jax.Array, step: jax.Array) -> jax.Array:
    # RBG keys compile dropout masks several times faster than threefry keys on a CPU.
    return jax.random.fold_in(jax.random.key(seed, impl="rbg"), step)


def _seed_argument(seed: int) -> jax.Array:
    """The seed as an array argument, not a constant baked into the program: runs that differ
    only in their seed then compile the same program (a persistent-cache hit)."""
    if not 0 <= seed < 2**31:
        raise ValueError(f"`seed` should lie in [0, 2**31). Found `seed = {seed}`.")
    return jnp.int32(seed)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    schedule: optax.Schedule,
    seed: int,
) -> TrainStep:
    """The jitted ``step(params, opt_state, rest, batch, step) -> (params, opt_state, diag)``.

    ``tx`` is any optax transformation over stacked per-task gradients (leading axis of size
    2); it receives ``value=losses``. ``diag`` holds `step_diagnostics` and the learning rate.
    ``params`` and ``opt_state`` are donated.

    ``tx`` may instead be a training-step method (`camegrad_jax.STGU`, built by `build_setup`
    around `step_optimizer`): its AdamW's learning rate is set to ``schedule(step)``, the step
    runs with the batch's dropout key, and ``diag`` holds the losses at the step's starting
    parameters, the number of task groups and the learning rate.
    """

    def stgu_step(params, opt_state, rest, batch, step, seed):
        key = _dropout_key(seed, step)
        learning_rate = schedule(step)
        # The only `learning_rate` in the state: the injected hyper-parameter of the AdamW.
        opt_state = optax.tree_utils.tree_set(opt_state, learning_rate=learning_rate)
        params, opt_state, info = tx.step(params, opt_state, rest, batch, key)
        diagnostics = step_diagnostics(info.losses, opt_state)
        diagnostics["num_groups"] = optax.tree_utils.tree_get(opt_state, "num_groups")
        diagnostics["learning_rate"] = learning_rate
        return params, opt_state, diagnostics

    def train_step(params, opt_state, rest, batch, step, seed):
        key = _dropout_key(seed, step)

        def loss_fn(p):
            return loss_vector(graphdef, p, rest, batch, train=True, dropout_key=key)

        losses, task_grads = camegrad_jax.task_gradients(loss_fn, params)
        updates, opt_state = tx.update(task_grads, opt_state, params, value=losses)
        params = optax.apply_updates(params, updates)
        diagnostics = step_diagnostics(losses, opt_state)
        diagnostics["learning_rate"] = schedule(step)
        return params, opt_state, diagnostics

    step_fn = stgu_step if isinstance(tx, camegrad_jax.STGU) else train_step
    return functools.partial(jax.jit(step_fn, donate_argnums=(0, 1)), seed=_seed_argument(seed))


def _fold_in_keys(state: Any, index: jax.Array) -> Any:
    """``state`` with every state field named ``key`` (a PRNG key) replaced by
    ``fold_in(key, index)``."""

    def fold(path: tuple[Any, ...], leaf: Any) -> Any:
        last = path[-1] if path else None
        is_key = isinstance(last, jax.tree_util.GetAttrKey) and last.name == "key"
        return jax.random.fold_in(leaf, index) if is_key else leaf

    return jax.tree_util.tree_map_with_path(fold, state)


def update_samples(
    setup: Setup,
    params: nnx.State,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    rest: nnx.State | None = None,
    multitask_state: MultiTaskState | Any = None,
    seed: int = 0,
    train: bool = True,
    shared_only: bool = False,
) -> np.ndarray:
    """The multi-task method's output (the update before AdamW) at fixed parameters, one
    flattened vector per minibatch: samples of the update noise (the paper's Appendix B.2
    measures the trace of its covariance).

    Every minibatch starts from the same ``multitask_state`` (nothing is carried from one to
    the next), so the samples are independent given the parameters. PRNG keys in that state (a
    field named ``key``, e.g. Setting B's noise or RLW's weight draws) are folded with the
    minibatch index, so a random method draws anew for each sample as it does at each step.

    Args:
      setup: the run's setup (model structure and multi-task method).
      params: the parameters to evaluate at.
      batches: minibatches, e.g. ``setup.dataset.iterate_batches("train", 32, shuffle=True)``.
      rest: the non-trainable state (``base_probs``); default ``setup.rest``.
      multitask_state: the method's state, e.g. ``find_multitask_state(opt_state)`` of a
        checkpoint (warm starts, learned weights); default a fresh ``init``.
      seed: dropout keys are ``fold_in(key(seed), i)`` for minibatch i.
      train: training mode (dropout and logit adjustment on), as in a training step.
      shared_only: keep only the shared (visual encoder) leaves.

    Returns:
      float32 ``(num_batches, P)``; P counts all parameters, or the shared ones.
    """
    if isinstance(setup.multitask, camegrad_jax.STGU):
        raise ValueError(
            f"{setup.config.optimizer!r} is a training step: it updates the parameters once per "
            "task group and has no single update to sample."
        )
    rest = setup.rest if rest is None else rest
    state = setup.multitask.init(params) if multitask_state is None else multitask_state
    keep = jax.tree.leaves(setup.shared_mask) if shared_only else None

    @jax.jit
    def one(params, state, batch, index, seed):
        key = _dropout_key(seed, index) if train else None
        state = _fold_in_keys(state, index)

        def loss_fn(p):
            return loss_vector(setup.graphdef, p, rest, batch, train=train, dropout_key=key)

        losses, task_grads = camegrad_jax.task_gradients(loss_fn, params)
        updates, _ = setup.multitask.update(task_grads, state, params, value=losses)
        leaves = jax.tree.leaves(updates)
        if keep is not None:
            leaves = [leaf for leaf, shared in zip(leaves, keep, strict=True) if shared]
        return jnp.concatenate([leaf.ravel() for leaf in leaves]).astype(jnp.float32)

    seed_array = _seed_argument(seed)
    samples = [
        one(params, state, batch, jnp.int32(i), seed_array) for i, batch in enumerate(batches)
    ]
    if not samples:
        raise ValueError("`batches` is empty.")
    return np.stack(jax.device_get(samples))
