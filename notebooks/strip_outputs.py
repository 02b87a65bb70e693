"""Strips outputs from notebooks before they are committed, or checks that they are stripped.

Committed notebooks carry no outputs and no execution counts: diffs stay readable and the
repository stays small; the test suite executes them (tests/test_notebooks.py).

    python notebooks/strip_outputs.py [NOTEBOOK ...]          # strip in place (default: all here)
    python notebooks/strip_outputs.py --check [NOTEBOOK ...]  # exit 1 if any has outputs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
# Cell metadata that records a run rather than the notebook's content.
RUN_METADATA = ("execution", "collapsed", "scrolled")


def has_outputs(notebook: nbformat.NotebookNode) -> bool:
    """Whether any code cell has outputs, an execution count or run metadata."""
    return any(
        cell.get("outputs")
        or cell.get("execution_count") is not None
        or any(key in cell.metadata for key in RUN_METADATA)
        for cell in notebook.cells
        if cell.cell_type == "code"
    )


def strip(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Removes outputs, execution counts and run metadata from every code cell, in place."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            for key in RUN_METADATA:
                cell.metadata.pop(key, None)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="report, do not modify")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(HERE.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if not has_outputs(notebook):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(strip(notebook), path)
    for path in dirty:
        print(f"{'has outputs' if args.check else 'stripped'}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
