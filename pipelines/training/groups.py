"""Per-group models (``train.groups``): one XGBoost model per key group, balanced over the workers.

Each group's rows are gathered from every partition onto the worker that trains it, the
groups spread over the workers by rows (largest first, to the least loaded); no
partition layout is assumed, so the other families train on the same partitions.
"""

from __future__ import annotations

import logging
import operator
import time

from shardflow.pipelines.interface import progress
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.training.data import call_token
from shardflow.tasks.groups import group_row_counts, is_known, split_by_group, train_bucket_xgboost

logger = logging.getLogger("shardflow.train")


def balance(sizes: dict, n_buckets: int) -> dict:
    """``{key: bucket}``: the largest group first, each to the bucket with the fewest rows.

    Examples
    --------
    >>> balance({"a": 10, "b": 6, "c": 5, "d": 1}, 2)
    {'a': 0, 'b': 1, 'c': 1, 'd': 0}
    """
    loads = [0] * n_buckets
    out = {}
    for key, rows in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        bucket = loads.index(min(loads))
        out[key] = bucket
        loads[bucket] += rows
    return out


def describe_key(key: tuple, columns: list, preprocessor) -> str:
    """``store='S1', region='north'``: a group key in the input's values."""
    from shardflow.tasks.encode import FIRST_CODE, MISSING_CODE

    def value(col, code):
        if code == MISSING_CODE:
            return "missing"
        if code < FIRST_CODE:
            return "rare"
        return repr(preprocessor.vocabularies[col][code - FIRST_CODE])

    return ", ".join(f"{col}={value(col, code)}" for col, code in zip(columns, key))


def train_family(context, family) -> dict:
    """One XGBoost model per group of ``train.groups.partition_by`` with at least
    ``train.groups.min_rows`` training rows; the rest fall back to the global model."""
    from shardflow.pipelines.training.xgboost_global import xgboost_params

    started = time.perf_counter()
    data, tc, client = context.data, context.config, context.runtime.client
    cfg = tc.groups
    by = list(cfg.partition_by)
    columns = [data.feature_names.index(col) for col in by]
    token = call_token(f"{data.token}-{family.name}")
    counted = [
        client.submit(group_row_counts, f, columns, key=f"train-groups-count-{token}-{i}", pure=False)
        for i, f in enumerate(data.futures)
    ]
    counts = {}
    for part in progress.compute(client, counted, "groups: count rows per key"):
        for key, (train_rows, valid_rows) in part.items():
            total = counts.setdefault(key, [0, 0])
            total[0] += train_rows
            total[1] += valid_rows
    trained = {k: c[0] for k, c in counts.items() if is_known(k) and c[0] >= cfg.min_rows}
    fallback = sorted((k for k in counts if k not in trained), key=lambda k: -counts[k][0])
    if fallback:
        shown = "; ".join(f"{describe_key(k, by, data.preprocessor)} ({counts[k][0]} rows)" for k in fallback[:5])
        logger.warning(
            "%s: %d of %d groups use the global model (fewer than train.groups.min_rows=%d training "
            "rows, or a missing or rare key): %s%s",
            family.name,
            len(fallback),
            len(counts),
            cfg.min_rows,
            shown,
            "; …" if len(fallback) > 5 else "",
        )
    workers = sorted(set(data.workers))
    bucket_of = balance(trained, len(workers))
    params = xgboost_params(data.task, tc.xgboost, context.runtime.backend, tc.seed, classes=data.classes)
    # Each split runs where its partition is (data locality); no pin, so a lost worker's
    # partitions are split wherever they are recomputed.
    splits = [
        client.submit(
            split_by_group, f, columns, bucket_of, len(workers), key=f"train-groups-split-{token}-{i}", pure=False
        )
        for i, f in enumerate(data.futures)
    ]
    tasks = []
    for b, worker in enumerate(workers):
        keys = [k for k, bucket in bucket_of.items() if bucket == b]
        if not keys:
            continue
        pieces = [
            client.submit(operator.getitem, s, b, key=f"train-groups-take-{token}-{i}-{b}", pure=False)
            for i, s in enumerate(splits)
        ]
        tasks.append(
            client.submit(
                train_bucket_xgboost,
                *pieces,
                keys=keys,
                params=params,
                rounds=cfg.xgboost_rounds,
                feature_names=data.feature_names,
                feature_types=data.feature_types(tc.xgboost.categorical),
                scoring=data.scoring,
                early_stopping_rounds=tc.xgboost.early_stopping_rounds,
                key=f"train-xgboost-groups-{token}-{b}",
                workers=[worker],
                allow_other_workers=True,
                pure=False,
            )
        )
    del splits, counted  # the pieces hold what the training tasks need
    members = {}
    for part in progress.compute(client, tasks, f"train {family.name}"):
        members.update(part)
    keys = sorted(members)
    seconds = time.perf_counter() - started
    logger.info("%s: %d group models by %s, %.1fs", family.name, len(keys), ", ".join(by), seconds)
    names = [describe_key(k, by, data.preprocessor) for k in keys]
    return {
        "partition_by": by,
        "columns": columns,
        "keys": keys,
        "members": [members[k] for k in keys],
        "groups": names,
        "fallback_groups": [[describe_key(k, by, data.preprocessor), counts[k][0]] for k in fallback],
        "weights": [members[k]["weight"] for k in keys],
        "seconds": seconds,
        "group_metrics": [
            {"group": name, **members[k]["validation"], "train_rows": members[k]["rows"]}
            for name, k in zip(names, keys)
        ],
    }


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.records.artifacts import write_json

    RunDir.train_file(stage_dir, family.name).mkdir()
    for i, member in enumerate(result["members"]):
        RunDir.train_file(stage_dir, family.member_file(i, "ubj")).write_bytes(member["model"])
    meta = {
        k: result[k]
        for k in ("partition_by", "columns", "groups", "fallback_groups", "weights", "seconds", "group_metrics")
    }
    meta["keys"] = [list(k) for k in result["keys"]]
    meta["histories"] = [member.get("history", {}) for member in result["members"]]
    write_json(RunDir.train_file(stage_dir, family.file("json")), meta)


def load_family(files, family) -> dict:
    """The group models, their keys and key columns (the global model is added by the registry)."""
    meta = files.read_json(files.run.trained(family.file()))
    models = [files.read_bytes(files.run.trained(family.member_file(i, "ubj"))) for i in range(len(meta["keys"]))]
    return {"columns": meta["columns"], "keys": [tuple(k) for k in meta["keys"]], "models": models}
