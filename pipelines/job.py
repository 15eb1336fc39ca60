"""Whole jobs: ``train`` and ``evaluate`` stages, and ``run`` = ETL + train + evaluate."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from shardflow.cluster.factory import Runtime, start
from shardflow.cluster.memory import peak_memory, reset_peak_memory
from shardflow.pipelines import artifacts
from shardflow.pipelines.config import Config
from shardflow.pipelines.evaluate import comparison_table, evaluate
from shardflow.pipelines.report import build_report
from shardflow.pipelines.rundir import stage_output, update_manifest
from shardflow.pipelines.train import (
    fit_stacker,
    load_training_data,
    mlp_optim_for,
    mlp_spec_for,
    train_data_parallel_mlp,
    train_global_xgboost,
    train_partition_models,
    xgboost_params,
)
from shardflow.tasks.metrics import metric_direction, primary_metric

logger = logging.getLogger("shardflow.job")


@dataclass
class TrainResult:
    """What :func:`train` produced: per-family results and training seconds."""

    run_dir: Path
    results: dict
    seconds: dict
    peak_memory: dict
    data: object = None

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / artifacts.TRAIN_DIR


@dataclass
class RunResult:
    """What :func:`run` produced."""

    run_dir: Path
    metrics: dict
    table: str
    train_seconds: dict
    etl: object = None
    partition_metrics: dict = field(default_factory=dict)
    peak_memory: dict = field(default_factory=dict)


def train(config: Config, runtime: Runtime, run_dir, xgboost_callbacks=()) -> TrainResult:
    """Train the families listed in ``config.train.models`` on a run's ETL output.

    Parameters
    ----------
    config : Config
    runtime : Runtime
    run_dir : path
        A run directory holding a completed ``etl`` stage.
    xgboost_callbacks : sequence of xgboost.callback.TrainingCallback
        Extra callbacks for the global model (run on the workers).

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> result = train(config, runtime, "shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> result.seconds["xgboost"]  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    tc = config.train
    reset_peak_memory(runtime.client)
    data = load_training_data(runtime, run_dir / "etl", tc.seed)
    logger.info("train: %d partitions on %d workers, %d training and %d validation rows", len(data.futures),
                len(set(data.workers)), sum(data.train_rows), sum(data.valid_rows))
    results, seconds = {}, {}
    params = xgboost_params(data.task, tc.xgboost, runtime.backend, tc.seed)
    if "xgboost" in tc.models:
        results["xgboost"] = train_global_xgboost(runtime, data, tc.xgboost, run_dir / "checkpoints" / "xgboost",
                                                  tc.seed, xgboost_callbacks)
        seconds["xgboost"] = results["xgboost"]["seconds"]
    spec = mlp_spec_for(data.preprocessor, tc.mlp)
    optim = mlp_optim_for(tc.mlp, runtime.backend)
    families = [f for f in ("xgboost_partitions", "mlp_partitions") if f in tc.models]
    if families:
        # Both families in one graph: the workers stay busy while the other family's models train.
        trained = train_partition_models(runtime, data, tc.partitions, families, params, spec, optim,
                                         tc.mlp.lr_schedule, tc.xgboost.categorical, tc.seed)
        for family, out in trained.items():
            out["spec"] = spec
            results[family] = out
            seconds[family] = out["seconds"]
            logger.info("%s: %d models, %.1fs", family, len(out["members"]), out["seconds"])
    if "stacked" in tc.models:
        stack = fit_stacker(runtime, data, [m["model"] for m in results["xgboost_partitions"]["members"]])
        results["stacked"] = stack
        seconds["stacked"] = seconds["xgboost_partitions"] + stack["seconds"]
    if "mlp" in tc.models:
        results["mlp"] = train_data_parallel_mlp(runtime, data, tc.mlp, tc.seed)
        seconds["mlp"] = results["mlp"]["seconds"]
    with stage_output(run_dir, artifacts.TRAIN_DIR) as tmp:
        artifacts.save_models(tmp, results, data.task)
        (tmp / "seconds.json").write_text(json.dumps(seconds, indent=1))
    peaks = peak_memory(runtime.client)
    hashes = artifacts.artifact_hashes(run_dir, artifacts.TRAIN_DIR)
    hashes["etl/preprocessor.json"] = artifacts.sha256(run_dir / "etl" / "preprocessor.json")
    update_manifest(run_dir, artifacts=hashes, seeds={"split": config.split.seed, "train": tc.seed},
                    stages={"train": {"completed": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": list(results),
                                      "seconds": {k: round(v, 3) for k, v in seconds.items()}}})
    return TrainResult(run_dir, results, seconds, peaks, data)


def evaluate_run(runtime: Runtime, run_dir, trained: TrainResult) -> dict:
    """Evaluate every trained family, loaded back from disk (so what is scored is what is saved)."""
    run_dir = Path(run_dir)
    names = list(trained.results)
    payloads = {name: artifacts.load_model(run_dir, name) for name in names}
    stack = trained.results.get("stacked")
    summary = json.loads((run_dir / "etl" / "summary.json").read_text())
    out = evaluate(runtime, trained.data, payloads, stack, residual_range=4 * (summary.get("target_std") or 1.0))
    task = trained.data.task
    table = comparison_table(out["metrics"], trained.seconds, task)
    with stage_output(run_dir, "evaluate") as tmp:
        (tmp / "metrics.json").write_text(json.dumps({
            "task": task, "metrics": out["metrics"], "train_seconds": trained.seconds,
            "partition_metrics": out["partition_metrics"], "curves": out["curves"],
            "partition_models": {f: trained.results[f]["partition_metrics"] for f in names if f.endswith("partitions")},
            "peak_memory": trained.peak_memory}, indent=1, default=float))
        (tmp / "comparison.md").write_text(table + "\n")
    update_manifest(run_dir, stages={"evaluate": {"completed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                  "seconds": round(out["seconds"], 3)}})
    return {**out, "table": table}


def best_model(metrics: dict, task: str) -> str:
    """The family with the best primary validation metric (AUC or RMSE)."""
    key = primary_metric(task)
    sign = 1 if metric_direction(key) == "max" else -1
    return max(metrics, key=lambda name: sign * metrics[name].get(key, float("-inf") * sign))


def run(config: Config, runtime: Runtime | None = None, run_dir=None) -> RunResult:
    """ETL, training of the configured models and evaluation, in one run directory.

    Examples
    --------
    >>> from shardflow.pipelines.config import load_config
    >>> result = run(load_config("job.yaml"))  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
    """
    from shardflow.pipelines.etl import etl

    owns = runtime is None
    runtime = runtime or start(config.cluster)
    try:
        etl_result = etl(config, runtime=runtime, run_dir=run_dir)
        trained = train(config, runtime, etl_result.run_dir)
        evaluated = evaluate_run(runtime, etl_result.run_dir, trained)
        build_report(etl_result.run_dir)
    finally:
        if owns:
            runtime.close()
    from dask.utils import format_bytes

    logger.info("run done: %s; peak worker memory in training %s", etl_result.run_dir,
                ", ".join(format_bytes(v) for v in trained.peak_memory.values()))
    return RunResult(etl_result.run_dir, evaluated["metrics"], evaluated["table"], trained.seconds, etl_result,
                     evaluated["partition_metrics"], trained.peak_memory)
