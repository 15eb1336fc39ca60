"""ONNX export: every family and target kind round-trips, checked against shardflow's own
predictions (``shardflow predict`` on the cluster) on the same input file, and the model
runs with ONNX Runtime alone in a process that cannot import shardflow."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.families.specs import family_names
from shardflow.pipelines.job import run
from shardflow.pipelines.serving.export import ExportError, export
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import load_config
from shardflow.tasks.exported import load_exported

FAST = {
    "models": list(family_names()),
    "xgboost": {"num_boost_round": 30},
    "partitions": {"xgboost_rounds": 20, "mlp_epochs": 2},
    # One model per city; 'west' is made too small below, so it falls back to the global model.
    "groups": {"partition_by": ["city"], "min_rows": 200, "xgboost_rounds": 20},
    "mlp": {"epochs": 3, "batch_size": 256, "sync_every": 8},
}


def table(task: str, n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["north", "south", "east", "west"], n)
    when = pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 365 * 24 * 60, n), unit="min")
    score = x1 - 0.7 * x2 + 0.8 * (city == "north") + 0.3 * (when.hour > 12) + rng.normal(scale=0.4, size=n)
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "city": city,
            "when": when.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    if task == "binary":
        frame["y"] = np.where(score > 0.3, "yes", "no")
    elif task == "multiclass":
        frame["y"] = np.select([score < -0.7, score < 0.4], ["low", "mid"], "high")
    else:
        frame["y"] = np.exp(6 + 0.5 * score).round(2)
    return frame


@pytest.fixture(scope="module", params=["binary", "regression", "multiclass"])
def trained_run(request, runtime, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"export-{request.param}")
    frame = table(request.param)
    frame = frame[(frame.city != "west") | (frame.index % 5 == 0)].reset_index(drop=True)
    (directory / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 2)):
        frame.iloc[rows].to_csv(directory / "in" / f"part{i}.csv", index=False)
    target = (
        {"column": "y", "task": "regression", "transform": "log1p"}
        if request.param == "regression"
        else {"column": "y"}
    )
    job = {
        "input": {"path": "in/*.csv"},
        "target": target,
        "features": {
            "numeric": ["x1", "x2"],
            "categorical": ["city"],
            "datetime": ["when"],
            "datetime_parts": ["hour", "dayofweek"],
            "derived": {"ratio": "x1 / (abs(x2) + 1)"},
        },
        "split": {"key": ["id"]},
        "encode": {"min_frequency": 1},
        "output": {"runs_dir": "runs"},
        "train": FAST,
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(job))
    result = run(load_config(directory / "job.yaml"), runtime=runtime)
    return request.param, directory, result.run_dir


def new_rows(n: int = 400) -> pd.DataFrame:
    """Rows to score, with an unseen and a missing category and missing numbers."""
    frame = table("binary", n, seed=11).drop(columns=["y"])
    frame.loc[0:9, "city"] = "atlantis"  # unseen
    frame.loc[10:19, "city"] = None  # missing
    frame.loc[20:29, "x1"] = np.nan
    frame.loc[25:34, "x2"] = np.nan
    return frame


def test_every_family_round_trips_against_shardflow_predict(trained_run, runtime, tmp_path):
    task, directory, run_dir = trained_run
    frame = new_rows()
    frame.to_csv(tmp_path / "new.csv", index=False)
    for model in family_names():
        exported = export(run_dir, tmp_path / f"onnx-{model}", model=model)
        assert exported.metadata["check"]["max_abs_difference"] <= 1e-5, (task, model)
        ours = pd.read_parquet(
            predict(run_dir, tmp_path / "new.csv", tmp_path / f"scores-{model}", model=model, runtime=runtime).output
        )
        theirs = load_exported(exported.path).predict(frame)
        if model == "xgboost":  # the same file read as text, as a service receives it: the same scores
            text = pd.read_csv(tmp_path / "new.csv", dtype=str, keep_default_na=False).replace("", None)
            pd.testing.assert_frame_equal(load_exported(exported.path).predict(text), theirs)
        assert list(theirs.columns) == list(ours.columns), (task, model)
        assert len(theirs) == len(ours) == len(frame)
        for column in ours.columns:
            if ours[column].dtype.kind == "f":
                scale = max(1.0, float(ours[column].abs().max())) if task == "regression" else 1.0
                np.testing.assert_allclose(theirs[column], ours[column], atol=1e-5 * scale, err_msg=f"{task} {model}")
            else:
                assert (theirs[column].to_numpy() == ours[column].to_numpy()).all(), (task, model, column)


def test_the_model_runs_with_onnxruntime_alone(trained_run, tmp_path):
    """A fresh process where importing shardflow fails: ONNX Runtime, NumPy and the files only."""
    task, directory, run_dir = trained_run
    exported = export(run_dir, tmp_path / "onnx", model="stacked" if task != "regression" else "mlp")
    frame = new_rows(50)
    model = load_exported(exported.path)
    inputs = model.inputs(frame)
    expected = model.run(frame)
    np.savez(tmp_path / "inputs.npz", **{k: v.astype(str) if v.dtype == object else v for k, v in inputs.items()})
    script = f"""
