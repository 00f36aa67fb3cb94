"""The notebooks run top to bottom against the session's tiny pipeline run, and
are committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("BTMRI_PIPELINE_ROOT", str(tiny_run / "pipeline"))
    monkeypatch.setenv("BTMRI_DATA_ROOT", str(tiny_run / "data" / "prepared" / "current"))
    monkeypatch.setenv("BTMRI_SERVING_DIR", str(tiny_run / "serving"))
    book = nbformat.read(path, as_version=4)
    # The kernel: ipykernel's python3, which jupyter_client runs with this interpreter (the venv).
    client = NotebookClient(
        book, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    errors = [
        o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"
    ]
    assert not errors
    shown = [
        kind
        for cell in book.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        for kind in o.get("data", {})
        if kind in ("image/png", "text/html")
    ]
    assert shown, "the notebook showed no figure or table"


def test_the_notebooks_find_the_work_folder_from_their_own_folder(tmp_path, monkeypatch):
    """A kernel starts in notebooks/, where there is no runs/: the repository root's."""
    from btmri.layout import DEFAULT_WORK_DIR, notebook_layout

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.delenv("BTMRI_WORK_DIR", raising=False)
    monkeypatch.chdir(repo / "notebooks")
    assert Path(notebook_layout().work_dir) == repo / DEFAULT_WORK_DIR
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_WORK_DIR).mkdir()
    assert notebook_layout().work_dir == DEFAULT_WORK_DIR  # one here wins
    monkeypatch.setenv("BTMRI_WORK_DIR", str(tmp_path / "elsewhere"))
    assert notebook_layout().pipeline_root == str(tmp_path / "elsewhere" / "pipeline")
