"""Distributed evaluation on the validation split, and the model comparison table.

Each partition scores every model on its own validation rows, on the worker that holds
them, and returns fixed-size metric sums (:mod:`shardflow.tasks.metrics`); the sums are
added in a tree on the cluster. No prediction vector is gathered anywhere.
"""

from __future__ import annotations

import math
import time

from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.families.specs import label
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.interface import progress
from shardflow.pipelines.training import TrainingData, call_token
from shardflow.tasks.evaluation import combine_partitions, evaluate_partition, finish_partition
from shardflow.tasks.metrics import curves, finish_metrics
from shardflow.tasks.targets import target_kind


def evaluate(runtime, data: TrainingData, payloads: dict) -> dict:
    """Validation metrics of every model, reduced across partitions.

    Parameters
    ----------
    payloads : dict
        ``{family: payload}`` as loaded by :func:`shardflow.pipelines.records.trained_models.load_model`.
        The stacked family is scored out-of-fold with its cross-fitted coefficients.
        Metrics are weighted by the sample weights and in the target's units
        (``data.scoring``).

    Returns
    -------
    dict
        ``{"metrics": {family: {...}}, "partition_metrics": {family: [...]}, "seconds"}``.
    """
    client = runtime.client
    started = time.perf_counter()
    token = call_token(data.token)
    predictors = {name: (FAMILIES[name].validation_predictor(), payload) for name, payload in payloads.items()}
    predictors_f = scatter_named(client, "evaluate-models", predictors)
    scoring = data.scoring
    partials = [
        client.submit(evaluate_partition, f, predictors_f, scoring, key=f"evaluate-partition-{token}-{i}")
        for i, f in enumerate(data.futures)
    ]
    per_partition = [
        client.submit(finish_partition, p, scoring, key=f"evaluate-partition-metrics-{token}-{i}")
        for i, p in enumerate(partials)
    ]
    total = tree_reduce_futures(client, partials, combine_partitions, f"evaluate-combine-{token}")
    *per_partition, total = progress.compute(client, [*per_partition, total], "evaluate")
    metrics = {name: finish_metrics(total[name], scoring) for name in payloads}
    plots = {name: curves(total[name], scoring) for name in payloads}
    partition_metrics = {
        name: [{"partition": i, **pm[name]} for i, pm in enumerate(per_partition)] for name in payloads
    }
    return {
        "metrics": metrics,
        "partition_metrics": partition_metrics,
        "curves": plots,
        "seconds": time.perf_counter() - started,
    }


def comparison_table(metrics: dict, train_seconds: dict, task: str) -> str:
    """A Markdown table: every model's validation quality and training time."""
    cols = target_kind(task).columns
    lines = ["| model | " + " | ".join(cols) + " | train s |", "|---|" + "---:|" * (len(cols) + 1)]
    for name, m in metrics.items():
        values = [f"{m.get(c, math.nan):.4f}" for c in cols]
        lines.append(f"| {label(name)} | " + " | ".join(values) + f" | {train_seconds.get(name, math.nan):.1f} |")
    return "\n".join(lines)
