"""The training configuration (`camegrad_jax.rrg.config`): its JSON round trip and its checks
(named test_rrg_* beside the core's test_config.py: test files need unique names)."""

from __future__ import annotations

import json

import pytest

from camegrad_jax.rrg.config import TrainConfig


def test_config_round_trip_and_validation():
    config = TrainConfig(conv_features=[8, 16], method_options={"solver": "apg"})
    assert config.conv_features == (8, 16)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="Unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="`epochs` should be a positive int"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="dataset_name"):
        TrainConfig(dataset_name="chexpert")
    with pytest.raises(ValueError, match="`selection_metric = 'bleu'`"):
        TrainConfig(selection_metric="bleu")
    # Configs saved before the field existed were selected by the paper's CE F1.
    saved = {k: v for k, v in config.to_dict().items() if k != "selection_metric"}
    assert TrainConfig.from_dict(saved).selection_metric == "ce_example_f1"
    assert TrainConfig(cls_weight=2.0).task_weights == (1.0, 2.0)
