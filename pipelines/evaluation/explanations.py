"""The evaluation's explanations: every XGBoost model's exact feature contributions
(TreeSHAP, by XGBoost, on a seeded sample of 200 to 1,000 validation rows split across the
partitions, as many as a budget of TreeSHAP work affords the model:
:func:`~shardflow.tasks.explain.explained_rows`) and every other model's permutation
importance (on 20,000 rows split likewise, fewer for an ensemble:
:func:`~shardflow.tasks.explain.explain_rows`), on the validation split, computed where its
partitions are and reduced on the cluster (:mod:`shardflow.tasks.explain`).

Written as ``evaluate/explanations.json``: per family, the mean absolute contribution of each
feature (in the model's margin units) with a sample of (value, contribution) pairs per
feature, or the drop of the primary validation metric with each feature's values permuted.
Features are named as the run's preprocessor names them (datetime parts, derived and joined
columns as the config names them).
"""

from __future__ import annotations

import numpy as np

from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.interface import progress
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.explain import (
    PERMUTATION_ROWS,
    combine_explanations,
    combine_permutations,
    explain_partition,
    explain_rows,
    explained_rows,
    permutation_importance,
    permutation_partials,
    treeshap_row_cost,
)
from shardflow.tasks.metrics import primary_metric


def explain(runtime, data: TrainingData, payloads: dict, *, seed: int = 0) -> dict:
    """``{family: explanation}`` for every model in ``payloads`` (see the module docstring)."""
    client = runtime.client
    token = call_token(f"{data.token}-explain")
    contributions = {n: (FAMILIES[n].explain, p) for n, p in payloads.items() if FAMILIES[n].explain is not None}
    permuted = {n: (FAMILIES[n].predictor(), p) for n, p in payloads.items() if FAMILIES[n].explain is None}
    pending = {}
    if contributions:
        explainers = scatter_named(client, "evaluate-explain-models", contributions)
        rows = _contribution_rows(contributions, len(data.futures))  # each model's cost read once
        parts = [
            client.submit(
                explain_partition,
                f,
                explainers,
                seed=seed + i,
                rows=rows,
                key=f"evaluate-explain-partition-{token}-{i}",
            )
            for i, f in enumerate(data.futures)
        ]
        pending["contributions"] = tree_reduce_futures(client, parts, combine_explanations, f"evaluate-explain-{token}")
    if permuted:
        predictors = scatter_named(client, "evaluate-permute-models", permuted)
        parts = [
            client.submit(
                permutation_partials,
                f,
                predictors,
                data.scoring,
                seed=seed + i,
                rows=_rows(permuted, len(data.futures), PERMUTATION_ROWS),
                key=f"evaluate-permute-partition-{token}-{i}",
            )
            for i, f in enumerate(data.futures)
        ]
        pending["permutation"] = tree_reduce_futures(client, parts, combine_permutations, f"evaluate-permute-{token}")
    done = dict(zip(pending, progress.compute(client, list(pending.values()), "explain")))
    features = list(data.feature_names)
    out = {}
    for name, found in done.get("contributions", {}).items():
        out[name] = contribution_summary(found, features, data.classes if data.scoring.classes > 2 else 0)
    metric = primary_metric(data.task)
    for name, sums in done.get("permutation", {}).items():
        importance = permutation_importance(sums, data.scoring)
        out[name] = {"kind": "permutation", "metric": metric, "importance": dict(zip(features, importance))}
    return {name: out[name] for name in payloads if name in out}


def _contribution_rows(explained: dict, partitions: int) -> dict:
    """Rows per partition for each XGBoost family (``{name: (function, payload)}``), by the
    TreeSHAP cost of a row: the model's, the sum of an ensemble's members', the costliest of
    per-group models (each row is explained by one)."""
    out = {}
    for name, (_, payload) in explained.items():
        if "model" in payload:
            cost = treeshap_row_cost(payload["model"])
        else:
            costs = [treeshap_row_cost(m) for m in [*payload["models"], *filter(None, [payload.get("fallback")])]]
            cost = max(costs, default=0) if "keys" in payload else sum(costs)
        out[name] = explained_rows(cost, partitions)
    return out


def _rows(explained: dict, partitions: int, total: int) -> dict:
    """Rows per partition for each family (``{name: (function, payload)}``): an ensemble's
    budget is shared by its member models (``payload["models"]``)."""
    return {
        name: explain_rows(partitions, total, members=len(payload.get("models") or ()) or 1)
        for name, (_, payload) in explained.items()
    }


def contribution_summary(found, features: list, classes: int) -> dict:
    """One family's reduced contributions as the report shows them: the mean absolute
    contribution per feature (summed over classes for a multi-class model) and up to 2,000
    sampled rows' (value, contribution) per feature (a multi-class model's toward the
    sample rows' largest class score)."""
    rows = max(found.rows, 1)
    mean_abs = found.abs_sum / rows
    sample_c = found.sample_c
    if mean_abs.ndim == 2:  # (classes, features + 1)
        by_class = mean_abs[:, :-1]
        mean_abs = mean_abs.sum(axis=0)
        sample_c = (
            sample_c[np.arange(len(sample_c)), np.argmax(sample_c.sum(axis=2), axis=1)] if len(sample_c) else sample_c
        )
    keep = slice(0, 2_000)
    summary = {
        "kind": "contributions",
        "units": "margin",
        "rows": int(found.rows),
        "mean_abs": dict(zip(features, mean_abs[:-1].tolist())),
        "mean_abs_bias": float(mean_abs[-1]),
        "sample": {
            feature: {"value": found.sample_x[keep, j].tolist(), "contribution": sample_c[keep, j].tolist()}
            for j, feature in enumerate(features)
        },
    }
    if classes:
        summary["mean_abs_by_class"] = by_class.tolist()
    return summary
