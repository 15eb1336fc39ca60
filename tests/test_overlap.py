"""Families that share the cluster (issue 30, item 7): the plan says which overlap, they do
overlap, and every model equals the one trained with the families one after another."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from test_local_mode import features, job, prices

from shardflow.pipelines.families.registry import training_order
from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.setup.plan import InputPlan
from shardflow.pipelines.training.schedule import overlap_decision, overlap_line, training_units

MODELS = ["linear", "xgboost", "xgboost_partitions", "mlp_partitions", "stacked"]


def test_the_units_and_what_runs_alone():
    units = training_units(training_order(MODELS + ["mlp"]), None)
    assert [u.names for u in units] == [
        ("linear",),
        ("xgboost",),
        ("xgboost_partitions", "mlp_partitions"),
        ("stacked",),
        ("mlp",),
    ]
    assert [u.alone for u in units] == [False, True, False, False, True]
    assert units[3].needs == {"xgboost_partitions"}
    assert "xgboost" in training_units(training_order(["xgboost", "xgboost_groups"]), None)[1].needs
    assert overlap_decision("auto", processes=True, n_workers=1).overlap is False
    assert overlap_decision("false", processes=True, n_workers=8).overlap is False
    assert overlap_line(training_order(["xgboost", "mlp"]), overlap_decision("auto", True, 4)) == (
        "families one after another: no two families can share"
    )


def test_the_plan_says_whether_families_overlap(tmp_path):
    prices(2_000).to_csv(tmp_path / "prices.csv", index=False)
    plan = InputPlan(load_config(job(tmp_path, MODELS, {"spec": "local", "processes": True, "n_workers": 2})))
    runtime = plan.start_cluster()
    try:
        described = plan.describe(runtime)
    finally:
        runtime.close()
    assert (
        "families overlap: linear, xgboost_partitions, mlp_partitions, stacked share the cluster; xgboost alone"
        in described["training"]
    )
    plan = InputPlan(load_config(job(tmp_path, MODELS, {"spec": "local", "processes": False})))
    runtime = plan.start_cluster()
    try:
        assert "one after another: one worker of threads" in plan.describe(runtime)["training"]
    finally:
        runtime.close()


#: The families of the overlap test: three that share the cluster and one that runs alone
#: (the MLPs' torch start is left out: it would only lengthen both runs).
SHARING = ["linear", "xgboost", "xgboost_partitions", "stacked"]


@pytest.mark.slow
def test_overlapping_families_train_the_same_models_as_one_after_another(tmp_path, caplog):
    import pandas as pd

    from shardflow.pipelines.job import run
    from shardflow.pipelines.serving.model import load_model

    prices(4_000).to_csv(tmp_path / "prices.csv", index=False)
    shape = {"spec": "local", "processes": True, "n_workers": 2, "threads_per_worker": 1}
    overlapped_config = load_config(job(tmp_path, SHARING, shape))
    spec = yaml.safe_load(Path(job(tmp_path, SHARING, shape)).read_text())
    spec["train"]["overlap"] = "false"
    (tmp_path / "sequential.yaml").write_text(yaml.safe_dump(spec))
    sequential_config = load_config(tmp_path / "sequential.yaml")
    frame = pd.read_csv(tmp_path / "prices.csv")
    runtime = InputPlan(overlapped_config).start_cluster()  # two worker processes, for both runs
    caplog.set_level(logging.DEBUG, logger="shardflow.job")
    try:
        results, logs = {}, {}
        for name, config in (("overlapped", overlapped_config), ("sequential", sequential_config)):
            caplog.clear()
            result = run(config, runtime=runtime, force=True)
            logs[name] = caplog.text
            predictions = {
                m: load_model(result.run_dir, m).predict(frame)["prediction"].tolist() for m in result.metrics
            }
            results[name] = (result, predictions)
    finally:
        runtime.close()
    # They did overlap (and the sequential run did not): the shared families ran at once.
    assert "train: independent families share the 2 workers; collectives run alone" in logs["overlapped"]
    assert "training together: linear, xgboost_partitions" in logs["overlapped"]
    assert "training together" not in logs["sequential"]
    (overlapped, overlapped_predictions), (sequential, sequential_predictions) = results.values()
    assert features(overlapped.run_dir).equals(features(sequential.run_dir))
    assert set(overlapped.metrics) == set(SHARING)
    assert overlapped.metrics == sequential.metrics
    assert overlapped_predictions == sequential_predictions