import sys
sys.modules["shardflow"] = None  # any import of shardflow fails
import numpy as np, onnxruntime as ort
session = ort.InferenceSession({str(exported.path / "model.onnx")!r}, providers=["CPUExecutionProvider"])
data = np.load({str(tmp_path / "inputs.npz")!r})
feeds = {{i.name: (data[i.name].astype(object) if i.type == "tensor(string)" else data[i.name])
         for i in session.get_inputs()}}
outputs = session.run(None, feeds)
np.savez({str(tmp_path / "outputs.npz")!r}, **{{o.name: v for o, v in zip(session.get_outputs(), outputs)}})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(tmp_path / "outputs.npz", allow_pickle=True)
    for name, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(got[name], value, rtol=1e-12)
        else:
            assert (got[name] == value).all()
    metadata = json.loads((exported.path / "metadata.json").read_text())
    # The derived feature is computed by the graph; the datetime parts are inputs (ONNX parses no dates).
    assert {i["name"] for i in metadata["inputs"]} == {"x1", "x2", "when_hour", "when_dayofweek", "city"}
    assert metadata["source_run"]["run_id"] == run_dir.name and metadata["opsets"]["ai.onnx.ml"] == 5
    # It names no path of the machine that exported it (the run, its input or its tables).
    assert str(run_dir.parent) not in (exported.path / "metadata.json").read_text()


