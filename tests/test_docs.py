"""The documentation runs and holds together: the ```python blocks of the README and of the
docs pages, every docstring example, the README's length and every relative link."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest

import camegrad_jax

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
# Blocks fenced ```python are complete programs; ```py marks fragments that need a model.
PYTHON_BLOCKS = [
    (page, block)
    for page in PAGES
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
]
CORE_MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(camegrad_jax.__path__, "camegrad_jax.")
    if not info.ispkg
)


def test_readme_has_runnable_blocks():
    assert any(page == README for page, _ in PYTHON_BLOCKS)


@pytest.mark.parametrize(
    "page, block",
    PYTHON_BLOCKS,
    ids=[f"{page.name}-{i}" for i, (page, _) in enumerate(PYTHON_BLOCKS)],
)
def test_python_block_runs(page, block):
    exec(compile(block, f"{page.name} block", "exec"), {})


def _generate():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    return generate


def test_readme_is_a_front_page():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES, "move details to a page of docs/"
    # A Markdown table row cannot wrap: the generated method table is left out (its rows are as
    # long as the registry's titles and references make them).
    generate = _generate()
    start, end = text.index(generate.TABLE_START), text.index(generate.TABLE_END)
    prose = (text[:start] + text[end:]).splitlines()
    assert [line[:60] for line in prose if len(line) > 200] == []


def test_api_reference_is_generated_from_the_public_names():
    generate = _generate()
    assert generate.api_reference() == generate.API_REFERENCE.read_text(), (
        "run `python docs/generate.py`"
    )


def _heading_anchors(page: Path) -> set[str]:
    # GitHub's and MyST's slugs: lower case, punctuation dropped, spaces to hyphens.
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_point_to_existing_files(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _heading_anchors(linked):
            broken.append(target)
    assert broken == [], f"{page.name} links to missing files or headings: {broken}"


@pytest.mark.parametrize("module_name", CORE_MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} doctest failures in {module_name}"
    # A module without examples would pass by running nothing.
    assert result.attempted > 0, f"{module_name} has no docstring example"
