"""Every notebook in notebooks/ runs top to bottom at small settings, and is committed stripped.

Notebooks read `CAMEGRAD_NOTEBOOK_SMALL=1` in their first ("parameters") cell to run with few
steps. New notebooks are picked up automatically; one that needs more than the default cell
timeout gets an entry in `CELL_TIMEOUT_S`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
DEFAULT_CELL_TIMEOUT_S = 600
CELL_TIMEOUT_S: dict[str, int] = {}  # notebook file name -> nbclient's per-cell timeout
# Notebooks whose small run only repeats what a default test already covers, run under -m slow:
# 02 is `run_comparison` on a tiny model (about 100 s), as tests/rrg/test_compare.py's fixture is.
SLOW_NOTEBOOKS = {"02_rrg_reference.ipynb"}


def load_strip_outputs():
    spec = importlib.util.spec_from_file_location(
        "notebooks_strip_outputs", NOTEBOOKS_DIR / "strip_outputs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def this_interpreter_kernel(tmp_path, monkeypatch):
    """A `python3` kernel spec that runs this interpreter, ahead of any installed one."""
    write_kernel_spec(tmp_path / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before user and system paths
    return "python3"


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"


def test_kernel_runs_this_interpreter(this_interpreter_kernel):
    spec = KernelSpecManager().get_kernel_spec(this_interpreter_kernel)
    assert spec.argv[0] == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stripped(path):
    notebook = nbformat.read(path, as_version=4)
    assert not load_strip_outputs().has_outputs(notebook), (
        f"{path.name} has outputs: run `python notebooks/strip_outputs.py` before committing"
    )


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, marks=pytest.mark.slow) if path.name in SLOW_NOTEBOOKS else path
        for path in NOTEBOOKS
    ],
    ids=lambda path: path.name,
)
def test_notebook_runs(path, this_interpreter_kernel, monkeypatch):
    monkeypatch.setenv("CAMEGRAD_NOTEBOOK_SMALL", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=this_interpreter_kernel,
        timeout=CELL_TIMEOUT_S.get(path.name, DEFAULT_CELL_TIMEOUT_S),
        resources={"metadata": {"path": str(NOTEBOOKS_DIR)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors


def test_strip_outputs_removes_outputs_and_counts():
    strip_outputs = load_strip_outputs()
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3, metadata={"tags": ["keep"]})
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"})]
    cell.metadata["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
    notebook = nbformat.v4.new_notebook(cells=[cell])
    assert strip_outputs.has_outputs(notebook)
    strip_outputs.strip(notebook)
    assert not strip_outputs.has_outputs(notebook)
    assert notebook.cells[0].metadata == {"tags": ["keep"]}
