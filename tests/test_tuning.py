"""Tuning (``shardflow tune``): the study, its resumption, and the final model trained with its best.

A small regression table whose target is a three-way interaction: trees of depth 1 (the
untuned parameters here) cannot fit it, deeper ones can, so the study has something to find.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import zarr

from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.records.stages import stage_keys
from shardflow.pipelines.records.trained_models import load_model
from shardflow.pipelines.setup.config import ConfigError, load_config
from shardflow.pipelines.tuning.files import tune_file
from shardflow.pipelines.tuning.search import tune
from shardflow.tasks.models import xgboost_predict

TRIALS = 6


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """4,000 rows in two Parquet files; ``y`` = a three-way product plus a sine, and noise."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (4000, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["y"] = 3 * x[:, 0] * x[:, 1] * x[:, 2] + np.sin(3 * x[:, 3]) + 0.1 * rng.normal(size=len(x))
    data = tmp_path_factory.mktemp("tuning") / "table"
    data.mkdir()
    frame.iloc[:2000].to_parquet(data / "part-0.parquet")
    frame.iloc[2000:].to_parquet(data / "part-1.parquet")
    return data


def job(table, runs_dir, *overrides):
    config_path = table.parent / "job.yaml"
    config_path.write_text(
        f"input: {{path: {table}}}\n"
        "target: {column: y, task: regression}\n"
        "features: {numeric: [a, b, c, d]}\n"
        "train:\n"
        "  models: [xgboost]\n"
        "  checkpoint_seconds: 0\n"
        "  xgboost: {num_boost_round: 60, early_stopping_rounds: 10, params: {max_depth: 1}}\n"
        "  tune:\n"
        "    startup_trials: 3\n"
        "    warmup_rounds: 5\n"
        "    space: {max_depth: {low: 1, high: 6}, eta: {low: 0.1, high: 0.5}, min_child_weight: null,\n"
        "            subsample: null, colsample_bytree: null, lambda: null, alpha: null}\n"
        f"output: {{runs_dir: {runs_dir}}}\n"
    )
    return load_config(config_path, list(overrides))


@pytest.fixture(scope="module")
def tuned(table, runtime, tmp_path_factory):
    config = job(table, tmp_path_factory.mktemp("runs"))
    return config, tune(config, runtime, trials=TRIALS)


def zarr_split(run_dir, split):
    group = zarr.open_group(str(RunDir(run_dir).zarr), mode="r")
    valid = group["is_validation"][:]
    mask = valid if split == "valid" else ~valid
    return group["X"][:][mask], group["y"][:][mask]


def test_the_study_improves_on_the_defaults_where_depth_matters(tuned):
    config, result = tuned
    assert list(result.studies) == ["xgboost"]  # train.models lists no MLP
    study = result.studies["xgboost"]
    assert study.mode == "concurrent" and study.trials == TRIALS and study.metric == "rmse"
    assert study.best_value <= study.default_value  # the defaults are the first trial
    assert study.best_params["max_depth"] > 1 and study.best_value < study.default_value
    record = json.loads(tune_file(result.run_dir, "result").read_text())["studies"]["xgboost"]
    assert record["default"]["trial"] == 0
    assert len(record["history"]) == TRIALS and record["finished"] == TRIALS
    assert record["space"] == {"max_depth": "1 to 6, whole numbers", "eta": "0.1 to 0.5, log scale"}
    assert record["default"]["params"] == {"max_depth": 1, "eta": 0.1}
    assert record["importances"] and set(record["importances"]) <= set(record["space"])
    best_so_far = [row["best_so_far"] for row in record["history"] if row["best_so_far"] is not None]
    assert best_so_far == sorted(best_so_far, reverse=True) and best_so_far[-1] == study.best_value
    page = RunDir(result.run_dir).report.read_text()
    assert 'id="tuning"' in page and f"{study.best_value:.5g}" in page and "trained with the best trial" in page