def test_int8_export_is_refused_beyond_its_tolerance_and_trees_refuse_quantization(trained_run, tmp_path):
    """What int8 costs depends on the trained weights and on the CPU's integer kernels, so
    the export measures it and refuses more than ``int8_tolerance``; the outcome must agree
    with the measurement, whatever it is on this machine."""
    task, directory, run_dir = trained_run
    exported = export(run_dir, tmp_path / "int8", model="mlp", quantize="int8", int8_tolerance=0.99)
    report = exported.metadata["quantization"]
    metric = {"binary": "auc", "regression": "rmse", "multiclass": "logloss"}[task]
    fp32, int8 = report["fp32"][metric], report["int8"][metric]
    worse = fp32 - int8 if metric == "auc" else int8 - fp32
    assert report["relative_loss"] == pytest.approx(worse / abs(fp32)) and abs(report["relative_loss"]) < 0.2
    assert report["int8"]["bytes"] < report["fp32"]["bytes"]
    scores = load_exported(exported.path, precision="int8").predict(new_rows(100))
    assert len(scores) == 100
    # The default tolerance (1%) and none at all: refused exactly when the measured loss is above it.
    for tolerance in (0.01, 0.0):
        out = tmp_path / f"int8-{tolerance}"
        if report["relative_loss"] > tolerance:
            with pytest.raises(ExportError, match=f"worse than fp32's .* over --int8-tolerance {tolerance}"):
                export(run_dir, out, model="mlp", quantize="int8", int8_tolerance=tolerance)
            assert not out.exists()
        else:
            again = export(run_dir, out, model="mlp", quantize="int8", int8_tolerance=tolerance)
            assert again.metadata["quantization"]["relative_loss"] == report["relative_loss"]
    with pytest.raises(ExportError, match="--quantize int8: quantizes the MLP families' weights; xgboost has no"):
        export(run_dir, tmp_path / "trees", model="xgboost", quantize="int8")
    assert not (tmp_path / "trees").exists()
    # Where the run's input is not readable, int8's cost cannot be measured: refused unless accepted as such.
    (directory / "in").rename(directory / "in-away")
    try:
        with pytest.raises(ExportError, match="cannot be measured; .* --int8-tolerance 1"):
            export(run_dir, tmp_path / "unmeasured", model="mlp", quantize="int8")
        assert not (tmp_path / "unmeasured").exists()
        accepted = export(run_dir, tmp_path / "unmeasured", model="mlp", quantize="int8", int8_tolerance=1)
        assert "quantization" not in accepted.metadata and "skipped" in accepted.metadata["check"]
    finally:
        (directory / "in-away").rename(directory / "in")


@pytest.mark.parametrize("trained_run", ["multiclass"], indirect=True)
def test_predict_with_the_onnxruntime_engine_equals_shardflow(trained_run, runtime, tmp_path):
    task, directory, run_dir = trained_run
    new_rows().to_csv(tmp_path / "new.csv", index=False)
    ours = pd.read_parquet(predict(run_dir, tmp_path / "new.csv", tmp_path / "a", model="mlp", runtime=runtime).output)
    onnx = pd.read_parquet(
        predict(
            run_dir, tmp_path / "new.csv", tmp_path / "b", model="mlp", runtime=runtime, engine="onnxruntime"
        ).output
    )
    assert list(onnx.columns) == list(ours.columns)
    probabilities = [c for c in ours.columns if c.startswith("probability_")]
    np.testing.assert_allclose(onnx[probabilities], ours[probabilities], atol=1e-5)
    assert (onnx["predicted_label"] == ours["predicted_label"]).all()


