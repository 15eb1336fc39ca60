"""Experiment tracking: a run's config, metrics, report and models logged to MLflow (optional).

``tracking: {mlflow: {tracking_uri: http://..., experiment: trips}}`` in a config logs each
shardflow run to one MLflow run (see :func:`log_run`). MLflow is an optional extra
(``pip install shardflow[tracking]``); it is imported only when a config asks for it.
"""

from __future__ import annotations

from shardflow.pipelines.setup.tracking_config import MLflowConfig, uri_credentials_problem

#: Tags that tie an MLflow run to a shardflow run, and what of it was logged already.
RUN_TAG, TRAIN_TAG, EVALUATE_TAG = "shardflow.run_id", "shardflow.logged_train_key", "shardflow.logged_evaluate_key"
MODEL_TAG = "shardflow.logged_model"
#: The python-function models' artifact (a folder) holding the run's scoring files, and the file
#: in it naming the family scored (not a model config: MLflow would log that as run parameters).
PYFUNC_RUN_ARTIFACT, PYFUNC_MODEL_FILE = "run", "shardflow-model.txt"
#: The module MLflow runs to load them (never imported by shardflow: it registers the model).
PYFUNC_CODE = "shardflow.pipelines.serving.mlflow_pyfunc"
#: Entries of the evaluation's metrics that are counts (logged as parameters).
_COUNTS = ("rows",)


class MLflowRun:
    """One shardflow run's MLflow run: found again by the run's id (a resumed run continues it).

    Parameters
    ----------
    config : MLflowConfig
    run_dir : path or StorePath
        The shardflow run directory (its name is the ``shardflow.run_id`` tag).
    """

    def __init__(self, config: MLflowConfig, run_dir):
        try:
            import mlflow
            from mlflow.tracking import MlflowClient
        except ImportError:
            from shardflow.core.errors import ShardflowError

            raise ShardflowError(
                "config key 'tracking.mlflow': MLflow is not installed; "
                "pip install 'shardflow[tracking]', or remove the key"
            ) from None
        self.mlflow = mlflow
        _check_tracking_uri(config.tracking_uri)
        self.uri = config.tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        check_reachable(self.uri)  # MLflow's own retries of a dead server take minutes
        try:
            self._open(config, run_dir)
        except Exception as err:
            from shardflow.core.errors import ShardflowError

            message = str(err).splitlines()[0] if str(err) else ""
            raise ShardflowError(
                f"config key 'tracking.mlflow': cannot open an MLflow run at {self.uri} "
                f"({type(err).__name__}: {message[:300]}); start the server or fix "
                "tracking_uri"
            ) from None

    def _open(self, config: MLflowConfig, run_dir) -> None:
        experiment = self.client.get_experiment_by_name(config.experiment)
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(config.experiment)
        )
        name = run_dir.name
        found = (
            []
            if "'" in name
            else self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{name}'", max_results=1
            )
        )
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.tags = dict(found[0].data.tags)
            self.params = dict(found[0].data.params)
        else:
            self.run_id = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={RUN_TAG: name, "shardflow.run_dir": str(run_dir), **_source_tags()},
            ).info.run_id
            self.tags, self.params = {}, {}
        self.resumed = bool(found)
        self.changed = set(filter(None, self.tags.get("shardflow.params_changed", "").split(",")))

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the MLflow run ended; a tracking server that is gone is warned about, not raised
        (the shardflow run's own outcome, or its exception, is what counts)."""
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as err:
            _warn(f"cannot mark MLflow run {self.run_id} {status} ({type(err).__name__}: {err})")

    def log_params(self, params: dict) -> None:
        """Parameters not logged yet; a value that differs from the logged one (a resumed run
        with another config) cannot be changed in MLflow: it is tagged and warned about."""
        from mlflow.entities import Param

        params = {metric_name(k): str(v) for k, v in params.items()}
        new = {k: v for k, v in params.items() if k not in self.params}
        changed = sorted(k for k, v in params.items() if k in self.params and self.params[k] != v)
        for start in range(0, len(new), 100):
            chunk = list(new.items())[start : start + 100]
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in chunk])
        self.params.update(new)
        if changed:
            import logging

            logging.getLogger("shardflow.tracking").warning(
                "tracking: MLflow run %s keeps its first value of %s (parameters cannot change); the run "
                "directory's config.yaml has the current ones",
                self.run_id,
                ", ".join(changed[:5]),
            )
            self.changed.update(changed)
            self.client.set_tag(self.run_id, "shardflow.params_changed", ",".join(sorted(self.changed))[:5000])

    def log_metrics(self, series: dict) -> None:
        """``{name: [value per step]}`` or ``{name: value}``. In a resumed MLflow run a curve goes
        on after its last logged step (a model retrained with a new train section)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for name, values in series.items():
            offset = 0
            if self.resumed and isinstance(values, list):
                offset = max(
                    (m.step + 1 for m in self.client.get_metric_history(self.run_id, metric_name(name))), default=0
                )
            values = values if isinstance(values, list) else [values]
            metrics.extend(
                Metric(metric_name(name), float(v), now, offset + i)
                for i, v in enumerate(values)
                if v is not None and v == v
            )
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])


#: Seconds :func:`check_reachable` waits for a tracking server to accept a connection.
PROBE_TIMEOUT = 5.0


def _source_tags() -> dict:
    """MLflow's source tags for a run made by shardflow (what made it, which version)."""
    import shardflow

    return {"mlflow.source.type": "JOB", "mlflow.source.name": "shardflow", "shardflow.version": shardflow.__version__}


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise one line when nothing accepts a connection at an ``http(s)://`` tracking URI.

    One TCP connection, at most ``timeout`` seconds, before any stage runs: MLflow's HTTP
    client retries a dead server with backoff for minutes. Other schemes (``file:``,
    ``sqlite:``, ``databricks``) and URIs reached through a proxy are left to MLflow.

    Examples
    --------
    >>> check_reachable("sqlite:///mlflow.db")  # not a network address: nothing to probe
    """
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    from shardflow.core.errors import ShardflowError

    parts = urlsplit(str(uri))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return  # the proxy, not this machine, connects to the server
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        reason = f"no answer within {timeout:g}s" if isinstance(err, TimeoutError) else type(err).__name__
        raise ShardflowError(
            f"config key 'tracking.mlflow': cannot open an MLflow run at {uri} (nothing accepts a connection "
            f"at {parts.hostname}:{port}: {reason}); start the server or fix tracking_uri"
        ) from None


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts a parameter or metric name: letters, digits and ``_-. /:``
    (others, e.g. ``@`` in ``ndcg@10`` or a column's name, become ``_``), at most 250 characters.

    Examples
    --------
    >>> metric_name("xgboost.validation.ndcg@10"), metric_name("input.types.fare (€)")
    ('xgboost.validation.ndcg_10', 'input.types.fare ___')
    """
    import re

    return re.sub(r"[^\w\-. /:]", "_", str(name), flags=re.ASCII)[:250]


