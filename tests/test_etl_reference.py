"""The distributed ETL equals a single-process pandas reference written here, independently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from shardflow.pipelines.etl.stage import etl, read_features
from shardflow.pipelines.setup.config import default_config_path, load_config

MIN_FREQUENCY = 3
MAX_CATEGORIES = 300
NUMERIC = [
    "trip_distance",
    "passenger_count",
    "fare_amount",
    "temperature",
    "congestion",
    "fare_per_mile",
    "pickup_datetime_hour",
    "pickup_datetime_dayofweek",
    "pickup_datetime_month",
]
CATEGORICAL = ["vendor", "payment_type", "pickup_zone", "dropoff_zone", "borough", "zone_type"]


def reference_split(values: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The split documented in shardflow.tasks.keys.split_membership, re-derived."""
    h = np.full(len(values), (seed * 0x9E3779B97F4A7C15 + 0x243F6A8885A308D3) % 2**64, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = (h ^ pd.util.hash_array(values.astype(np.float64), categorize=False)) * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(31))
    return (h % np.uint64(1 << 20)) < np.uint64(round(fraction * (1 << 20)))


def reference_etl(data_dir):
    """The trips job in plain pandas on the whole table at once."""
    files = sorted((data_dir / "trips").glob("*.parquet"))
    raw = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    zones = pd.read_parquet(data_dir / "zones.parquet").rename(columns={"zone": "pickup_zone"})
    df = raw.merge(zones[["pickup_zone", "borough", "zone_type", "congestion"]], on="pickup_zone", how="left")
    assert len(df) == len(raw)

    reason = pd.Series([None] * len(df), dtype=object)
    for failed, message in [
        (df.trip_distance < 0, "trip_distance: below 0"),
        (df.trip_distance > 1000, "trip_distance: above 1000"),
        (df.passenger_count < 0, "passenger_count: below 0"),
        (df.passenger_count > 9, "passenger_count: above 9"),
    ]:
        reason = reason.where(reason.notna() | ~failed, message)
    ok = reason.isna().to_numpy()
    quarantine = raw[~ok].assign(_reason=reason[~ok].to_numpy())
    good = df[ok].reset_index(drop=True)

    good["fare_per_mile"] = (good.fare_amount / good.trip_distance).replace([np.inf, -np.inf], np.nan)
    good["pickup_datetime_hour"] = good.pickup_datetime.dt.hour.astype(float)
    good["pickup_datetime_dayofweek"] = good.pickup_datetime.dt.day_of_week.astype(float)
    good["pickup_datetime_month"] = good.pickup_datetime.dt.month.astype(float)
    numeric = good[NUMERIC].astype(float)
    mean, std = numeric.mean(), numeric.std(ddof=0)
    lower, upper = mean - 5 * std, mean + 5 * std
    clipped = numeric.clip(lower, upper, axis=1)
    cmean, cstd = clipped.mean(), clipped.std(ddof=0)
    out = pd.DataFrame({"trip_id": good.trip_id})
    for col in NUMERIC:
        out[col] = ((clipped[col].fillna(cmean[col]) - cmean[col]) / cstd[col]).astype(np.float32)
    vocab = {}
    for col in CATEGORICAL:
        counts = good[col].value_counts()
        counts = counts[counts >= MIN_FREQUENCY]
        vocab[col] = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:MAX_CATEGORIES]
        codes = {v: i + 2 for i, v in enumerate(vocab[col])}
        out[col] = np.where(good[col].isna(), 0, good[col].map(codes).fillna(1)).astype(np.int32)
    out["is_delayed"] = good.is_delayed.astype(np.float32)
    out["_is_validation"] = reference_split(good.trip_id.to_numpy(), 0.2, 0)
    stats = {"lower": lower, "upper": upper, "mean": cmean, "std": cstd}
    return out, quarantine.reset_index(drop=True), vocab, stats


@pytest.fixture
def skewed_dataset(trips_copy):
    """The generated dataset plus a 0-row file and a 5x larger file (9 → 10 partitions)."""
    trips = trips_copy / "trips"
    first = pq.read_table(trips / "part-00000.parquet")
    pq.write_table(first.schema.empty_table(), trips / "part-00008.parquet")
    big = pa.concat_tables([pq.read_table(trips / f"part-0000{i}.parquet") for i in range(5)])
    big = big.set_column(0, "trip_id", pa.array(big.column("trip_id").to_numpy() + 10_000_000))
    pq.write_table(big, trips / "part-00009.parquet")
    return trips_copy