def test_the_final_model_is_trained_with_the_best_parameters(tuned):
    config, result = tuned
    run_dir, study = result.run_dir, result.studies["xgboost"]
    recorded = load_config(RunDir(run_dir).config)
    for name, value in study.best_params.items():
        assert recorded.train.xgboost.params[name] == pytest.approx(value)
    # The tuned parameters count in the train stage's key: the run's training is current for them.
    manifest = RunDir(run_dir).read_manifest()
    assert manifest.key_of(RunDir.TRAIN) == stage_keys(recorded)[RunDir.TRAIN]
    assert manifest.key_of(RunDir.TRAIN) != stage_keys(config)[RunDir.TRAIN]
    meta = json.loads(RunDir(run_dir).trained("xgboost.json").read_text())
    for name, value in study.best_params.items():
        assert meta["params"][name] == pytest.approx(value)
    x_train, y_train = zarr_split(run_dir, "train")
    x_valid, y_valid = zarr_split(run_dir, "valid")
    dtrain = xgb.QuantileDMatrix(x_train, y_train, feature_names=list("abcd"))
    dvalid = xgb.DMatrix(x_valid, y_valid, feature_names=list("abcd"))
    reference = xgb.train(
        {**meta["params"], "nthread": 2},
        dtrain,
        num_boost_round=60,
        evals=[(dvalid, "validation")],
        early_stopping_rounds=10,
        verbose_eval=False,
    )
    expected = reference.predict(dvalid, iteration_range=(0, reference.best_iteration + 1))
    ours = xgboost_predict(load_model(run_dir, "xgboost")["model"], x_valid)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    # ... and it scores what its trial scored on the same validation rows.
    assert result.run.metrics["xgboost"]["rmse"] == pytest.approx(study.best_value, rel=1e-3)


def test_a_finished_study_is_reused_and_nothing_is_recomputed(tuned, runtime):
    config, result = tuned
    again = tune(config, runtime, trials=TRIALS)
    assert again.run_dir == result.run_dir and again.studies["xgboost"] == result.studies["xgboost"]
    assert set(again.run.skipped) == {RunDir.ETL, RunDir.TRAIN, RunDir.EVALUATE}


