"""Every notebook runs top to bottom on a small dataset (real cluster, real kernel)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDFLOW_WORK", "work")  # relative, as a user's would be: to the kernel's folder
    monkeypatch.setenv("SHARDFLOW_WORKERS", "2")
    monkeypatch.setenv("SHARDFLOW_ROWS", "12000")  # every cell, quickly
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "validation AUC on the sample" in text
    assert re.search(r"most influential: \S+", text)  # the explanation plot read the run's contributions
    # What the notebook shows: the report it names exists, and its last listing shows that run.
    report = Path(re.search(r"report: (\S+)", text).group(1))
    assert report.name == "report.html" and (tmp_path / report).is_file()
    assert report.parent.parent.resolve() == (tmp_path / "work" / "runs").resolve()
    listing = [o for o in outputs if o.get("output_type") == "execute_result"][-1]["data"]["text/plain"]
    assert report.parent.name in listing
