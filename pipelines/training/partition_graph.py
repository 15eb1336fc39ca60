"""Per-partition models: one model per group of partitions, trained where the data is, for
every per-partition family of a job in one graph."""

from __future__ import annotations

import logging
import time

from shardflow.cluster.factory import Runtime
from shardflow.pipelines.interface import progress
from shardflow.pipelines.setup.train_config import PartitionModelsConfig
from shardflow.pipelines.training.data import TrainingData, call_token

logger = logging.getLogger("shardflow.train")


def partition_groups(n_partitions: int, per_model: int) -> list:
    return [list(range(i, min(i + per_model, n_partitions))) for i in range(0, n_partitions, per_model)]


def trained_groups(data: TrainingData, cfg: PartitionModelsConfig) -> list:
    """The groups of partitions that get a model: those with training weight."""
    return [
        g
        for g in partition_groups(len(data.futures), cfg.partitions_per_model)
        if sum(data.train_weights[i] for i in g) > 0
    ]


def one_model_of(
    runtime: Runtime, data: TrainingData, cfg: PartitionModelsConfig, state: dict, *, predict, keys
) -> dict:
    """A per-partition family's result when its one group of partitions holds every training
    row: its one model is its global counterpart's (``state``: that family's trained record;
    ``keys``: the record's entries that make the model), scored on the group's own validation
    rows like any member (``predict(model, x)`` on a worker, ``model`` those entries and the
    record's ``spec``)."""
    from shardflow.pipelines.graph import scatter_named
    from shardflow.tasks.models import group_validation

    (group,) = trained_groups(data, cfg)
    started = time.perf_counter()
    model = {k: state[k] for k in (*keys, "spec") if k in state}  # what predict reads, sent once
    validation = runtime.client.submit(
        group_validation,
        *[data.futures[i] for i in group],
        predict=predict,
        payload=scatter_named(runtime.client, "train-one-model", model, broadcast=False),
        scoring=data.scoring,
        key=f"train-one-model-validation-{call_token(data.token)}",
        pure=False,
    ).result()
    rows = sum(data.train_rows[i] for i in group)
    member = {
        **{k: state[k] for k in keys},
        "history": state.get("history", {}),
        "rows": rows,
        "weight": float(sum(data.train_weights[i] for i in group)),
        "seconds": float(state.get("seconds", 0.0)),
        "validation": validation,
    }
    return {
        "groups": [group],
        "weights": [member["weight"]],
        "members": [member],
        "seconds": time.perf_counter() - started,
        "partition_metrics": [partition_model_metrics(group, rows, validation)],
    }


def train_partition_models(runtime: Runtime, data: TrainingData, cfg: PartitionModelsConfig, jobs: dict) -> dict:
    """Train one model per group of partitions, for several families in one graph.

    Each task runs on the worker that holds its partitions (its only inputs), with no
    communication; the families' models train side by side, so the workers stay busy.
    Groups with no training weight (no rows, or rows that all weigh 0) get no model. The
    ensembles average their members weighted by training weight (rows, or the sum of
    the sample weights).

    Parameters
    ----------
    jobs : dict
        ``{family name: (task, kwargs_of_group)}``: ``task(*shards, **kwargs_of_group(g))``
        trains the model of group ``g`` (see :mod:`shardflow.tasks.models`).

    Returns
    -------
    dict
        Per family: ``groups``, ``weights`` (training weight), ``members``, ``seconds``
        and ``partition_metrics``.
    """
    client = runtime.client
    groups = trained_groups(data, cfg)
    if len(groups) == 1:
        logger.warning(
            "%s: the training rows are one group of %d partition(s): one model each, trained once on "
            "all of them (nothing to combine); lower input.max_partition_rows or "
            "train.partitions.partitions_per_model for several",
            ", ".join(jobs),
            len(groups[0]),
        )
    token = call_token(data.token)
    pending = {}
    for name, (task, kwargs_of_group) in jobs.items():
        for gi, group in enumerate(groups):
            pending[(name, gi)] = client.submit(
                task,
                *[data.futures[i] for i in group],
                **kwargs_of_group(gi),
                key=f"train-{name.replace('_', '-')}-{token}-{gi}",
                pure=False,
            )
    started = time.perf_counter()
    results = dict(zip(pending, progress.compute(client, list(pending.values()), f"train {', '.join(jobs)}")))
    wall = time.perf_counter() - started
    out = {}
    for name in jobs:
        members = [results[(name, gi)] for gi in range(len(groups))]
        out[name] = {
            "groups": groups,
            "weights": [m["weight"] for m in members],
            "members": members,
            # Training time of the family alone: its models' seconds spread over the workers
            # (the families train side by side, so the shared wall time would count both).
            "seconds": wall
            if len(jobs) == 1
            else sum(m["seconds"] for m in members) / max(1, min(len(members), len(set(data.workers)))),
            "partition_metrics": [
                partition_model_metrics(g, m["rows"], m["validation"]) for g, m in zip(groups, members)
            ],
        }
    return out


def partition_model_metrics(partitions: list, train_rows: int, validation: dict) -> dict:
    """One per-partition model's entry of the report: its partitions, training rows, and
    metrics on its own validation rows (whose count the metrics' ``rows`` is)."""
    return {
        "partitions": partitions,
        **validation,
        "train_rows": train_rows,
        "validation_rows": validation.get("rows", 0),
    }
