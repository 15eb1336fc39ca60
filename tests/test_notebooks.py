"""Every notebook runs top to bottom on a small dataset (real cluster, real kernel)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # whole jobs on clusters: scheduled first (tests/conftest.py)

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
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    shown = {}  # what each cell displayed (its display_data and execute_result), by MIME type
    for i, cell in enumerate(notebook.cells):
        shown[i] = {}
        for output in cell.get("outputs", []):
            for kind, value in output.get("data", {}).items():
                shown[i][kind] = shown[i].get(kind, "") + "".join(value)
    cell_of = {marker: i for i, cell in enumerate(notebook.cells) for marker in (cell.source.splitlines() or [""])[:1]}
    # The plan, before anything ran: partitions, where it runs, how it trains.
    plan = shown[cell_of["shardflow.plan(config, runtime=runtime)"]]
    assert "partitions" in plan["text/plain"] and "execution" in plan["text/plain"] and "<pre>" in plan["text/html"]
    # The run: progress drawn without configuring logging, the comparison as a table, best marked.
    run_cell = notebook.cells[cell_of["result = shardflow.run(config, runtime=runtime)"]]
    # Progress is an output that updates in place (one per stage, at its final state), not stderr lines.
    progress = "\n".join(
        "".join(o["data"]["text/plain"])
        for o in run_cell.outputs
        if o.get("output_type") == "display_data" and "transient" not in o and "text/html" not in o["data"]
    )
    assert re.search(r"etl pass \d/\d \(\w+\): (\d+)/\1 tasks", progress), progress[-2000:]
    assert re.search(r"xgboost: (\d+)/\d+ rounds", progress), progress[-2000:]
    assert "tasks" not in "".join(o.get("text", "") for o in run_cell.outputs if o.get("name") == "stderr")
    comparison = shown[cell_of["result = shardflow.run(config, runtime=runtime)"]]["text/html"]
    assert comparison.count("★") == 1 and "<table>" in comparison and "linear baseline" in comparison
    # The report's figures inline.
    figures = shown[cell_of['print("report:", result.run_dir / "report.html")']]["text/html"]
    assert 'id="quality"' in figures and 'id="curves"' in figures and "<img" in figures
    assert re.search(r"most influential: \S+", text)  # the explanation plot read the run's contributions
    # Decoded features: category labels and units, not codes.
    decoded = shown[cell_of["features = shardflow.read_features(result.run_dir, decoded=True)"]]["text/plain"]
    assert re.search(r"\b(card|cash|voucher|no_charge)\b", decoded) and re.search(r"\b(True|False)\b", decoded)
    assert "delay rate by borough: {" in text
    # Scoring: the model, the Estimator and the ONNX export agree with shardflow's own scores.
    assert "<th>model</th>" in shown[cell_of["model = shardflow.load_model(result.run_dir)"]]["text/html"]
    assert re.search(r"estimator accuracy on the first 500 rows: 0\.\d+", text)
    agreement = re.search(r"ONNX Runtime vs shardflow on (\d+) rows, largest difference: (\S+)", text)
    assert int(agreement[1]) > 400 and float(agreement[2]) < 1e-4
    assert "('pickup_zone', 'string')" in text and "borough" not in text.split("ONNX Runtime vs")[0].rsplit("[(", 1)[1]
    # What the notebook shows: the report it names exists, and its last listing shows that run.
    report = Path(re.search(r"report: (\S+)", text).group(1))
    assert report.name == "report.html" and (tmp_path / report).is_file()
    assert report.parent.parent.resolve() == (tmp_path / "work" / "runs").resolve()
    listing = shown[cell_of['shardflow.list_runs(work / "runs")[:3]']]["text/plain"]
    assert report.parent.name in listing
