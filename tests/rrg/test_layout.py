"""The application's layout rules (docs/reference-setup.md, "How the application is laid out"):
the core never imports it, its modules import each other at the top, and each does one job in
at most about 600 lines; and the tests mirror the code (docs/contributing.md, "Layout"): every
module has a test file of its own, but for the modules listed in `SHARED_TEST_FILES`."""

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
TESTS = Path(__file__).parents[1]
# Application modules tested in another module's test file rather than in one of their own:
# the synthetic generator's private parts through the generator (v1 and v2), the labeler's
# rules through the labeler, and the modules whose tests read the one tiny `compare` run of
# test_compare.py, the tiny trained model of test_model.py (decoding) or the two tiny training
# runs of test_train.py, expensive fixtures that are not duplicated.
SHARED_TEST_FILES = {
    "_synthetic_findings.py": "test_synthetic.py",
    "_synthetic_image.py": "test_synthetic.py",
    "_synthetic_report.py": "test_synthetic.py",
    "_synthetic_v2_findings.py": "test_synthetic_v2.py",
    "_synthetic_v2_image.py": "test_synthetic_v2.py",
    "_synthetic_v2_phrases.py": "test_synthetic_v2.py",
    "_synthetic_v2_report.py": "test_synthetic_v2.py",
    "_synthetic_v2_sentences.py": "test_synthetic_v2.py",
    "compare_figures.py": "test_compare.py",
    "compare_noise.py": "test_compare.py",
    "compare_tables.py": "test_compare.py",
    "labeler_rules.py": "test_labeler.py",
    "decoding.py": "test_model.py",
    "checkpoint.py": "test_train.py",
    "evaluation.py": "test_train.py",
    "restore.py": "test_train.py",
    "results.py": "test_train.py",
}


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


def _own_test_file(path: Path) -> str:
    return f"test_{path.stem.removeprefix('_')}.py"


@pytest.mark.parametrize(
    "path", [p for p in CORE_MODULES if p.name != "__init__.py"], ids=lambda path: path.name
)
def test_every_core_module_has_its_own_test_file(path):
    assert (TESTS / _own_test_file(path)).is_file()


@pytest.mark.parametrize(
    "path", [p for p in APPLICATION_MODULES if p.name != "__init__.py"], ids=lambda path: path.name
)
def test_every_application_module_has_its_test_file(path):
    own = TESTS / "rrg" / _own_test_file(path)
    if (TESTS / own.name).is_file():
        # The core has a module of that name: test files need unique names (pytest's default
        # import mode), so the application's test file takes an `rrg_` prefix.
        own = own.with_name(f"test_rrg_{own.name.removeprefix('test_')}")
    shared = SHARED_TEST_FILES.get(path.name)
    if shared is None:
        assert own.is_file(), f"add {own.relative_to(TESTS.parent)}"
    else:
        assert not own.is_file(), f"{path.name} has a test file of its own: drop its entry"
        assert (TESTS / "rrg" / shared).is_file()


def test_shared_test_files_name_existing_modules():
    assert set(SHARED_TEST_FILES) <= {path.name for path in APPLICATION_MODULES}