def test_an_interrupted_tuning_resumes_and_ends_with_all_its_trials(table, runtime, tmp_path):
    import optuna
    from optuna.trial import TrialState

    config = job(table, tmp_path / "runs")
    seen = []

    def stop_after_three(study, trial):
        seen.append((trial.number, trial.params))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(config, runtime, trials=TRIALS, on_trial=stop_after_three)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]
    assert not RunDir(run_dir).read_manifest().has(RunDir.TRAIN)  # stopped in the study, before training
    result = tune(config, runtime, resume=run_dir, trials=TRIALS)
    assert result.run_dir == run_dir and result.studies["xgboost"].trials == TRIALS
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tune_file(run_dir, "study")))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS
    # The trials finished before the interruption are kept as they were; one that was running
    # is failed, and its parameters were tried again.
    # (Trials run at once, one per worker: they finish, and are seen, in any order.)
    numbers = dict(seen)
    assert sorted(seen) == sorted((t.number, t.params) for t in finished if t.number in numbers)
    for failed in (t for t in trials if t.state == TrialState.FAIL):
        assert any(t.params == failed.params for t in finished if t.number > failed.number)
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_trials_run_one_at_a_time_across_the_workers_when_told(table, runtime, tmp_path):
    """Each trial an allreduce over both workers (2 ranks); the pruner decides alike on every rank
    (a rank that stopped alone would leave the other waiting in the collective)."""
    config = job(
        table,
        tmp_path / "runs",
        "train.tune.concurrent=false",
        "train.xgboost.single_worker=false",
        "train.xgboost.num_boost_round=20",
        "train.tune.warmup_rounds=2",
    )
    result = tune(config, runtime, trials=8)
    assert result.studies["xgboost"].mode == "distributed" and result.studies["xgboost"].trials == 8
    record = json.loads(tune_file(result.run_dir, "result").read_text())["studies"]["xgboost"]
    assert {row["worker"] for row in record["history"]} == {"all"}
    assert {row["state"] for row in record["history"]} <= {"COMPLETE", "PRUNED"}
    assert all(row["rounds"] > 2 for row in record["history"] if row["state"] == "PRUNED")  # after the warmup
    assert not tune_file(result.run_dir, "scratch").exists() or not any(tune_file(result.run_dir, "scratch").iterdir())


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.tune.trails=3",
            "config key 'train.tune.trails' is not a known option (did you mean 'train.tune.trials'?)",
        ),
        ("train.tune.trials=0", "config key 'train.tune.trials': must be between 1 and 100,000, got 0"),
        ("train.tune.pruner=fast", "config key 'train.tune.pruner': 'fast' is not one of median, halving, none"),
        (
            "train.tune.space.max_depth.hgih=3",
            "config key 'train.tune.space.max_depth.hgih' is not a known option (did you mean "
            "'train.tune.space.max_depth.high'?)",
        ),
        ("train.tune.space.max_depth.low=20", "config key 'train.tune.space.max_depth': low (20) is above high (12)"),
        ("train.tune.space.gamma.low=1", "config key 'train.tune.space.gamma': gamma has no default range"),
        ("train.tune.space.eta.low=0", "config key 'train.tune.space.eta': a log-scale range must be above 0"),
        ("train.tune.space.objective.low=1", "config key 'train.tune.space.objective': objective is not searched"),
        ("train.tune.mlp_space.lr.low=0.5", "config key 'train.tune.mlp_space.lr': low (0.5) is above high (0.03)"),
        (
            "train.tune.mlp_space.colour.low=1",
            "config key 'train.tune.mlp_space.colour': colour is not a parameter that can be searched; use one of lr,",
        ),
        ("train.tune.mlp_space.epochs.low=1", "config key 'train.tune.mlp_space.epochs': epochs is not searched"),
        (
            "train.tune.mlp_space.optimizer.choices=[adam, rmsprop]",
            "config key 'train.tune.mlp_space.optimizer': 'rmsprop' is not one of adam, sgd",
        ),
        (
            "train.tune.mlp_space.dropout.high=1",
            "config key 'train.tune.mlp_space.dropout': must be between 0 and 1 (excluding 1), got 1",
        ),
        ("train.tune.families=[linear]", "config key 'train.tune.families': 'linear' is not one of xgboost, mlp"),
    ],
)
def test_a_bad_tune_key_is_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)


def test_tuning_needs_the_global_xgboost_in_the_models(table, tmp_path):
    config = job(table, tmp_path / "runs", "train.models=[linear]")
    with pytest.raises(ConfigError, match=r"config key 'train.models': tuning searches the parameters of"):
        tune(config, trials=2)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_searched_family_must_be_trained(table, tmp_path):
    config = job(table, tmp_path / "runs", "train.tune.families=[mlp]")
    with pytest.raises(ConfigError, match=r"config key 'train.tune.families': 'mlp' is not trained"):
        tune(config, trials=2)


def mlp_job(table, runs_dir, *overrides):
    """The table's job training the MLP too, whose untuned learning rate is far too low for its
    200 steps: the MLP's study has something to find."""
    return job(
        table,
        runs_dir,
        "train.models=[xgboost, mlp]",
        "train.mlp.lr=0.0001",
        "train.mlp.max_steps=200",
        "train.mlp.batch_size=256",
        "train.tune.mlp_space={lr: {low: 0.0001, high: 0.03}, weight_decay: null, dropout: null, batch_size: null, "
        "embedding_dim: null}",
        *overrides,
    )