@pytest.mark.parametrize("trained_run", ["binary"], indirect=True)
def test_export_command_writes_the_model_and_refuses_an_existing_directory(trained_run, tmp_path):
    task, directory, run_dir = trained_run
    command = [sys.executable, "-m", "shardflow", "export", str(run_dir), "--out", str(tmp_path / "e")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / "e")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["metadata.json", "model.onnx"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists; choose another path or pass --overwrite" in again.stderr


def test_readme_serving_example_runs_without_shardflow(trips_dir, runtime, tmp_path):
    from pathlib import Path

    from shardflow.pipelines.setup.config import default_config_path

    config = load_config(
        default_config_path(),
        [f"output.runs_dir={tmp_path / 'runs'}", "train.models=[mlp]", "train.mlp.epochs=1"],
        base_dir=trips_dir,
    )
    result = run(config, runtime=runtime)
    export(result.run_dir, tmp_path / "exports" / "mlp", model="mlp")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- serving-example")[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = (
        "import json, sys\nsys.modules['shardflow'] = None\n"
        + block
        + "\nprint(json.dumps([probability.tolist(), label.tolist()]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    probabilities, labels = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(probabilities) == 2 and all(0 <= p <= 1 for p in probabilities) and set(labels) <= {0, 1}


@pytest.mark.parametrize(
    "objective", ["count:poisson", "reg:gamma", "reg:absoluteerror", "binary:logistic", "binary:hinge"]
)
def test_xgboost_objectives_export_with_their_own_link(objective, tmp_path):
    """Each booster's ONNX graph equals ``booster.predict`` (margins through the objective's
    link), incl. a categorical feature and missing values; an objective without one is refused."""
    import xgboost as xgb

    from shardflow.pipelines.families.registry import FAMILIES
    from shardflow.pipelines.serving.export import build
    from shardflow.tasks.encode import Preprocessor
    from shardflow.tasks.exported import ExportedModel
    from shardflow.tasks.targets import target_kind

    rng = np.random.default_rng(0)
    n = 2000
    a, city = rng.normal(size=n), rng.choice(["p", "q", "r", "s", "t"], n)
    codes = pd.Series(city).map({"p": 2, "q": 3, "r": 4, "s": 5, "t": 6}).to_numpy()
    y = np.exp(0.5 * a + 0.3 * (codes % 2)) * rng.gamma(2.0, 0.5, n)
    if objective.startswith("binary"):
        y = (y > np.median(y)).astype(float)
    a[::13] = np.nan
    x = np.column_stack([a, codes]).astype(np.float32)
    matrix = xgb.DMatrix(x, y, feature_names=["a", "city"], feature_types=["q", "c"], enable_categorical=True)
    booster = xgb.train({"objective": objective, "max_depth": 4, "max_cat_to_onehot": 1}, matrix, 20)
    classification = objective.startswith("binary")
    pre = Preprocessor(
        ["a"],
        [None],
        [None],
        [0.0],
        [1.0],
        ["city"],
        {"city": ["p", "q", "r", "s", "t"]},
        "y",
        "classification" if classification else "regression",
        classes=["0", "1"] if classification else [],
    )
    payload = {"model": bytes(booster.save_raw("ubj"))}
    if objective == "binary:hinge":
        with pytest.raises(ExportError, match="objective 'binary:hinge' does not export"):
            build(pre, FAMILIES["xgboost"], payload, target_kind(pre.task))
        return
    model, _ = build(pre, FAMILIES["xgboost"], payload, target_kind(pre.task))
    frame = pd.DataFrame({"a": a, "city": city})
    out = ExportedModel(
        model.SerializeToString(),
        {
            "inputs": [{"name": "a", "type": "double"}, {"name": "city", "type": "string"}],
            "derived": {},
            "classes": pre.classes,
        },
    ).run(frame)
    got = out["probability" if classification else "prediction"]
    imputed = xgb.DMatrix(
        np.nan_to_num(x, nan=0.0), feature_names=["a", "city"], feature_types=["q", "c"], enable_categorical=True
    )  # the graph imputes a missing `a` with its mean, 0
    np.testing.assert_allclose(got, booster.predict(imputed), rtol=2e-6, atol=1e-6)


def test_load_model_predicts_pandas_and_dask_frames_as_shardflow_predict(trained_run, runtime, tmp_path, caplog):
    """``shardflow.load_model``: the run's preprocessing and model as an object. A pandas
    frame in the process and a Dask frame on the cluster give what ``shardflow predict``
    writes for the same rows; a row the ETL would quarantine gets no prediction."""
    import logging

    import dask.dataframe as dd

    import shardflow

    task, directory, run_dir = trained_run
    frame = new_rows()
    frame.to_csv(tmp_path / "new.csv", index=False)
    for name in ("xgboost", "xgboost_groups", "mlp"):
        model = shardflow.load_model(run_dir, name)
        ours = model.predict(frame)
        files = pd.read_parquet(
            predict(run_dir, tmp_path / "new.csv", tmp_path / f"scores-{name}", model=name, runtime=runtime).output
        )
        assert list(ours.columns) == list(files.columns) and len(ours) == len(frame), name
        for column in files.columns:
            if files[column].dtype.kind == "f":
                np.testing.assert_allclose(ours[column], files[column], rtol=1e-6, err_msg=f"{task} {name}")
            else:
                assert (ours[column].to_numpy() == files[column].to_numpy()).all(), (task, name, column)
        lazy = model.predict(dd.from_pandas(frame, npartitions=3))
        assert isinstance(lazy, dd.DataFrame)
        pd.testing.assert_frame_equal(runtime.client.compute(lazy).result(), ours)
    if task != "regression":
        proba = model.predict_proba(frame)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
        assert (
            proba.to_numpy().argmax(axis=1)
            == [
                model.classes.index(str(v).lower()) if task == "binary" else model.classes.index(v)
                for v in ours.predicted_label
            ]
        ).all()
    # A date the ETL cannot parse: that row is quarantined, the others are scored.
    bad = frame.assign(when=frame.when.where(frame.index != 5, "not a date"))
    with caplog.at_level(logging.WARNING, logger="shardflow"):
        scored = model.predict(bad)
    assert scored.index.equals(bad.index) and scored.iloc[5].isna().all() and scored.drop(index=5).notna().all().all()
    assert "1 row(s) have no prediction" in caplog.text
    # Rows are placed by position: an index that repeats labels (a concat) changes nothing.
    repeated = model.predict(bad.set_index(np.zeros(len(bad), dtype=int)))
    pd.testing.assert_frame_equal(repeated.reset_index(drop=True), scored.reset_index(drop=True))


def test_estimator_fit_on_a_dask_frame_equals_the_job_on_its_files(trips_dir, runtime, tmp_path):
    """``Estimator(config).fit(ddf)`` is the job on the frame: the same run as on the files the
    frame was read from, found again when the same frame is fitted again."""
    import dask.dataframe as dd

    import shardflow
    from shardflow.pipelines.setup.config import default_config_path

    overrides = ["train.models=[xgboost]", "train.xgboost.num_boost_round=20", "encode.min_frequency=5"]
    on_files = run(
        load_config(default_config_path(), [*overrides, f"output.runs_dir={tmp_path / 'files'}"], base_dir=trips_dir),
        runtime=runtime,
    )
    config = load_config(
        default_config_path(), [*overrides, f"output.runs_dir={tmp_path / 'frames'}"], base_dir=trips_dir
    )
    frame = dd.read_parquet(trips_dir / "trips")
    estimator = shardflow.Estimator(config, runtime=runtime).fit(frame)
    assert estimator.metrics_ == on_files.metrics
    rows = pd.read_parquet(trips_dir / "trips").head(300)
    expected = shardflow.load_model(on_files.run_dir).predict(rows)
    pd.testing.assert_frame_equal(estimator.model_.predict(rows), expected)
    labels = expected["predicted_label"].to_numpy(dtype=object, na_value=None)  # None: a quarantined row
    np.testing.assert_array_equal(estimator.predict(rows), labels)
    again = shardflow.Estimator(config, runtime=runtime).fit(dd.read_parquet(trips_dir / "trips"))
    assert again.run_dir_ == estimator.run_dir_  # the frame's files and run are found again
    # pandas X and y paired by position (a named index becomes a column): the same table.
    pandas_rows = pd.read_parquet(trips_dir / "trips")
    by_position = shardflow.Estimator(config, runtime=runtime).fit(
        pandas_rows.drop(columns=["is_delayed"]), pandas_rows["is_delayed"].to_numpy()
    )
    assert by_position.metrics_.keys() == estimator.metrics_.keys()
    assert by_position.metrics_["xgboost"]["auc"] == pytest.approx(estimator.metrics_["xgboost"]["auc"], abs=0.02)
    from shardflow.core.errors import InputError

    with pytest.raises(InputError, match=r"X is a Dask DataFrame and y a ndarray; give y as a Dask Series"):
        shardflow.Estimator(config, runtime=runtime).fit(frame, pandas_rows["is_delayed"].to_numpy())
    with pytest.raises(InputError, match=r"X has no column 'is_delayed' \(target.column\); add it, or pass y"):
        shardflow.Estimator(config, runtime=runtime).fit(frame.drop(columns=["is_delayed"]))
