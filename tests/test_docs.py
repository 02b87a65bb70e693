"""The documentation runs: README code blocks fenced ```python, and every docstring example."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import camegrad_jax

ROOT = Path(__file__).resolve().parent.parent
# Blocks fenced ```python are complete programs; ```py marks fragments that need a model.
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
CORE_MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(camegrad_jax.__path__, "camegrad_jax.")
    if not info.ispkg
)


def test_readme_has_runnable_blocks():
    assert README_BLOCKS


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(README_BLOCKS[index], f"README.md block {index}", "exec"), {})


@pytest.mark.parametrize("module_name", CORE_MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} doctest failures in {module_name}"
    # A module without examples would pass by running nothing.
    assert result.attempted > 0, f"{module_name} has no docstring example"
