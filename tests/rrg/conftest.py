"""Fixtures shared by the report-generation tests."""

from __future__ import annotations

import pytest
from helpers.rrg_tiny import compilation_cache_enabled


@pytest.fixture(scope="module")
def compilation_cache():
    """JAX's persistent compilation cache for a whole module (opt in with
    ``pytestmark = pytest.mark.usefixtures("compilation_cache")``): the tiny runs' train steps
    are then compiled once across modules and test sessions."""
    with compilation_cache_enabled():
        yield
