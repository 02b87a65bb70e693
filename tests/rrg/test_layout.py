"""The application's layout rules (docs/reference-setup.md, "How the application is laid out"):
the core never imports it, its modules import each other at the top, and each does one job in
at most about 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import camegrad_jax

PACKAGE = Path(camegrad_jax.__file__).parent
CORE_MODULES = sorted(PACKAGE.glob("*.py"))
APPLICATION_MODULES = sorted((PACKAGE / "rrg").glob("*.py"))
MAX_LINES = 600
# Third-party packages imported inside the one function that needs them: optional ones (the
# CheXbert labeler's torch and transformers are not dependencies of the project).
OPTIONAL_IMPORTS = {"torch", "transformers"}


def _imported_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module is not None:
        return [node.module]
    return []


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda path: path.name)
def test_the_core_never_imports_the_application(path):
    tree = ast.parse(path.read_text())
    imported = [name for node in ast.walk(tree) for name in _imported_modules(node)]
    assert not [name for name in imported if name.startswith("camegrad_jax.rrg")]


@pytest.mark.parametrize("path", APPLICATION_MODULES, ids=lambda path: path.name)
def test_application_modules_import_at_the_top_and_stay_short(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES, "split the module by job"
    tree = ast.parse(text)
    local = [
        name
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        for name in _imported_modules(node)
    ]
    assert [name for name in local if name.split(".")[0] not in OPTIONAL_IMPORTS] == []