def test_the_mlp_is_tuned_beside_the_xgboost_and_trains_with_its_best(table, runtime, tmp_path):
    config = mlp_job(table, tmp_path / "runs")
    result = tune(config, runtime, trials=4)
    assert list(result.studies) == ["xgboost", "mlp"]
    study = result.studies["mlp"]
    assert study.mode == "concurrent" and study.trials == 4 and study.metric == "loss"
    assert study.best_value < study.default_value and study.best_params["lr"] > 0.0001
    records = json.loads(tune_file(result.run_dir, "result").read_text())["studies"]
    record = records["mlp"]
    assert record["default"]["trial"] == 0 and record["step"] == "evaluation"
    assert record["default"]["params"] == {"lr": 0.0001, "width": 128, "layers": 2}
    assert set(record["space"]) == {"lr", "width", "layers"}
    # Every trial ranked by its best validation loss over its evaluations.
    for row in record["history"]:
        assert row["state"] in ("COMPLETE", "PRUNED") and row["worker"] in {
            str(w) for w in runtime.client.scheduler_info()["workers"]
        }
    # The run's MLPs train with the best point: train.mlp in config.yaml, the network's layers.
    recorded = load_config(RunDir(result.run_dir).config)
    best = study.best_params
    assert recorded.train.mlp.lr == pytest.approx(best["lr"])
    expected_hidden = [max(8, best["width"] >> i) for i in range(best["layers"])]
    if (best["width"], best["layers"]) == (128, 2):
        expected_hidden = [128, 64]
    assert recorded.train.mlp.hidden == expected_hidden
    meta = json.loads(RunDir(result.run_dir).trained("mlp.json").read_text())
    assert meta["spec"]["hidden"] == expected_hidden
    assert recorded.train.xgboost.params["max_depth"] == result.studies["xgboost"].best_params["max_depth"]
    page = RunDir(result.run_dir).report.read_text()
    assert page.count("trained with the best trial") == 2 and "data-parallel MLP</h3>" in page


def test_mlp_trials_run_one_at_a_time_across_the_workers_when_told(table, runtime, tmp_path):
    """Each MLP trial the data-parallel MLP over both workers (gloo); a pruned trial stops every rank."""
    config = mlp_job(
        table,
        tmp_path / "runs",
        "train.models=[mlp]",
        "train.tune.concurrent=false",
        "train.mlp.max_steps=120",
        "train.tune.warmup_evaluations=1",
    )
    result = tune(config, runtime, trials=4)
    study = result.studies["mlp"]
    assert list(result.studies) == ["mlp"] and study.mode == "distributed" and study.trials == 4
    assert study.best_value <= study.default_value
    record = json.loads(tune_file(result.run_dir, "result").read_text())["studies"]["mlp"]
    assert {row["worker"] for row in record["history"]} == {"all"}
    assert all(row["rounds"] > 1 for row in record["history"] if row["state"] == "PRUNED")  # after the warmup
    assert load_config(RunDir(result.run_dir).config).train.mlp.lr == pytest.approx(study.best_params["lr"])


def test_the_tune_command_says_what_it_tuned(table, tmp_path):
    import subprocess
    import sys

    runs = tmp_path / "runs"
    job(table, runs)
    shutil.copy(table.parent / "job.yaml", tmp_path / "job.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "shardflow", "-q", "tune", "-c", "job.yaml", "--trials", "2", "--n-workers", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    tuned_line = next(line for line in lines if line.startswith("tuned:"))
    assert "xgboost validation rmse" in tuned_line and "best of 2 trials, the defaults'" in tuned_line
    assert any(line.startswith("report: ") for line in lines)


def test_each_trial_is_an_mlflow_child_run_of_the_run(table, runtime, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the tracking tests need MLflow: pip install -e '.[test]'")
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = job(
        table,
        tmp_path / "runs",
        f"tracking.mlflow.tracking_uri={uri}",
        "tracking.mlflow.experiment=tuning",
        "train.xgboost.num_boost_round=20",
    )
    result = tune(config, runtime, trials=3)
    again = tune(config, runtime, trials=3)  # nothing new: no trial is logged twice
    assert again.run_dir == result.run_dir
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tuning").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("shardflow.run_id") == result.run_dir.name]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(c.data.tags["shardflow.trial"]) for c in children) == [0, 1, 2]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["tune.xgboost.best.rmse"] == pytest.approx(result.studies["xgboost"].best_value)
    best = next(c for c in children if c.data.tags["shardflow.trial"] == "0")
    assert best.data.params["max_depth"] == "1" and "validation.rmse" in best.data.metrics
