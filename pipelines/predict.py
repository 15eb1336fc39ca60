"""Batch inference: a run's saved preprocessing and a chosen model, partition by partition."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np

from shardflow.cluster.factory import Runtime, start
from shardflow.pipelines import artifacts, progress
from shardflow.pipelines.config import load_config
from shardflow.pipelines.graph import named_delayed, scatter_named, task_names
from shardflow.pipelines.job import best_model
from shardflow.pipelines.rundir import atomic_directory, read_manifest
from shardflow.pipelines.source import (
    dimension_frames,
    inspect_source,
    load_dimensions,
    prepared_meta,
    read_source,
    table_spec,
)
from shardflow.tasks.models import worker_threads
from shardflow.tasks import backend
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.errors import InputError, ShardflowError
from shardflow.tasks.prepare import prepare_partition

logger = logging.getLogger("shardflow.predict")

PREDICTION = "prediction"
LABEL = "predicted_label"
QUARANTINE_DIR = "_quarantine"


@dataclass
class PredictResult:
    output: Path
    model: str
    rows: int
    quarantined: int
    seconds: float


def predict_partition(raw, spec, dimensions, preprocessor: Preprocessor, name: str, payload: dict,
                      output: str, index: int) -> dict:
    """Prepare, transform and score one input partition; write its predictions (and quarantine)."""
    from shardflow.tasks.models import predict_payload

    prepared = prepare_partition(raw, spec, dimensions)
    features, quarantine = prepared.features, prepared.quarantine
    table = preprocessor.transform(features)
    x = backend.to_host_array(table[preprocessor.feature_names], np.float32)
    scores = predict_payload(name, payload, x, worker_threads())
    out = backend.to_pandas(table[list(preprocessor.keep_columns)]).reset_index(drop=True) \
        if preprocessor.keep_columns else None
    import pandas as pd

    out = pd.DataFrame(index=range(len(scores))) if out is None else out
    out[PREDICTION] = scores
    if preprocessor.task == "classification":
        out[LABEL] = (scores >= 0.5).astype(np.int8)
    part = f"part-{index:05d}.parquet"
    backend.write_parquet(out, str(Path(output) / part))
    if len(quarantine):
        backend.write_parquet(quarantine, str(Path(output) / QUARANTINE_DIR / part))
    return {"rows": len(out), "quarantined": len(quarantine)}


def predict(run_dir, input_path, output_path, model: str | None = None, runtime: Runtime | None = None,
            overwrite: bool = False) -> PredictResult:
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
        run's ``keep_columns``, ``prediction`` and, for classification,
        ``predicted_label``); rows quarantined as in the ETL go to ``_quarantine/``.
        It appears only when complete.
    model : str, optional
        Model family; default the best one of the run's evaluation.

    Examples
    --------
    >>> predict("runs/20261122-101500-ab12cd", "new/*.csv", "scores/")  # doctest: +SKIP
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if "train" not in manifest.get("stages", {}):
        raise ShardflowError(f"--run {run_dir}: not a finished run (no train stage in its manifest.json)")
    output = Path(output_path).expanduser().resolve()
    if output.exists() and not overwrite:
        raise ShardflowError(f"--output {output}: already exists; choose another path or pass --overwrite")
    # Every file read below is checked against the manifest's hashes first: a shared run
    # directory edited after the run is refused, never executed.
    if model is None:
        metrics = json.loads(artifacts.verified_path(run_dir, "evaluate/metrics.json", manifest).read_text())
        model = best_model(metrics["metrics"], metrics["task"])
    payload = artifacts.load_model(run_dir, model)
    preprocessor = Preprocessor.from_json(
        artifacts.verified_path(run_dir, "etl/preprocessor.json", manifest).read_text())
    config_path = artifacts.verified_path(run_dir, "config.yaml", manifest)
    input_abs = str(Path(input_path).expanduser().resolve()) if not any(c in str(input_path) for c in "*?[") \
        else os.path.abspath(os.path.expanduser(str(input_path)))
    config = load_config(config_path, [f"input.path={json.dumps(input_abs)}", "input.format=auto"])
    source = inspect_source(config)
    if source.rows == 0:
        raise InputError(f"--input {input_path}: the dataset has no rows")
    dims = load_dimensions(config, source)
    spec = table_spec(config, source, dims, for_prediction=True)
    owns = runtime is None
    runtime = runtime or start(config.cluster)
    try:
        prepared_meta(source, spec, dims, runtime.backend)
        with atomic_directory(output) as tmp:
            (tmp / QUARANTINE_DIR).mkdir()
            client = runtime.client
            dim_frames = named_delayed("predict-dimension-tables", dimension_frames(dims, runtime.backend)) \
                if dims else []
            payload_f = scatter_named(client, f"predict-model-{model}", payload)
            raw = read_source(config, runtime.backend, source, spec)
            name = task_names(f"predict-{model}", source.fingerprint, str(tmp))
            tasks = [dask.delayed(predict_partition, pure=False)(part, spec, dim_frames, preprocessor, model,
                                                                 payload_f, str(tmp), i, dask_key_name=name(i))
                     for i, part in enumerate(raw.to_delayed())]
            counts = progress.compute(client, tasks, f"predict ({model})")
    finally:
        if owns:
            runtime.close()
    rows = sum(c["rows"] for c in counts)
    quarantined = sum(c["quarantined"] for c in counts)
    seconds = time.perf_counter() - started
    logger.info("predict: %d rows scored with %s (%d quarantined) in %.1fs → %s", rows, model, quarantined,
                seconds, output)
    return PredictResult(output, model, rows, quarantined, seconds)
