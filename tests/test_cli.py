"""The README's main command, run as a user would: `shardflow run` on the embedded default."""

from __future__ import annotations

import json
import subprocess
import sys


def test_run_generates_default_dataset_then_runs_the_pipeline(tmp_path):
    cmd = [sys.executable, "-m", "shardflow", "run", "--rows", "30000", "--work-dir", str(tmp_path),
           "--n-workers", "2", "--memory-limit", "1GB"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dashboard http://127.0.0.1:" in proc.stderr
    assert "generating 30000 rows" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    run_dir = tmp_path / "runs" / lines[-2].split("/")[-1]
    assert lines[-1] == f"report: {run_dir / 'report.html'}" and (run_dir / "report.html").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["etl"]["rows"] > 29_000
    assert manifest["cluster"]["workers"] == 2
    assert (run_dir / "etl" / "features.zarr").is_dir()
    assert (tmp_path / "data" / "trips-30000" / "trips.yaml").exists()

    # A second run finds the dataset and does not generate it again.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "generating" not in proc.stderr