def _check_tracking_uri(uri: str | None) -> None:
    """A config's tracking URI must not carry credentials, nor send the environment's MLflow
    credentials to another server than the environment's own ``MLFLOW_TRACKING_URI``."""
    import os

    from shardflow.core.errors import ShardflowError

    if uri is None:
        return
    problem = uri_credentials_problem(uri)  # checked by load_config too; an MLflowConfig may be built in Python
    if problem:
        raise ShardflowError(f"config key 'tracking.mlflow.tracking_uri': {problem}")
    secrets = [
        k for k in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_AUTH") if os.environ.get(k)
    ]
    credentials_file = os.path.join(os.path.expanduser("~"), ".mlflow", "credentials")  # MLflow reads it too
    if os.path.exists(credentials_file):
        secrets.append(credentials_file)
    if secrets and uri.rstrip("/") != os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/"):
        raise ShardflowError(
            f"config key 'tracking.mlflow.tracking_uri': {uri!r} would receive {secrets[0]} from "
            "the environment, and a config does not choose where credentials go; set "
            "MLFLOW_TRACKING_URI to it in the environment (or remove the key)"
        )


def _warn(message: str) -> None:
    import logging

    logging.getLogger("shardflow.tracking").warning("tracking: %s", message)


def _flatten(data, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            import json

            out[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
    return {k: str(v)[:6000] for k, v in out.items()}


def log_run(tracked: MLflowRun, config, run_dir) -> None:
    """Log a completed shardflow run: its resolved config and the effective hyperparameters
    as parameters; the global models' validation metrics per round (XGBoost) and per epoch
    (MLP), and every model's final ones; the report, comparison and config; the global models
    in MLflow's xgboost and pytorch flavours with their signatures. What the MLflow run holds
    already (a resumed run) is not logged twice."""
    import pandas as pd
    import zarr

    from shardflow.core.storage import zarr_store
    from shardflow.pipelines.families.registry import FAMILIES
    from shardflow.pipelines.records.artifacts import RunFiles
    from shardflow.pipelines.records.rundir import RunDir, read_manifest
    from shardflow.pipelines.records.trained_models import available_models
    from shardflow.tasks.encode import Preprocessor

    run = RunDir(run_dir)
    manifest = read_manifest(run_dir)
    files = RunFiles(run_dir, manifest)
    preprocessor = Preprocessor.from_json(files.path(run.preprocessor).read_text())
    sample = pd.DataFrame(
        zarr.open_group(zarr_store(run.zarr, read_only=True), mode="r")["X"][:20], columns=preprocessor.feature_names
    )
    tracked_families = [FAMILIES[name] for name in available_models(run_dir) if FAMILIES[name].tracking]
    logged = {family.name: family.tracking(files, family, sample) for family in tracked_families}
    params = _flatten({k: v for k, v in config.resolved().to_dict().items() if k != "tracking"})
    for name, out in logged.items():
        params.update(_flatten(out["params"], f"effective.{name}."))
    tracked.log_params(params)

    train_key = manifest.key_of(RunDir.TRAIN) or ""
    # Each step is tagged done for this train key as soon as it is: logging again after a
    # failure (--resume) neither repeats the curves nor a model already logged.
    if tracked.tags.get(TRAIN_TAG) != train_key:
        for out in logged.values():
            tracked.log_metrics(out["curves"])
        tracked.client.set_tag(tracked.run_id, TRAIN_TAG, train_key)
    calls = {name: (out["log_model"], train_key) for name, out in logged.items()}
    pyfuncs, best = _pyfunc_models(files, train_key)
    calls.update(pyfuncs)
    _log_models(
        tracked, {name: call for name, call in calls.items() if tracked.tags.get(f"{MODEL_TAG}.{name}") != call[1]}
    )
    if best:
        tracked.client.set_tag(tracked.run_id, "best_model", best)
    evaluate_key = manifest.key_of(RunDir.EVALUATE) or ""
    if tracked.tags.get(EVALUATE_TAG) != evaluate_key and run.relative(run.metrics) in manifest.artifacts:
        metrics = files.read_json(run.metrics)["metrics"]
        counts = {
            f"{model}.{name}": value
            for model, values in metrics.items()
            for name, value in values.items()
            if name in _COUNTS
        }
        tracked.log_params(counts)  # counts describe the evaluation: parameters, not metrics
        tracked.log_metrics(
            {
                f"{model}.{name}": value
                for model, values in metrics.items()
                for name, value in values.items()
                if isinstance(value, (int, float)) and name not in _COUNTS
            }
        )
        tracked.client.log_text(tracked.run_id, run.comparison.read_text(), run.comparison.name)
        tracked.client.set_tag(tracked.run_id, EVALUATE_TAG, evaluate_key)
    if run.report.exists():
        tracked.client.log_text(tracked.run_id, run.report.read_text(), run.report.name)
    tracked.client.log_text(tracked.run_id, run.config.read_text(), run.config.name)


def _pyfunc_models(files, train_key: str) -> tuple:
    """The run's models that MLflow gets as python functions scoring raw rows
    (:mod:`~shardflow.pipelines.serving.mlflow_pyfunc`): ``best_model`` (the run's best on
    validation) and every family MLflow has no flavour for (the ensembles and per-partition or
    per-group models): ``{logged name: (log_model, tag)}``, and the best model's family (None
    for a run not evaluated)."""
    from shardflow.pipelines.families.registry import FAMILIES
    from shardflow.pipelines.records.trained_models import available_models
    from shardflow.tasks.metrics import best_model

    names = {name: name for name in available_models(files.run.path) if FAMILIES[name].tracking is None}
    if files.run.relative(files.run.metrics) in files.manifest.artifacts:
        metrics = files.read_json(files.run.metrics)
        if metrics["metrics"]:
            names["best_model"] = best_model(metrics["metrics"], metrics["task"])
    calls = {
        logged: (_pyfunc_logger(files.run.path, family, logged), f"{train_key}:{family}")
        for logged, family in names.items()
    }
    return calls, names.get("best_model")


def _pyfunc_logger(run_dir, family: str, logged_name: str):
    """``log_model(run_id, model_id)`` for one family of the run as an MLflow python function."""

    def log_model(run_id: str, model_id: str):
        import importlib.util
        import tempfile
        from pathlib import Path

        import mlflow.pyfunc
        from mlflow.models import Model

        import shardflow
        from shardflow.pipelines.records.trained_models import copy_scoring_files

        code = importlib.util.find_spec(PYFUNC_CODE).origin  # not imported here: MLflow runs it
        with tempfile.TemporaryDirectory(prefix="shardflow-pyfunc-") as tmp:
            bundle = copy_scoring_files(run_dir, Path(tmp) / PYFUNC_RUN_ARTIFACT, families=[family])
            (bundle / PYFUNC_MODEL_FILE).write_text(family)
            Model.log(
                None,
                name=logged_name,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=model_id,
                python_model=code,
                artifacts={PYFUNC_RUN_ARTIFACT: str(bundle)},
                pip_requirements=[f"shardflow=={shardflow.__version__}", f"mlflow=={mlflow.__version__}"],
            )

    return log_model


def _log_models(tracked: MLflowRun, calls: dict) -> None:
    """Run the models' ``log_model(run_id, model_id)`` (MLflow's ``Model.log``, given the run
    and a logged model created in the run's experiment: no active run or experiment is used or
    changed) against the tracked run's server, and tag each logged (``calls``: ``{name:
    (log_model, tag value)}``); MLflow's process-wide tracking URI is restored."""
    if not calls:
        return
    mlflow = tracked.mlflow
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracked.uri)
    try:
        for name, (call, tag) in calls.items():
            model = tracked.client.create_logged_model(tracked.experiment_id, name=name, source_run_id=tracked.run_id)
            call(tracked.run_id, model.model_id)
            tracked.client.set_tag(tracked.run_id, f"{MODEL_TAG}.{name}", tag)
    finally:
        mlflow.set_tracking_uri(previous)
