"""Evaluation of every model on one partition's validation rows, as fixed-size metric sums."""

from __future__ import annotations

from shardflow.core.threads import worker_threads
from shardflow.tasks.metric_sums import combine_metrics
from shardflow.tasks.metrics import finish_metrics, partial_metrics


def evaluate_partition(shard, predictors: dict, scoring) -> dict:
    """``{family: partial metric sums}`` on this partition's validation rows.

    ``predictors`` maps each family to ``(predict, payload)``; families built on the same
    member models share one prediction of each member (the ``cache``).
    """
    threads = worker_threads()
    cache: dict = {}
    return {
        name: partial_metrics(shard.y_valid, predict(payload, shard.x_valid, threads, cache), scoring, shard.w_valid)
        for name, (predict, payload) in predictors.items()
    }


def finish_partition(partials: dict, scoring) -> dict:
    """One partition's metrics per family, from its sums (the scalar ones: per-class lists
    and confusion matrices are reported for the whole validation split only)."""
    return {
        name: {k: v for k, v in finish_metrics(part, scoring).items() if not isinstance(v, (list, dict))}
        for name, part in partials.items()
    }


def combine_partitions(a: dict, b: dict) -> dict:
    """Sum two partitions' (or subtrees') metric sums, family by family (associative)."""
    return {name: combine_metrics(a[name], b[name]) for name in a}
