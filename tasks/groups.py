"""Per-group models: one model per key group (``train.groups.partition_by``), on the workers.

A group is a distinct combination of the codes of the ``partition_by`` categorical
features, as the ETL encoded them; rows whose key holds a missing or rare category
(:data:`~shardflow.tasks.encode.MISSING_CODE`, :data:`~shardflow.tasks.encode.OTHER_CODE`),
and groups too small to train, are predicted by the global model.
"""

from __future__ import annotations

import numpy as np

from shardflow.tasks.encode import FIRST_CODE
from shardflow.tasks.models import train_group_xgboost, xgboost_predict
from shardflow.tasks.shards import Shard


def group_codes(x: np.ndarray, columns: list) -> tuple:
    """The distinct keys of ``x``'s rows (tuples of codes of ``columns``) and each row's
    index into them.

    Examples
    --------
    >>> import numpy as np
    >>> keys, inverse = group_codes(np.array([[0.5, 3.0], [0.1, 2.0], [0.9, 3.0]]), [1])
    >>> keys, inverse.tolist()
    ([(2,), (3,)], [1, 0, 1])
    """
    codes = np.asarray(x[:, list(columns)], dtype=np.int64).reshape(len(x), len(columns))
    if not len(codes):
        return [], np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(codes, axis=0, return_inverse=True)
    return [tuple(int(c) for c in row) for row in unique], inverse.reshape(-1)


def is_known(key: tuple) -> bool:
    """Whether every code of ``key`` is a category of the vocabulary (not missing, not rare)."""
    return all(code >= FIRST_CODE for code in key)


def group_row_counts(shard: Shard, columns: list) -> dict:
    """``{key: [training rows, validation rows]}`` of one partition."""
    counts = {}
    for which, x in enumerate((shard.x_train, shard.x_valid)):
        keys, inverse = group_codes(x, columns)
        for key, n in zip(keys, np.bincount(inverse, minlength=len(keys)).tolist()):
            counts.setdefault(key, [0, 0])[which] += n
    return counts


def split_by_group(shard: Shard, columns: list, bucket_of: dict, n_buckets: int) -> list:
    """The partition's rows of the groups in ``bucket_of``, per bucket: ``[{key: Shard}]``
    (the first step of gathering each group's rows on the worker that trains it)."""
    out = [{} for _ in range(n_buckets)]
    train_keys, train_inverse = group_codes(shard.x_train, columns)
    valid_keys, valid_inverse = group_codes(shard.x_valid, columns)
    train_index = {k: i for i, k in enumerate(train_keys)}
    valid_index = {k: i for i, k in enumerate(valid_keys)}
    for key in dict.fromkeys(train_keys + valid_keys):  # a partition may hold only validation rows of a group
        if key not in bucket_of:
            continue
        rows = train_inverse == train_index[key] if key in train_index else np.zeros(len(shard.y_train), bool)
        valid = valid_inverse == valid_index[key] if key in valid_index else np.zeros(len(shard.y_valid), bool)
        out[bucket_of[key]][key] = Shard(
            shard.x_train[rows],
            shard.y_train[rows],
            shard.x_valid[valid],
            shard.y_valid[valid],
            w_train=None if shard.w_train is None else shard.w_train[rows],
            w_valid=None if shard.w_valid is None else shard.w_valid[valid],
        )
    return out


def train_bucket_xgboost(
    *pieces: dict,
    keys: list,
    params: dict,
    rounds: int,
    feature_names,
    feature_types,
    scoring,
    early_stopping_rounds: int | None = None,
) -> dict:
    """One XGBoost model per group of ``keys``, from the groups' rows in ``pieces`` (one
    dict per partition, see :func:`split_by_group`), trained as a per-partition model is
    (:func:`~shardflow.tasks.models.train_group_xgboost`); ``{key: member}``."""
    return {
        key: train_group_xgboost(
            *[p[key] for p in pieces if key in p],
            params=params,
            rounds=rounds,
            feature_names=feature_names,
            feature_types=feature_types,
            scoring=scoring,
            early_stopping_rounds=early_stopping_rounds,
        )
        for key in keys
    }


def rows_by_model(payload: dict, x: np.ndarray) -> list:
    """``[(model, rows)]``: the rows of ``x`` of each group's model (``columns``, ``keys``,
    ``models``), and of the global model (``fallback``) for rows of other groups."""
    keys, inverse = group_codes(x, payload["columns"])
    model_of = {tuple(k): i for i, k in enumerate(payload["keys"])}
    which = (
        np.array([model_of.get(k, -1) for k in keys], dtype=np.int64)[inverse]
        if len(x)
        else np.zeros(0, dtype=np.int64)
    )
    return [
        (payload["fallback"] if index < 0 else payload["models"][index], np.flatnonzero(which == index))
        for index in np.unique(which).tolist() or [-1]
    ]


def predict_by_group(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """Each row predicted by its own group's model; rows of other groups by the global model
    (see :func:`rows_by_model`)."""
    out = None
    for model, rows in rows_by_model(payload, x):
        predicted = xgboost_predict(model, x[rows], nthread)
        if out is None:
            out = np.empty((len(x),) + predicted.shape[1:], dtype=predicted.dtype)
        out[rows] = predicted
    return out