def test_etl_equals_pandas_reference(skewed_dataset, runtime, tmp_path):
    config = load_config(
        default_config_path(),
        [
            f"encode.min_frequency={MIN_FREQUENCY}",
            f"encode.max_categories={MAX_CATEGORIES}",
            f"output.runs_dir={tmp_path / 'runs'}",
            "input.exchangeable=true",
        ],  # rows compared in file order (the shuffle: test_planner.py)
        base_dir=skewed_dataset,
    )
    result = etl(config, runtime=runtime)
    expected, expected_quarantine, vocab, stats = reference_etl(skewed_dataset)
    stage = result.stage_dir

    assert result.partitions == 10
    assert result.rows == len(expected)
    prep = json.loads((stage / "preprocessor.json").read_text())
    assert prep["vocabularies"] == vocab
    assert prep["numeric"] == NUMERIC
    for key in ("lower", "upper", "mean", "std"):
        np.testing.assert_allclose(prep[key], stats[key][NUMERIC].to_numpy(), rtol=1e-9, err_msg=key)

    files = sorted((stage / "features").glob("*.parquet"))
    assert len(files) == 10
    got = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert list(got.columns) == list(expected.columns)
    for col in CATEGORICAL + ["trip_id", "is_delayed", "_is_validation"]:
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    for col in NUMERIC:
        np.testing.assert_allclose(got[col].to_numpy(), expected[col].to_numpy(), rtol=1e-5, atol=1e-5, err_msg=col)
    assert 0.18 < expected._is_validation.mean() < 0.22

    quarantine = pd.concat(
        [pd.read_parquet(f) for f in sorted((stage / "quarantine").glob("*.parquet"))], ignore_index=True
    )
    assert len(expected_quarantine) > 0
    np.testing.assert_array_equal(quarantine.trip_id, expected_quarantine.trip_id)
    np.testing.assert_array_equal(quarantine._reason, expected_quarantine._reason)
    assert result.quarantined == expected_quarantine._reason.value_counts().to_dict()

    group = zarr.open_group(str(stage / "features.zarr"), mode="r")
    assert group.attrs["feature_names"] == NUMERIC + CATEGORICAL
    np.testing.assert_array_equal(group["X"][:], expected[NUMERIC + CATEGORICAL].to_numpy(np.float32))
    np.testing.assert_array_equal(group["y"][:], expected.is_delayed.to_numpy())
    np.testing.assert_array_equal(group["is_validation"][:], expected._is_validation.to_numpy())
    # Chunks follow the partitions: about one partition's rows each.
    assert group["X"].chunks[0] == round(result.rows / 10)

    # Decoded, the features read in the input's terms: categories and units, the target's labels.
    decoded = read_features(result.run_dir, decoded=True).compute()
    assert list(decoded.columns) == list(expected.columns) and len(decoded) == len(expected)
    for col in NUMERIC:
        in_units = expected[col].to_numpy(np.float64) * stats["std"][col] + stats["mean"][col]
        np.testing.assert_allclose(decoded[col].to_numpy(), in_units, rtol=1e-5, atol=1e-4 * stats["std"][col])
    for col in CATEGORICAL:
        labels = np.array([None, "(other)", *vocab[col]], dtype=object)[expected[col].to_numpy()]
        shown = decoded[col].astype(object).where(decoded[col].notna(), None)  # <NA>: a missing category
        assert shown.tolist() == labels.tolist(), col
    assert decoded.is_delayed.dtype == "boolean"  # the labels' own kind (a boolean target)
    assert decoded.is_delayed.tolist() == expected.is_delayed.astype(bool).tolist()


def test_etl_result_does_not_depend_on_partitioning(trips_dir, runtime, tmp_path):
    """The same rows in uneven files split by row groups give the same features and statistics."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((trips_dir / "trips").glob("*.parquet"))])
    other = tmp_path / "repartitioned"
    (other / "trips").mkdir(parents=True)
    pq.write_table(pq.read_table(trips_dir / "zones.parquet"), other / "zones.parquet")
    bounds = [0, 1_000, 11_000, 12_500, 24_000]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(a, b - a), other / "trips" / f"p{i}.parquet", row_group_size=700)

    results = []
    for data_dir, max_rows in ((trips_dir, 2_000_000), (other, 1_500)):
        config = load_config(
            default_config_path(),
            [f"input.max_partition_rows={max_rows}", f"output.runs_dir={tmp_path / 'runs'}"],
            base_dir=data_dir,
        )
        results.append(etl(config, runtime=runtime))
    assert results[0].partitions == 8
    assert results[1].partitions > 16
    first, second = (r.preprocessor for r in results)
    assert first.vocabularies == second.vocabularies
    np.testing.assert_allclose(first.std, second.std, rtol=1e-12)
    arrays = [zarr.open_group(str(r.stage_dir / "features.zarr"), mode="r") for r in results]
    np.testing.assert_allclose(arrays[0]["X"][:], arrays[1]["X"][:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(arrays[0]["is_validation"][:], arrays[1]["is_validation"][:])
