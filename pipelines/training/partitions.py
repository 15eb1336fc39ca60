"""Per-partition models: one model per group of partitions, trained where the data is."""

from __future__ import annotations

import time

from shardflow.cluster.factory import Runtime
from shardflow.pipelines import progress
from shardflow.pipelines.config import PartitionModelsConfig
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.mlp_steps import train_group_mlp
from shardflow.tasks.models import train_group_xgboost


def partition_groups(n_partitions: int, per_model: int) -> list:
    return [list(range(i, min(i + per_model, n_partitions))) for i in range(0, n_partitions, per_model)]


def train_partition_models(runtime: Runtime, data: TrainingData, cfg: PartitionModelsConfig, families,
                           xgb_params: dict, mlp_spec=None, mlp_optim=None, mlp_schedule: str = "constant",
                           categorical: bool = True, seed: int = 0) -> dict:
    """Train one model per group of partitions, in parallel, with no communication.

    Each task runs on the worker that holds its partition (its only input). Groups
    whose training rows are all gone (an empty partition) get no model.
    """
    client = runtime.client
    groups = [g for g in partition_groups(len(data.futures), cfg.partitions_per_model)
              if sum(data.train_rows[i] for i in g) > 0]
    out = {}
    pending = {}
    token = call_token(data.token)
    for family in families:
        for gi, group in enumerate(groups):
            args = [data.futures[i] for i in group]
            if family == "xgboost_partitions":
                fut = client.submit(train_group_xgboost, *args, params=xgb_params, rounds=cfg.xgboost_rounds,
                                    feature_names=data.feature_names, feature_types=data.feature_types(categorical),
                                    task=data.task, key=f"train-xgboost-partition-{token}-{gi}", pure=False)
            else:
                fut = client.submit(train_group_mlp, *args, spec=mlp_spec, optim=mlp_optim, epochs=cfg.mlp_epochs,
                                    seed=seed * 7919 + gi, schedule=mlp_schedule,
                                    key=f"train-mlp-partition-{token}-{gi}", pure=False)
            pending[(family, gi)] = fut
    started = time.perf_counter()
    results = dict(zip(pending, progress.compute(client, list(pending.values()), f"train {', '.join(families)}")))
    wall = time.perf_counter() - started
    for family in families:
        members = [results[(family, gi)] for gi in range(len(groups))]
        out[family] = {
            "groups": groups,
            "weights": [m["rows"] for m in members],
            "members": members,
            # Training time of the family alone: its models' seconds spread over the workers
            # (the families train side by side, so the shared wall time would count both).
            "seconds": wall if len(families) == 1 else sum(m["seconds"] for m in members) / max(
                1, min(len(members), len(set(data.workers)))),
            "partition_metrics": [partition_model_metrics(g, m["rows"], m["validation"])
                                  for g, m in zip(groups, members)],
        }
    return out


def partition_model_metrics(partitions: list, train_rows: int, validation: dict) -> dict:
    """One per-partition model's entry of the report: its partitions, training rows, and
    metrics on its own validation rows (whose count the metrics' ``rows`` is)."""
    return {"partitions": partitions, **validation, "train_rows": train_rows,
            "validation_rows": validation.get("rows", 0)}
