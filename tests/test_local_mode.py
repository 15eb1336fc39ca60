"""Small jobs run in this process (issue 30): the same outputs as worker processes, and
nothing imported that the job does not use."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.setup.plan import InputPlan

HEAVY = ("pandas", "numpy", "dask", "distributed", "torch", "xgboost", "matplotlib", "sklearn", "pyarrow")


def loaded_modules(code: str, *args: str) -> set:
    """The top-level packages ``python -X importtime`` reports for ``code`` (or ``-m`` args)."""
    command = [sys.executable, "-X", "importtime", *(["-c", code] if code else args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {
        m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", done.stderr, re.M)
    }


def test_import_shardflow_and_help_load_no_heavy_library():
    assert not loaded_modules("import shardflow") & set(HEAVY)
    assert not loaded_modules("", "-m", "shardflow", "--help") & set(HEAVY)
    assert not loaded_modules("", "-m", "shardflow", "run", "--help") & set(HEAVY)
    # The check itself can fail: a module that does import them is seen.
    assert {"pandas", "dask"} <= loaded_modules("import shardflow.pipelines.setup.plan")


def prices(n: int = 3_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.normal(size=n)
    zone = rng.choice(["n", "s", "e"], n)
    price = 50 + 12 * a + 15 * np.sin(2 * b) + np.where(zone == "e", 20, 0) + rng.normal(scale=3, size=n)
    return pd.DataFrame({"id": np.arange(n), "a": a.round(4), "b": b.round(4), "zone": zone, "price": price.round(2)})


def job(directory, models, cluster: dict) -> str:
    spec = {
        "input": {"path": "prices.csv"},
        "target": {"column": "price", "task": "regression"},
        "features": {"numeric": ["a", "b"], "categorical": ["zone"]},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs"},
        "cluster": {"dashboard_address": "127.0.0.1:0", **cluster},
        "train": {
            "models": models,
            "xgboost": {"num_boost_round": 40},
            "mlp": {"hidden": [16], "epochs": 2},
            "partitions": {"mlp_epochs": 2},
        },
    }
    path = directory / f"job-{len(list(directory.glob('job-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_the_plan_runs_small_inputs_in_this_process_and_large_ones_in_worker_processes(tmp_path):
    prices(2_000).to_csv(tmp_path / "prices.csv", index=False)
    small = InputPlan(load_config(job(tmp_path, ["xgboost"], {"spec": "local"}))).execution()
    assert small.processes is False and "within cluster.in_process_max_bytes" in small.reason
    limited = load_config(job(tmp_path, ["xgboost"], {"spec": "local", "in_process_max_rows": 1_000}))
    assert InputPlan(limited).execution().processes is True
    assert InputPlan(load_config(job(tmp_path, ["xgboost"], {"n_workers": 2}))).execution().processes is True
    forced = load_config(job(tmp_path, ["xgboost"], {"processes": True}))
    assert InputPlan(forced).execution().reason == "cluster.processes: true"
    address = load_config(
        job(tmp_path, ["xgboost"], {}), ["cluster.spec=tcp://127.0.0.1:8786"], allow_remote_cluster=True
    )
    assert InputPlan(address).execution().processes is None  # an existing scheduler is never switched


RUN_AND_REPORT = """
import json, sys
from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.job import run
from shardflow.pipelines.serving.model import load_model
import pandas as pd
if __name__ == "__main__":
    result = run(load_config(sys.argv[1]), force=True)
    frame = pd.read_csv(sys.argv[2])
    predictions = {name: load_model(result.run_dir, name).predict(frame)["prediction"].tolist()
                   for name in result.metrics}
    print(json.dumps({"run_dir": str(result.run_dir), "metrics": result.metrics, "predictions": predictions,
                      "modules": sorted(m for m in ("torch", "matplotlib") if m in sys.modules)}))
"""


def run_job(config: str, data) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, config, str(data)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def features(run_dir) -> pd.DataFrame:
    frame = pd.read_parquet(f"{run_dir}/etl/features")
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("models", [["xgboost", "xgboost_partitions", "stacked", "mlp"], ["xgboost"]])
def test_in_process_outputs_equal_worker_processes(tmp_path, models):
    prices().to_csv(tmp_path / "prices.csv", index=False)
    shape = {"spec": "local", "threads_per_worker": 2, "n_workers": 1}
    threads = run_job(job(tmp_path, models, {**shape, "processes": False}), tmp_path / "prices.csv")
    processes = run_job(job(tmp_path, models, {**shape, "processes": True}), tmp_path / "prices.csv")
    manifest = json.loads((tmp_path / threads["run_dir"] / "manifest.json").read_text())
    assert manifest["cluster"]["processes"] is False
    assert json.loads((tmp_path / processes["run_dir"] / "manifest.json").read_text())["cluster"]["processes"]
    pd.testing.assert_frame_equal(features(threads["run_dir"]), features(processes["run_dir"]))
    assert threads["metrics"] == processes["metrics"] and set(threads["metrics"]) == set(models)
    assert threads["predictions"] == processes["predictions"]
    # In this process every library the job loads is the driver's: an XGBoost-only job never loads torch.
    assert ("torch" in threads["modules"]) == ("mlp" in models)
