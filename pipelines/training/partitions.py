"""The built-in per-partition families' code: XGBoost and MLP models of one group of partitions each."""

from __future__ import annotations

import logging

from shardflow.pipelines.records.rundir import RunDir
from shardflow.tasks.mlp_steps import train_group_mlp
from shardflow.tasks.models import train_group_xgboost

logger = logging.getLogger("shardflow.train")


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


def group_seed(seed: int, group: int) -> int:
    """The seed of group ``group``'s per-partition MLP (``train.seed`` is ``seed``).

    Examples
    --------
    >>> group_seed(0, 0), group_seed(0, 3), group_seed(2, 1)
    (0, 3, 15839)
    """
    return seed * 7919 + group


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
            seed=group_seed(tc.seed, group),
            schedule=tc.mlp.lr_schedule,
            warmup=tc.mlp.warmup,
            scoring=context.data.scoring,
            max_steps=tc.mlp.max_steps,
            patience=tc.mlp.early_stopping_patience,
        ),
        {"spec": spec},
    )


def _save_members(stage_dir, family, result: dict, suffix: str, write) -> None:
    from shardflow.pipelines.records.artifacts import write_json

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
    from shardflow.pipelines.records.artifacts import save_weights

    _save_members(stage_dir, family, result, "pt", lambda member, path: save_weights(member["params"], path))


def load_mlps(files, family) -> dict:
    meta = files.read_json(files.run.trained(family.file()))
    params = [files.read_weights(files.run.trained(family.member_file(i, "pt"))) for i in range(len(meta["weights"]))]
    return {"spec": meta["spec"], "params": params, "weights": meta["weights"]}
