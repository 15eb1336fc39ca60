"""MLflow tracking against a real MLflow tracking server (sqlite backend) started on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

mlflow = pytest.importorskip("mlflow", reason="the tracking tests need MLflow: pip install -e '.[test]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from test_reliability import FAST  # noqa: E402

from shardflow.pipelines.job import run  # noqa: E402
from shardflow.pipelines.records.rundir import RunDir, read_manifest  # noqa: E402
from shardflow.pipelines.setup.config import default_config_path, load_config  # noqa: E402

pytestmark = pytest.mark.slow  # whole jobs on clusters: scheduled first (tests/conftest.py)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        f"the MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.3)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_run_is_logged_to_mlflow_and_a_resumed_run_continues_it(tracking_server, trips_dir, runtime, tmp_path):
    base = [
        *FAST,
        "train.models=[xgboost,mlp,xgboost_partitions]",
        f"output.runs_dir={tmp_path / 'runs'}",
        f"tracking.mlflow.tracking_uri={tracking_server}",
        "tracking.mlflow.experiment=shardflow-test",
    ]
    # The process's own MLflow state (a notebook's experiment) is neither used nor changed.
    mlflow.set_tracking_uri(tracking_server)
    own = mlflow.set_experiment("a-notebook-experiment").experiment_id
    mlflow.set_tracking_uri("file:///nonexistent-mlruns")
    first = run(load_config(default_config_path(), base, base_dir=trips_dir), runtime=runtime)
    assert mlflow.get_tracking_uri() == "file:///nonexistent-mlruns"
    client = MlflowClient(tracking_uri=tracking_server)
    assert client.search_runs([own]) == []
    experiment = client.get_experiment_by_name("shardflow-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    tracked = runs[0]
    assert tracked.info.status == "FINISHED" and tracked.data.tags["shardflow.run_id"] == first.run_dir.name
    assert read_manifest(first.run_dir).tracking["mlflow"]["run_id"] == tracked.info.run_id

    # Parameters: the resolved config with its defaults, and the effective hyperparameters.
    run_dir = RunDir(first.run_dir)
    params = tracked.data.params
    xgb_meta = json.loads(run_dir.trained("xgboost.json").read_text())
    mlp_meta = json.loads(run_dir.trained("mlp.json").read_text())
    assert params["train.xgboost.num_boost_round"] == "30" and params["train.mlp.epochs"] == "2"
    assert params["encode.max_categories"] == str(load_config().encode.max_categories)  # a default, not in FAST
    assert params["effective.xgboost.max_depth"] == str(xgb_meta["params"]["max_depth"]) == "8"
    assert params["effective.xgboost.objective"] == "binary:logistic"
    assert json.loads(params["effective.mlp.hidden"]) == list(mlp_meta["spec"]["hidden"])
    assert not any(k.startswith("tracking.") for k in params)

    # Metrics: every round and epoch, and the final comparison.
    history = [m.value for m in client.get_metric_history(tracked.info.run_id, "xgboost.validation.logloss")]
    np.testing.assert_allclose(history, xgb_meta["history"]["validation"]["logloss"], rtol=1e-6)
    losses = client.get_metric_history(tracked.info.run_id, "mlp.validation_loss")
    np.testing.assert_allclose([m.value for m in losses], mlp_meta["history"]["validation_loss"], rtol=1e-6)
    first_evaluations = len(mlp_meta["history"]["validation_loss"])  # one per evaluation (tasks.neural)
    assert first_evaluations >= 1 and [m.step for m in losses] == list(range(first_evaluations))
    for model, values in first.metrics.items():
        assert tracked.data.metrics[f"{model}.auc"] == pytest.approx(values["auc"], rel=1e-9)
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"report.html", "comparison.md", "config.yaml"} <= artifacts

    # Models in MLflow's flavours, with signatures, predict as shardflow's own files.
    mlflow.set_tracking_uri(tracking_server)
    logged = {
        m.name: m for m in mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    }
    # MLflow's own flavours for the global models; python functions for the ensembles and the best.
    assert set(logged) == {"xgboost", "mlp", "xgboost_partitions", "best_model"}
    best = max(first.metrics, key=lambda name: first.metrics[name]["auc"])
    assert tracked.data.tags["best_model"] == best
    assert tracked.data.tags["mlflow.source.name"] == "shardflow" and tracked.data.tags["mlflow.source.type"] == "JOB"
    assert params[f"{best}.rows"] == str(first.metrics[best]["rows"]) and f"{best}.rows" not in tracked.data.metrics
    from shardflow.tasks.encode import Preprocessor

    features = Preprocessor.from_json(run_dir.preprocessor.read_text()).feature_names
    x = zarr.open_group(str(run_dir.zarr), mode="r")["X"][:200]
    try:
        import xgboost as xgb

        booster = mlflow.xgboost.load_model(logged["xgboost"].model_uri)
        frame = pd.DataFrame(x, columns=features)
        reference = xgb.Booster(model_file=str(run_dir.trained("xgboost.ubj")))
        np.testing.assert_array_equal(booster.predict(xgb.DMatrix(frame)), reference.predict(xgb.DMatrix(frame)))
        info = mlflow.models.get_model_info(logged["xgboost"].model_uri)
        assert info.signature.inputs.input_names() == features
        import torch

        from shardflow.pipelines.records.artifacts import load_weights
        from shardflow.tasks.neural import MLPSpec, network

        module = mlflow.pytorch.load_model(logged["mlp"].model_uri)
        own = network(MLPSpec.from_dict(mlp_meta["spec"]), load_weights(run_dir.trained("mlp.pt"))).eval()
        with torch.no_grad():
            np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), own(torch.from_numpy(x)).numpy(), rtol=1e-6)
        assert mlflow.models.get_model_info(logged["mlp"].model_uri).signature is not None

        # The python functions score raw input rows (joins, features, encoding included), as
        # shardflow's own loader does; their artifacts hold code and the run's files, no pickle.
        from shardflow.pipelines.families.registry import FAMILIES
        from shardflow.pipelines.serving.model import load_model

        raw = pd.read_parquet(trips_dir / "trips").head(300).drop(columns=["is_delayed"])
        for name, family in (("best_model", best), ("xgboost_partitions", "xgboost_partitions")):
            pyfunc = mlflow.pyfunc.load_model(logged[name].model_uri)
            pd.testing.assert_frame_equal(pyfunc.predict(raw), load_model(first.run_dir, family).predict(raw))
            stored = mlflow.artifacts.download_artifacts(logged[name].model_uri)
            assert not list(Path(stored).rglob("*.pkl")) and (Path(stored) / "mlflow_pyfunc.py").is_file()
            # Only the scored family's trained files travel with it (and those it is built on).
            carried = {f.relative_to(d).parts[0] for d in Path(stored).rglob("train") for f in d.rglob("*.*")}
            own = {"task", "seconds", "peak_memory"}  # the train stage's own files
            assert {c.split(".")[0] for c in carried} - own == {family, *FAMILIES[family].needs}, carried
    finally:
        mlflow.set_tracking_uri(None)

    # --resume with a new train section: the same MLflow run goes on (its curves continue).
    resumed = run(
        load_config(default_config_path(), [*base, "train.mlp.epochs=1"], base_dir=trips_dir),
        runtime=runtime,
        resume=first.run_dir,
    )
    assert resumed.skipped == ["etl"]
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [tracked.info.run_id] and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "mlp.validation_loss")]
    resumed_evaluations = len(json.loads(run_dir.trained("mlp.json").read_text())["history"]["validation_loss"])
    assert steps == list(range(first_evaluations + resumed_evaluations))
    assert "train.mlp.epochs" in runs[0].data.tags["shardflow.params_changed"]
    assert runs[0].data.metrics["mlp.auc"] == pytest.approx(resumed.metrics["mlp"]["auc"], rel=1e-9)


def test_tracking_without_mlflow_installed_names_the_extra(tmp_path, monkeypatch):
    from shardflow.core.errors import ShardflowError
    from shardflow.pipelines.interface.tracking import MLflowConfig, MLflowRun

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(
        ShardflowError,
        match=r"tracking.mlflow': MLflow is not installed; pip install "
        r"'shardflow\[tracking\]'",
    ):
        MLflowRun(MLflowConfig(tracking_uri="http://127.0.0.1:9"), tmp_path)


def test_a_config_does_not_send_mlflow_credentials_elsewhere(tmp_path, monkeypatch):
    from shardflow.core.errors import ShardflowError
    from shardflow.pipelines.interface.tracking import MLflowConfig, MLflowRun

    with pytest.raises(ShardflowError, match=r"tracking_uri': holds a user name or password"):
        MLflowRun(MLflowConfig(tracking_uri="http://me:pw@127.0.0.1:9"), tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    with pytest.raises(
        ShardflowError,
        match=r"'http://attacker.example' would receive MLFLOW_TRACKING_TOKEN from "
        r"the environment",
    ):
        MLflowRun(MLflowConfig(tracking_uri="http://attacker.example"), tmp_path)


def test_a_tracking_server_that_is_down_is_named_before_any_stage(tmp_path, monkeypatch):
    from shardflow.core.errors import ShardflowError
    from shardflow.pipelines.interface.tracking import MLflowConfig, MLflowRun

    # Without lowering MLflow's retries (they take minutes): one probe, before any stage.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(
        ShardflowError,
        match=rf"tracking.mlflow': cannot open an MLflow run at "
        rf"http://127.0.0.1:{port} .*start the server or fix tracking_uri",
    ):
        MLflowRun(MLflowConfig(tracking_uri=f"http://127.0.0.1:{port}"), tmp_path)
