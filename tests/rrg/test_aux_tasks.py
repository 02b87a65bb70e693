"""Tests of the auxiliary-task variants (`camegrad_jax.rrg.aux_tasks`); the rigidity table has
test_rigidity.py.

The losses are checked against NumPy references written from the InfoNCE / WCL definitions;
the models by what each variant promises (which parameters each loss reaches, where the prompts
come from); the variants end to end by training and an exact resume through the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.rrg_tiny import TINY_DATA_FLAGS, TINY_FLAGS
from helpers.tiny_model import TINY, make_batch

from camegrad_jax.rrg.aux_tasks import (
    AlignedRRGModel,
    PromptedRRGModel,
    alignment_targets,
    build_model,
    contrastive_alignment_loss,
)
from camegrad_jax.rrg.cli import main
from camegrad_jax.rrg.config import TrainConfig
from camegrad_jax.rrg.model import loss_vector, shared_parameter_mask
from camegrad_jax.rrg.observations import NUM_OBSERVATIONS
from camegrad_jax.rrg.results import RESULTS_FILE, STEP_LOG_FILE

pytestmark = pytest.mark.usefixtures("compilation_cache")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def reference_info_nce(images, reports, labels, weak, temperature):
    """Symmetric InfoNCE in float64; weak positives share all 14 labels (WCL)."""
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    reports = reports / np.linalg.norm(reports, axis=1, keepdims=True)
    logits = images @ reports.T / temperature
    n = len(images)
    if weak:
        positive = np.array(
            [[np.array_equal(labels[i], labels[j]) for j in range(n)] for i in range(n)],
            dtype=np.float64,
        )
    else:
        positive = np.eye(n)
    targets = positive / positive.sum(axis=1, keepdims=True)
    forward = -(targets * _log_softmax(logits)).sum(axis=1).mean()
    backward = -(targets.T * _log_softmax(logits.T)).sum(axis=1).mean()
    return 0.5 * (forward + backward)


@pytest.mark.parametrize("weak", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_loss_matches_a_numpy_reference(weak, seed):
    rng = np.random.default_rng(seed)
    images, reports = rng.normal(size=(2, 6, 5))
    # Few label patterns, so that weak positives exist.
    labels = rng.integers(0, 2, size=(6, NUM_OBSERVATIONS)) * (rng.random((6, 1)) < 0.5)
    targets = alignment_targets(jnp.asarray(labels), weak=weak)
    loss, logits = contrastive_alignment_loss(
        jnp.asarray(images), jnp.asarray(reports), targets, temperature=0.2
    )
    expected = reference_info_nce(images, reports, labels, weak, 0.2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert logits.shape == (6, 6)


def test_alignment_targets():
    labels = jnp.array([[0] * 14, [1] * 14, [0] * 14, [2] * 14])
    np.testing.assert_array_equal(alignment_targets(labels, weak=False), np.eye(4))
    weak = np.asarray(alignment_targets(labels, weak=True))
    np.testing.assert_allclose(weak.sum(axis=1), 1.0)
    np.testing.assert_allclose(weak[0], [0.5, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(weak[1], [0.0, 1.0, 0.0, 0.0])


def test_alignment_loss_is_finite_and_invariant_to_embedding_scale():
    rng = np.random.default_rng(3)
    images, reports = rng.normal(size=(2, 4, 8))
    targets = jnp.eye(4)
    base, _ = contrastive_alignment_loss(jnp.asarray(images), jnp.asarray(reports), targets)
    for scale in (1e-10, 1e10):
        scaled, _ = contrastive_alignment_loss(
            jnp.asarray(images * scale), jnp.asarray(reports * scale), targets
        )
        np.testing.assert_allclose(float(scaled), float(base), rtol=1e-4)
    zero, _ = contrastive_alignment_loss(jnp.zeros((4, 8)), jnp.zeros((4, 8)), targets)
    np.testing.assert_allclose(float(zero), np.log(4.0), rtol=1e-6)  # All logits equal.


def _model(aux: str, **kwargs):
    return build_model(aux, TINY, rngs=nnx.Rngs(0), **kwargs)


# One new variant runs by default (weak alignment: the alignment code path and its label
# positives); the others only in the slow run, to keep the default suite's time (the prompted
# variant's masks are also checked by its own prompt test below).
@pytest.mark.parametrize(
    ("aux", "weak"),
    [
        pytest.param("classification", False, marks=pytest.mark.slow),
        pytest.param("classification-prompt", False, marks=pytest.mark.slow),
        pytest.param("alignment", False, marks=pytest.mark.slow),
        ("alignment", True),
    ],
)
def test_only_the_visual_encoder_feeds_both_losses(aux, weak):
    """Per leaf, which losses reach it: the shared mask must be exactly the leaves both reach
    (the loss vector is `[L_lm, L_aux]` in every variant)."""
    model = _model(aux, alignment_weak=weak)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = make_batch()
    # Jitted: op by op, the Jacobian of the whole model takes minutes on two cores.
    jacobian = jax.jit(jax.jacrev(lambda p: loss_vector(graphdef, p, rest, batch, train=False)))(
        params
    )
    reaches = [
        (jax.tree_util.keystr(path), np.abs(np.asarray(g)).reshape(2, -1).max(axis=1) > 0)
        for path, g in jax.tree_util.tree_leaves_with_path(jacobian)
    ]
    mask = jax.tree.leaves(shared_parameter_mask(model))
    assert len(mask) == len(reaches)
    for (path, by_loss), shared in zip(reaches, mask, strict=True):
        assert by_loss.any(), f"{aux}: no loss reaches {path}"
        assert bool(by_loss.all()) == bool(shared), (aux, path)


def test_prompted_model_prompts_with_gold_labels_in_training_and_predictions_at_inference():
    model = _model("classification-prompt")
    assert isinstance(model, PromptedRRGModel)
    batch = make_batch()
    features = model.visual_features(batch["images"])
    memory = model.encode(features)
    views, patches = batch["images"].shape[1], TINY.patches_per_view
    assert memory.shape == (3, views * patches + NUM_OBSERVATIONS, TINY.d_model)
    predicted = jnp.argmax(model.classification_logits(features), axis=-1)
    np.testing.assert_array_equal(memory, model.encode(features, answers=predicted))

    other = {**batch, "labels": (batch["labels"] + 1) % 4}
    train_lm = [model.task_losses(b, train=True, dropout_key=None)[0][0] for b in (batch, other)]
    assert abs(float(train_lm[0] - train_lm[1])) > 1e-6  # Training reads the gold labels...
    eval_lm = [model.task_losses(b, train=False, dropout_key=None)[0][0] for b in (batch, other)]
    assert float(eval_lm[0]) == float(eval_lm[1])  # ...evaluation only the predicted ones.


def test_aligned_model_has_no_label_head_and_weak_changes_only_the_targets():
    strict, weak = _model("alignment"), _model("alignment", alignment_weak=True)
    assert isinstance(strict, AlignedRRGModel) and not hasattr(strict, "classifier")
    batch = make_batch()
    batch["labels"] = jnp.zeros_like(batch["labels"])  # Every study a positive of every other.
    strict_losses, aux = strict.task_losses(batch, train=False, dropout_key=None)
    weak_losses, _ = weak.task_losses(batch, train=False, dropout_key=None)
    assert float(strict_losses[0]) == float(weak_losses[0])
    assert aux["alignment_logits"].shape == (3, 3)
    # All targets uniform: the weak loss is the cross-entropy to the uniform distribution.
    logits = np.asarray(aux["alignment_logits"], np.float64)
    uniform = 0.5 * (-_log_softmax(logits).mean() - _log_softmax(logits.T).mean())
    np.testing.assert_allclose(float(weak_losses[1]), uniform, rtol=1e-5)


def test_config_checks_the_auxiliary_task():
    with pytest.raises(ValueError, match="`aux` should be one of"):
        TrainConfig(aux="prototype")
    with pytest.raises(ValueError, match="`alignment_weak` needs `aux = 'alignment'`"):
        TrainConfig(alignment_weak=True)
    stored = TrainConfig().to_dict()
    del stored["aux"], stored["alignment_weak"]  # A config stored before the variants.
    assert TrainConfig.from_dict(stored).aux == "classification"


def _cli_train_and_resume(tmp_path: Path, flags: list[str]) -> dict:
    """Train straight through, and in two sittings; the runs must agree exactly."""
    common = ["train", *TINY_FLAGS, *TINY_DATA_FLAGS, "--optimizer", "camegrad", *flags]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*common, "--save-dir", str(straight)]) == 0
    assert main([*common, "--save-dir", str(split), "--stop-after-epoch", "1"]) == 0
    assert main(["train", "--resume", "--save-dir", str(split), "--no-progress"]) == 0
    a, b = (json.loads((d / RESULTS_FILE).read_text()) for d in (straight, split))
    assert a["status"] == b["status"] == "complete"
    assert a["test"] == b["test"] and a["selection"] == b["selection"]
    logs = [np.load(d / STEP_LOG_FILE) for d in (straight, split)]
    for field in logs[0].files:
        np.testing.assert_array_equal(logs[0][field], logs[1][field], err_msg=field)
    assert np.isfinite(logs[0]["loss_cls"]).all()
    return a


# Three trainings each (straight, stopped, resumed): slow on two CPU cores, so in the slow run.
@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--aux", "classification-prompt"],
        ["--aux", "alignment"],
        ["--aux", "alignment", "--alignment-weak"],
    ],
    ids=["classification-prompt", "alignment", "alignment-weak"],
)
def test_variant_trains_and_resumes_exactly_through_the_cli(tmp_path, flags):
    results = _cli_train_and_resume(tmp_path, flags)
    assert results["config"]["aux"] == flags[1]
    assert results["config"]["alignment_weak"] == ("--alignment-weak" in flags)
    if flags[1] == "alignment":
        assert 0.0 <= results["test"]["aux_retrieval_r1"] <= results["test"]["aux_retrieval_r5"]
        assert "aux_auc_macro" not in results["test"]
    else:
        assert 0.0 <= results["test"]["aux_auc_macro"] <= 1.0
