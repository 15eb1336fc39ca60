"""Baseline: the trips job in one process with pandas, then ``xgboost.train`` on all cores.

Written as a user would without shardflow: read every file, join, filter malformed
rows, derive features, clip/impute/standardise with the whole table's statistics,
encode categoricals, split by a hash of the key, train.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

NUMERIC = ["trip_distance", "passenger_count", "fare_amount", "temperature", "congestion"]
CATEGORICAL = ["vendor", "payment_type", "pickup_zone", "dropoff_zone", "borough", "zone_type"]


def etl(data_dir, min_frequency: int = 20, max_categories: int = 5000, clip_sigma: float = 5.0, out=None):
    """Returns ``(X_train, y_train, X_valid, y_valid, n_numeric)`` as float32 arrays.

    With ``out``, the feature table is also written there as Parquet, as an ETL job would.
    """
    data_dir = Path(data_dir)
    trips = pd.read_parquet(data_dir / "trips")
    zones = pd.read_parquet(data_dir / "zones.parquet").rename(columns={"zone": "pickup_zone"})
    df = trips.merge(zones[["pickup_zone", "borough", "zone_type", "congestion"]], on="pickup_zone", how="left")
    bad = (df.trip_distance < 0) | (df.trip_distance > 1000) | (df.passenger_count < 0) | (df.passenger_count > 9)
    df = df[~bad]
    df["fare_per_mile"] = (df.fare_amount / df.trip_distance).replace([np.inf, -np.inf], np.nan)
    df["hour"] = df.pickup_datetime.dt.hour
    df["dayofweek"] = df.pickup_datetime.dt.dayofweek
    df["month"] = df.pickup_datetime.dt.month
    numeric = NUMERIC + ["fare_per_mile", "hour", "dayofweek", "month"]
    x = df[numeric].astype("float64")
    mean, std = x.mean(), x.std(ddof=0)
    x = x.clip(mean - clip_sigma * std, mean + clip_sigma * std, axis=1)
    mean, std = x.mean(), x.std(ddof=0).replace(0, 1)
    x = ((x.fillna(mean) - mean) / std).astype("float32")
    for col in CATEGORICAL:
        counts = df[col].value_counts()
        vocab = counts[counts >= min_frequency].index[:max_categories]
        codes = pd.Categorical(df[col], categories=vocab).codes.astype("int32") + 2
        codes[df[col].isna().to_numpy()] = 0
        x[col] = codes.astype("float32")
    valid = (pd.util.hash_pandas_object(df.trip_id, index=False).to_numpy() % 5) == 0
    if out is not None:
        x.assign(label=df.is_delayed.to_numpy(), valid=valid).to_parquet(out, index=False)
    X = x.to_numpy()
    y = df.is_delayed.to_numpy(dtype="float32")
    return X[~valid], y[~valid], X[valid], y[valid], len(numeric)


def train(X_train, y_train, X_valid, y_valid, params: dict, rounds: int, nthread: int, n_numeric: int):
    """``xgboost.train`` with the encoded categoricals (the last columns) as categorical features."""
    import xgboost as xgb

    params = {**params, "nthread": nthread}
    types = ["q"] * n_numeric + ["c"] * (X_train.shape[1] - n_numeric)
    dtrain = xgb.QuantileDMatrix(X_train, y_train, feature_types=types, enable_categorical=True)
    dvalid = xgb.DMatrix(X_valid, y_valid, feature_types=types, enable_categorical=True)
    return xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dvalid, "validation")], verbose_eval=False)


if __name__ == "__main__":
    import sys

    t = time.perf_counter()
    out = etl(sys.argv[1])
    print(f"etl {time.perf_counter() - t:.1f}s, {len(out[0]) + len(out[2])} rows")
