"""Batch inference: a run's saved preprocessing and a chosen model, partition by partition."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dask

from shardflow.cluster.config import ClusterConfig
from shardflow.cluster.factory import Runtime, as_runtime
from shardflow.core.errors import InputError, ShardflowError
from shardflow.core.storage import check_url, location, url_scheme
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.graph import named_delayed, scatter_named, task_names
from shardflow.pipelines.interface import progress
from shardflow.pipelines.records import artifacts, trained_models
from shardflow.pipelines.records.ownership import new_output_dir
from shardflow.pipelines.records.rundir import RunDir, atomic_directory
from shardflow.pipelines.serving.drift import (
    PSI_THRESHOLD,
    UNSEEN_THRESHOLD,
    drift_report,
    read_reference,
    record_drift,
)
from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.setup.plan import InputPlan
from shardflow.tasks.drift import combine_drift_counts, layout_of
from shardflow.tasks.exported import INT8_FILE, METADATA_FILE, MODEL_FILE
from shardflow.tasks.scoring import QUARANTINE_DIR, predict_partition, score_exported_partition
from shardflow.tasks.worker_state import ExportedSessions

logger = logging.getLogger("shardflow.predict")


@dataclass
class PredictResult:
    output: Path
    model: str
    rows: int
    quarantined: int
    seconds: float
    #: The drift report (:func:`~shardflow.pipelines.serving.drift.drift_report`); None for a run
    #: made before the ETL kept a drift reference.
    drift: dict | None = None


def input_extent(path: str) -> tuple:
    """``(root, anywhere_below)``: the part of an input path before its first wildcard, up to
    a directory (the path itself if it has none), and whether the pattern may read files in
    any folder below that root (a wildcard in a folder's name, or ``**``).

    Examples
    --------
    >>> input_extent("data/new/*.csv"), input_extent("data/*/x.csv"), input_extent("t.csv")
    (('data/new', False), ('data', True), ('t.csv', False))
    """
    wildcards = [path.index(c) for c in "*?[" if c in path]
    if not wildcards:
        return path, False
    first = min(wildcards)
    root = path[:first].rsplit("/", 1)[0] if "/" in path[:first] else "."
    return root, "/" in path[first:] or "**" in path


def predict(
    run_dir,
    input_path,
    output_path,
    *,
    model: str | None = None,
    runtime: Runtime | None = None,
    overwrite: bool = False,
    engine: str = "shardflow",
    precision: str = "fp32",
    storage_options: dict | None = None,
    cluster: ClusterConfig | None = None,
    fail_on_drift: bool = False,
    explain: bool = False,
    psi_threshold: float = PSI_THRESHOLD,
    unseen_threshold: float = UNSEEN_THRESHOLD,
) -> PredictResult:
    """Score new data with a finished run's preprocessing and one of its models.

    Parameters
    ----------
    run_dir : path
        A run directory with completed ``etl`` and ``train`` stages.
    input_path : path
        Parquet file/directory or CSV glob with the run's input columns (the target
        may be absent).
    output_path : path
        Directory for the predictions (one Parquet file per partition, with the
        run's ``keep_columns`` and the columns of
        :func:`~shardflow.tasks.scoring.prediction_columns`: ``prediction`` (regression,
        in the target's units; binary: the positive class's probability),
        ``predicted_label`` (classification, spelled as in the input) and, multi-class,
        ``probability_<label>`` per class); rows quarantined as in the ETL go to
        ``_quarantine/``. It appears only when complete.
    model : str, optional
        Model family; default the best one of the run's evaluation.
    engine : {"shardflow", "onnxruntime"}
        ``onnxruntime``: the model is exported as ONNX (:mod:`shardflow.pipelines.serving.export`,
        checked against shardflow's predictions) and each worker scores its partitions with
        one ONNX Runtime session, reused across them; ``precision="int8"`` uses the
        quantized MLP.
    storage_options : dict, optional
        Options of the object store's file system for ``run_dir``, ``input_path`` and
        ``output_path`` (credentials from the environment).
    runtime : Runtime or distributed.Client, optional
        A started cluster to score on (default: one started here and closed at the end).
    cluster : ClusterConfig, optional
        Where the cluster started here runs (default: this machine, processes or threads
        as the input's size decides); never the run's own ``cluster:`` section.
    explain : bool
        Add each row's exact feature contributions (``contribution_<feature>`` and
        ``contribution_bias``, in the model's margin; XGBoost models only, see
        :func:`~shardflow.tasks.scoring.contribution_columns`).
    fail_on_drift : bool
        Raise :class:`~shardflow.pipelines.serving.drift.DriftError` (one line naming the features),
        and write nothing, when a feature drifted from the training rows. Either way the
        drift of each feature is measured (:mod:`shardflow.pipelines.serving.drift`), written to
        ``_drift.json`` beside the predictions and logged as a warning per drifted feature;
        a run made before the ETL kept a drift reference is scored without the check.
    psi_threshold, unseen_threshold : float
        A feature has drifted when its population stability index exceeds ``psi_threshold``
        (default 0.2) or, categorical, the share of rows with a category never seen in
        training exceeds ``unseen_threshold`` (default 0.01).

    Examples
    --------
    >>> predict("runs/20261122-101500-ab12cd", "new/*.csv", "scores/")  # doctest: +SKIP
    """
    started = time.perf_counter()
    if engine not in ("shardflow", "onnxruntime"):
        raise ShardflowError(f"--engine {engine}: not one of shardflow, onnxruntime")
    if precision not in ("fp32", "int8") or (precision == "int8" and engine != "onnxruntime"):
        raise ShardflowError(f"--precision {precision}: fp32, or int8 with --engine onnxruntime")
    for option, path in (("--run", run_dir), ("--input", input_path), ("--output", output_path)):
        try:
            check_url(str(path), option)
        except ValueError as err:
            raise ShardflowError(str(err)) from None
    run_dir = location(run_dir, storage_options)
    files = trained_models.scoring_files(run_dir, model)  # every file checked against the manifest's hashes
    if explain and (FAMILIES[files.model].explain is None or engine != "shardflow"):
        raise ShardflowError(
            f"--explain: exact contributions are for the XGBoost models with --engine shardflow; {files.model!r} "
            f"has none here (its permutation importance is in {RunDir(run_dir).explanations})"
        )
    root, anywhere_below = input_extent(str(input_path))
    root = location(root, storage_options)
    # An output may lie beside or below the files a pattern reads, never in a folder it may read.
    output = new_output_dir(
        location(output_path, storage_options),
        "--output",
        overwrite,
        keep={"--run": run_dir, **({"--input": root} if anywhere_below else {})},
        inputs={} if anywhere_below else {"--input": root},
    )
    model, payload, preprocessor, manifest = files.model, files.payload, files.preprocessor, files.manifest
    for option, value in (("--psi-threshold", psi_threshold), ("unseen_threshold", unseen_threshold)):
        if not value >= 0:
            raise ShardflowError(f"{option} {value}: must be a number >= 0")
    reference = read_reference(run_dir, manifest)
    if reference is None:
        (logger.warning if fail_on_drift else logger.info)(
            "predict: %s was made before shardflow kept a drift reference; input drift is not measured", run_dir
        )
    config_path = files.config_path
    if url_scheme(input_path):
        input_abs = str(input_path)
    elif any(c in str(input_path) for c in "*?["):  # a glob: not resolved (it names no one file)
        input_abs = os.path.abspath(os.path.expanduser(str(location(input_path))))
    else:
        input_abs = str(location(input_path).expanduser().resolve())
    # The caller's storage options and cluster, never the run's: a run directory does not
    # choose what is reached or where the data goes.
    config = load_config(
        config_path, [f"input.path={json.dumps(input_abs)}", "input.format=auto", "storage_options={}", "cluster={}"]
    )
    config.storage_options = dict(storage_options or {})
    config.cluster = cluster or ClusterConfig()
    plan = InputPlan(config, for_prediction=True)
    if plan.source.rows == 0:
        raise InputError(f"--input {input_path}: the dataset has no rows")
    artifacts.check_dimension_tables(config, manifest)
    spec = plan.spec
    owns = runtime is None
    # Never the run's own cluster section: a run directory must not choose where code runs.
    runtime = as_runtime(runtime) or plan.start_cluster()
    try:
        plan = plan.with_threads(runtime.threads)  # one big file to score: every worker thread busy
        spec = plan.spec
        plan.check_expressions(runtime.backend)
        with atomic_directory(output) as tmp:
            (tmp / QUARANTINE_DIR).mkdir()
            client = runtime.client
            dim_frames = (
                named_delayed("predict-dimension-tables", plan.dimension_frames(runtime.backend))
                if plan.dimensions
                else []
            )
            raw = plan.read(runtime.backend)
            name = task_names(f"predict-{model}", plan.source.fingerprint, str(tmp))
            # Drift: each partition, prepared once for its predictions, is also counted into
            # the reference's bins; only those sums come back.
            layout = named_delayed("predict-drift-layout", layout_of(reference)) if reference else None
            if engine == "onnxruntime":
                exported = _exported_model(run_dir, model, precision, storage_options)
                client.register_plugin(ExportedSessions())
                model_f = scatter_named(client, f"predict-onnx-{model}", exported)
                tasks = [
                    dask.delayed(score_exported_partition, pure=False)(
                        part,
                        spec,
                        dim_frames,
                        exported=model_f,
                        keep_columns=preprocessor.keep_columns,
                        output=tmp,
                        index=i,
                        drift_layout=layout,
                        dask_key_name=name(i),
                    )
                    for i, part in enumerate(raw.to_delayed())
                ]
            else:
                payload_f = scatter_named(client, f"predict-model-{model}", payload)
                tasks = [
                    dask.delayed(predict_partition, pure=False)(
                        part,
                        spec,
                        dim_frames,
                        preprocessor=preprocessor,
                        predictor=FAMILIES[model].predictor(),
                        payload=payload_f,
                        output=tmp,
                        index=i,
                        drift_layout=layout,
                        explain=FAMILIES[model].explain if explain else None,
                        dask_key_name=name(i),
                    )
                    for i, part in enumerate(raw.to_delayed())
                ]
            counts = progress.compute(client, tasks, f"predict ({model})")
            report = None
            if reference:
                measured = functools.reduce(combine_drift_counts, [c.pop("drift") for c in counts])
                report = drift_report(
                    reference, measured, psi_threshold=psi_threshold, unseen_threshold=unseen_threshold
                )
                record_drift(report, tmp, fail=fail_on_drift, output=output)
    finally:
        if owns:
            runtime.close()
    rows = sum(c["rows"] for c in counts)
    quarantined = sum(c["quarantined"] for c in counts)
    seconds = time.perf_counter() - started
    logger.info(
        "predict: %d rows scored with %s (%d quarantined) in %.1fs → %s", rows, model, quarantined, seconds, output
    )
    return PredictResult(output, model, rows, quarantined, seconds, drift=report)


def _exported_model(run_dir: Path, model: str, precision: str, storage_options: dict | None = None) -> tuple:
    """``(model bytes, metadata)`` of the run's ``model`` exported as ONNX (checked against
    shardflow's predictions on validation rows), in a temporary directory."""
    import tempfile

    from shardflow.pipelines.serving.export import export

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        export(
            run_dir, out, model=model, quantize="int8" if precision == "int8" else None, storage_options=storage_options
        )
        name = INT8_FILE if precision == "int8" else MODEL_FILE
        return (out / name).read_bytes(), json.loads((out / METADATA_FILE).read_text())
