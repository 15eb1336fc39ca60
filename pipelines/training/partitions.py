"""Per-partition models: one model per group of partitions, trained where the data is."""

from __future__ import annotations

import logging
import time

from shardflow.cluster.factory import Runtime
from shardflow.pipelines import progress
from shardflow.pipelines.rundir import RunDir
from shardflow.pipelines.train_config import PartitionModelsConfig
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.mlp_steps import train_group_mlp
from shardflow.tasks.models import train_group_xgboost

logger = logging.getLogger("shardflow.train")


def partition_groups(n_partitions: int, per_model: int) -> list:
    return [list(range(i, min(i + per_model, n_partitions))) for i in range(0, n_partitions, per_model)]


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
    groups = [
        g
        for g in partition_groups(len(data.futures), cfg.partitions_per_model)
        if sum(data.train_weights[i] for i in g) > 0
    ]
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


# ----------------------------------------------------------------------------- as model families


def xgboost_job(context, family):
    """One XGBoost model per group: the global model's parameters and early stopping (on the
    group's own validation rows), at most ``partitions.xgboost_rounds`` rounds.

    Returns ``(task, kwargs_of_group, extra)``: ``extra`` joins the family's result.
    """
    from shardflow.pipelines.training.xgboost_global import xgboost_params

    data, tc = context.data, context.config
    params = xgboost_params(data.task, tc.xgboost, context.runtime.backend, tc.seed, classes=data.classes)
    kwargs = dict(
        params=params,
        rounds=tc.partitions.xgboost_rounds,
        feature_names=data.feature_names,
        feature_types=data.feature_types(tc.xgboost.categorical),
        scoring=data.scoring,
        early_stopping_rounds=tc.xgboost.early_stopping_rounds,
    )
    return train_group_xgboost, lambda group: kwargs, {}


def mlp_job(context, family):
    """One MLP per group, trained locally for ``partitions.mlp_epochs`` epochs, or (null) by
    ``train.mlp``'s step budget with early stopping on the group's own validation rows."""
    from shardflow.pipelines.training.mlp_setup import mlp_optim_for, mlp_spec_for

    tc = context.config
    spec, optim = mlp_spec_for(context.data.preprocessor, tc.mlp), mlp_optim_for(tc.mlp, context.runtime.backend)
    return (
        train_group_mlp,
        lambda group: dict(
            spec=spec,
            optim=optim,
            epochs=tc.partitions.mlp_epochs,
            seed=tc.seed * 7919 + group,
            schedule=tc.mlp.lr_schedule,
            scoring=context.data.scoring,
            max_steps=tc.mlp.max_steps,
            patience=tc.mlp.early_stopping_patience,
        ),
        {"spec": spec},
    )


def _save_members(stage_dir, family, result: dict, suffix: str, write) -> None:
    from shardflow.pipelines.artifacts import write_json

    RunDir.train_file(stage_dir, family.name).mkdir()
    for i, member in enumerate(result["members"]):
        write(member, RunDir.train_file(stage_dir, family.member_file(i, suffix)))
    meta = {k: result[k] for k in ("groups", "weights", "seconds", "partition_metrics")}
    meta["histories"] = [member.get("history", {}) for member in result["members"]]
    if "spec" in result:
        meta["spec"] = result["spec"].to_dict()
    write_json(RunDir.train_file(stage_dir, family.file("json")), meta)


def save_boosters(stage_dir, family, result: dict) -> None:
    _save_members(stage_dir, family, result, "ubj", lambda member, path: path.write_bytes(member["model"]))


def load_boosters(files, family) -> dict:
    meta = files.read_json(files.run.trained(family.file()))
    models = [files.read_bytes(files.run.trained(family.member_file(i, "ubj"))) for i in range(len(meta["weights"]))]
    return {"models": models, "weights": meta["weights"], "members": family.name}


def save_mlps(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.artifacts import save_weights

    _save_members(stage_dir, family, result, "pt", lambda member, path: save_weights(member["params"], path))


def load_mlps(files, family) -> dict:
    meta = files.read_json(files.run.trained(family.file()))
    params = [files.read_weights(files.run.trained(family.member_file(i, "pt"))) for i in range(len(meta["weights"]))]
    return {"spec": meta["spec"], "params": params, "weights": meta["weights"]}
