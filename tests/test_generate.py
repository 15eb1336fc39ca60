"""The default dataset generator is deterministic and partition-independent."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from shardflow.data.trips import generate_partition
from shardflow.pipelines.setup.generate import generate, write_trips_partition


def test_same_seed_same_bytes(runtime, tmp_path):
    a = generate(tmp_path / "a", 9_000, seed=3, rows_per_partition=4_000, runtime=runtime)
    b = generate(tmp_path / "b", 9_000, seed=3, rows_per_partition=4_000, runtime=runtime)
    c = generate(tmp_path / "c", 9_000, seed=4, rows_per_partition=4_000, runtime=runtime)
    assert a.partitions == 3
    names = sorted(p.name for p in (a.path / "trips").iterdir())
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name in names:
        assert filecmp.cmp(a.path / "trips" / name, b.path / "trips" / name, shallow=False)
        assert not filecmp.cmp(a.path / "trips" / name, c.path / "trips" / name, shallow=False)
    assert filecmp.cmp(a.path / "zones.parquet", b.path / "zones.parquet", shallow=False)
    # A worker and this process write identical bytes: nothing depends on where it runs.
    local = tmp_path / "local.parquet"
    write_trips_partition(3, 1, 4_000, 4_000, str(local))
    assert filecmp.cmp(local, a.path / "trips" / "part-00001.parquet", shallow=False)


def test_dataset_has_the_documented_shape():
    df = generate_partition(0, 0, 50_000, 0).to_pandas()
    assert df.trip_id.is_unique
    assert df.pickup_zone.nunique() > 300  # high cardinality
    assert df.vendor.nunique() == 4
    for col in ("payment_type", "passenger_count", "trip_distance", "temperature"):
        assert 0 < df[col].isna().mean() < 0.05, col
    assert (df.trip_distance < 0).sum() > 0  # malformed values exist
    assert df.trip_distance.max() > 20 * df.trip_distance.median()  # outliers
    assert 0.2 < df.is_delayed.mean() < 0.4
    # Known signal: rush hour trips are delayed more often.
    rush = df.pickup_datetime.dt.hour.isin([7, 8, 9, 16, 17, 18]) & (df.pickup_datetime.dt.day_of_week < 5)
    assert df.is_delayed[rush].mean() > df.is_delayed[~rush].mean() + 0.1
    assert np.corrcoef(df.delay_min, df.trip_distance.clip(0, 30).fillna(0))[0, 1] > 0.2
    # Partition-independent: a partition's rows depend on the seed and its index only, its
    # trip ids continue from the rows before it.
    second = generate_partition(0, 1, 1_000, 50_000).to_pandas()
    assert second.trip_id.min() == 50_000 and not second.trip_id.isin(df.trip_id).any()
    pd.testing.assert_frame_equal(generate_partition(0, 1, 1_000, 50_000).to_pandas(), second)
    assert not second.trip_distance.head(100).equals(df.trip_distance.head(100).reset_index(drop=True))


def test_a_table_without_rows_per_partition_is_written_in_several_files(runtime, tmp_path):
    from shardflow.pipelines.setup.generate import MIN_PARTITIONS

    result = generate(tmp_path / "t", 300_000, runtime=runtime)  # issue 12: this was one file
    files = sorted((result.path / "trips").glob("*.parquet"))
    assert result.partitions == len(files) == MIN_PARTITIONS
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 300_000
