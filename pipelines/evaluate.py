"""Distributed evaluation on the validation split, and the model comparison table.

Each partition scores every model on its own validation rows, on the worker that holds
them, and returns fixed-size metric sums (:mod:`shardflow.tasks.metrics`); the sums are
added in a tree on the cluster. No prediction vector is gathered anywhere.
"""

from __future__ import annotations

import math
import time

import numpy as np

from shardflow.pipelines import progress
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.training import TrainingData, call_token
from shardflow.tasks.models import worker_threads
from shardflow.tasks.metrics import combine_metrics, curves, finish_metrics, partial_metrics

MODEL_LABELS = {
    "xgboost": "global XGBoost (allreduce)",
    "xgboost_partitions": "per-partition XGBoost ensemble",
    "stacked": "stacked ensemble",
    "mlp": "data-parallel MLP",
    "mlp_partitions": "per-partition MLP ensemble",
}


def _evaluate_partition(shard, payloads, task, residual_range):
    from shardflow.tasks.models import (
        predict_payload,
        stack_inputs,
        stack_predict,
        weighted_average,
        xgboost_predict,
    )

    threads = worker_threads()
    x, n = shard.x_valid, len(shard.y_valid)
    members = None
    partials = {}
    for name, payload in payloads.items():
        if name in ("xgboost_partitions", "stacked"):
            if members is None:  # shared by both: each member predicts once
                members = [xgboost_predict(m, x, threads) for m in payload["models"]]
            if name == "xgboost_partitions":
                p = weighted_average(members, payload["weights"]) if n else np.zeros(0)
            else:
                # Out-of-fold: even rows scored by the fit on odd rows and vice versa.
                p = np.zeros(n)
                if n:
                    design = stack_inputs(members, task)
                    even = np.arange(n) % 2 == 0
                    p[even] = stack_predict(payload["coef_odd"], design[even], task)
                    p[~even] = stack_predict(payload["coef_even"], design[~even], task)
        else:
            p = predict_payload(name, payload, x, threads)
        partials[name] = partial_metrics(shard.y_valid, p, task, residual_range)
    return partials


def _per_partition(partials, task):
    return {name: finish_metrics(part, task) for name, part in partials.items()}


def _combine_partials(a, b):
    return {name: combine_metrics(a[name], b[name]) for name in a}


def evaluate(runtime, data: TrainingData, payloads: dict, residual_range: float = 1.0) -> dict:
    """Validation metrics of every model, reduced across partitions.

    Parameters
    ----------
    payloads : dict
        ``{family: payload}`` as loaded by :func:`shardflow.pipelines.artifacts.load_model`.
        The stacked family is scored out-of-fold with its cross-fitted coefficients.
    residual_range : float
        Half-width of the residual histogram (regression), in target units.

    Returns
    -------
    dict
        ``{"metrics": {family: {...}}, "partition_metrics": {family: [...]}, "seconds"}``.
    """
    client = runtime.client
    started = time.perf_counter()
    token = call_token(data.token)
    payloads_f = scatter_named(client, "evaluate-models", payloads)
    partials = []
    for i, f in enumerate(data.futures):
        partials.append(client.submit(_evaluate_partition, f, payloads_f, data.task, residual_range, key=f"evaluate-partition-{token}-{i}", pure=False))
    per_partition = [client.submit(_per_partition, p, data.task, key=f"evaluate-partition-metrics-{token}-{i}")
                     for i, p in enumerate(partials)]
    total = tree_reduce_futures(client, partials, _combine_partials, f"evaluate-combine-{token}")
    *per_partition, total = progress.compute(client, [*per_partition, total], "evaluate")
    metrics = {name: finish_metrics(total[name], data.task) for name in payloads}
    plots = {name: curves(total[name], data.task, residual_range=residual_range) for name in payloads}
    partition_metrics = {name: [{"partition": i, **pm[name]} for i, pm in enumerate(per_partition)]
                         for name in payloads}
    return {"metrics": metrics, "partition_metrics": partition_metrics, "curves": plots,
            "seconds": time.perf_counter() - started}


def comparison_table(metrics: dict, train_seconds: dict, task: str) -> str:
    """A Markdown table: every model's validation quality and training time."""
    cols = ["auc", "logloss", "accuracy"] if task == "classification" else ["rmse", "mae", "r2"]
    lines = ["| model | " + " | ".join(cols) + " | train s |", "|---|" + "---:|" * (len(cols) + 1)]
    for name, m in metrics.items():
        values = [f"{m.get(c, math.nan):.4f}" for c in cols]
        lines.append(f"| {MODEL_LABELS.get(name, name)} | " + " | ".join(values) +
                     f" | {train_seconds.get(name, math.nan):.1f} |")
    return "\n".join(lines)
