"""The experiment's set-up outside a run: gradient samples at fixed parameters (the other
functions of `camegrad_jax.rrg.experiment` run inside the tiny training runs of test_train.py)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.rrg_tiny import tiny_config

from camegrad_jax.rrg.experiment import build_setup, update_samples

# Two set-ups compile their update: reused across sessions, as in test_compare.py.
pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_update_samples_draw_fresh_noise_per_minibatch(tmp_path):
    """Setting B's noise (a PRNG key in its state) differs between samples of the same
    minibatch; a deterministic method's samples do not (no dropout: ``train=False``)."""
    batch = next(
        build_setup(tiny_config(tmp_path)).dataset.iterate_batches("train", 8, shuffle=False)
    )
    for name, same in (("linear", True), ("camegrad_setting_b", False)):
        setup = build_setup(tiny_config(tmp_path, optimizer=name))
        samples = update_samples(setup, setup.params, [batch, batch], train=False)
        assert np.array_equal(samples[0], samples[1]) == same, name
        assert np.all(np.isfinite(samples))
