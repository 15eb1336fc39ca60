"""Baseline: the trips job as hand-written ``dask.dataframe`` code, then ``xgboost.dask``.

What a Dask user would write on the same LocalCluster: lazy reads, a broadcast join,
global statistics with ``compute``, ``map_partitions`` for the encodings, and
``DaskQuantileDMatrix`` + ``xgboost.dask.train``.
"""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from benchmarks.baselines.pandas_xgboost import CATEGORICAL, NUMERIC


def etl(client, data_dir, min_frequency: int = 20, max_categories: int = 5000, clip_sigma: float = 5.0):
    """Returns persisted ``(X_train, y_train, X_valid, y_valid)`` Dask collections."""
    trips = dd.read_parquet(f"{data_dir}/trips")
    zones = pd.read_parquet(f"{data_dir}/zones.parquet").rename(columns={"zone": "pickup_zone"})
    df = trips.merge(zones[["pickup_zone", "borough", "zone_type", "congestion"]], on="pickup_zone", how="left")
    df = df[~((df.trip_distance < 0) | (df.trip_distance > 1000) | (df.passenger_count < 0) | (df.passenger_count > 9))]
    df = df.assign(
        fare_per_mile=(df.fare_amount / df.trip_distance).replace([np.inf, -np.inf], np.nan),
        hour=df.pickup_datetime.dt.hour,
        dayofweek=df.pickup_datetime.dt.dayofweek,
        month=df.pickup_datetime.dt.month,
    )
    numeric = NUMERIC + ["fare_per_mile", "hour", "dayofweek", "month"]
    df = df.persist()
    x = df[numeric].astype("float64")
    mean, std = dask.compute(x.mean(), x.std(ddof=0))
    x = x.clip(lower=mean - clip_sigma * std, upper=mean + clip_sigma * std, axis=1)
    mean, std = dask.compute(x.mean(), x.std(ddof=0))
    counts = dask.compute(*[df[c].value_counts() for c in CATEGORICAL])
    vocab = {}
    for col, vc in zip(CATEGORICAL, counts):
        vc = vc[vc >= min_frequency].sort_values(ascending=False)
        vocab[col] = list(vc.index[:max_categories])

    def encode(part, mean, std, vocab):
        out = (
            (
                part[numeric]
                .astype("float64")
                .clip(mean - clip_sigma * std, mean + clip_sigma * std, axis=1)
                .fillna(mean)
                - mean
            )
            / std.replace(0, 1)
        ).astype("float32")
        for col in CATEGORICAL:
            codes = pd.Categorical(part[col], categories=vocab[col]).codes.astype("int32") + 2
            codes[part[col].isna().to_numpy()] = 0
            out[col] = codes.astype("float32")
        out["label"] = part.is_delayed.astype("float32")
        out["valid"] = (pd.util.hash_pandas_object(part.trip_id, index=False).to_numpy() % 5) == 0
        return out

    meta = pd.DataFrame({c: pd.Series(dtype="float32") for c in numeric + CATEGORICAL + ["label"]})
    types = ["q"] * len(numeric) + ["c"] * len(CATEGORICAL)
    meta["valid"] = pd.Series(dtype=bool)
    enc = df.map_partitions(encode, mean, std, vocab, meta=meta)
    train, valid = client.persist([enc[~enc.valid], enc[enc.valid]])
    cols = numeric + CATEGORICAL
    return train[cols], train.label, valid[cols], valid.label, types


def train(client, X_train, y_train, X_valid, y_valid, feature_types, params: dict, rounds: int):
    """xgboost.dask with the encoded categoricals as categorical features (``feature_types``)."""
    import xgboost as xgb
    import xgboost.dask

    dtrain = xgb.dask.DaskQuantileDMatrix(
        client, X_train, y_train, feature_types=feature_types, enable_categorical=True
    )
    dvalid = xgb.dask.DaskQuantileDMatrix(
        client, X_valid, y_valid, ref=dtrain, feature_types=feature_types, enable_categorical=True
    )
    return xgb.dask.train(
        client, params, dtrain, num_boost_round=rounds, evals=[(dvalid, "validation")], verbose_eval=False
    )


def etl_from_features(client, etl_dir):
    """The training inputs read from a finished ETL's feature table (for training-only comparisons)."""
    import json
    from pathlib import Path

    prep = json.loads((Path(etl_dir) / "preprocessor.json").read_text())
    cols = prep["numeric"] + prep["categorical"]
    df = dd.read_parquet(str(Path(etl_dir) / "features"))
    # Persist before projecting: dask-expr may otherwise combine Parquet partitions differently
    # for the feature columns and the label, which xgboost.dask rejects.
    train, valid = client.persist([df[~df._is_validation], df[df._is_validation]])
    types = ["q"] * len(prep["numeric"]) + ["c"] * len(prep["categorical"])
    return train[cols], train[prep["target"]], valid[cols], valid[prep["target"]], types


def evaluate(client, model, X_valid, y_valid) -> float:
    """Validation AUC, computed the way a user would: predict, gather, scikit-learn."""
    import xgboost as xgb
    from sklearn.metrics import roc_auc_score

    predictions = xgb.dask.predict(client, model, X_valid)
    p, y = dask.compute(predictions, y_valid)
    return float(roc_auc_score(y, p))
