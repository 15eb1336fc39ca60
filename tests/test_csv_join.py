"""A dataset of another shape (CSV, two joins, a derived target) runs with config only."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
import pytest

from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import load_config

CARRIERS = ["AA", "DL", "UA", "WN", "B6"]
AIRPORTS = ["ATL", "ORD", "DFW", "DEN", "LAX", "JFK", "SFO", "SEA"]


def write_flights(directory, rows=6_000, files=3, seed=0):
    """Flights-like CSV files with malformed numbers and missing delays, plus two dimension tables."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    n = rows
    df = pd.DataFrame(
        {
            "flight_id": np.arange(n),
            "flight_date": pd.to_datetime("2023-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "carrier": rng.choice(CARRIERS, n),
            "origin": rng.choice(AIRPORTS, n),
            "dest": rng.choice(AIRPORTS, n),
            "dep_hour": rng.integers(5, 23, n),
            "distance": np.round(rng.uniform(100, 2500, n), 1),
            "air_time": np.round(rng.uniform(30, 300, n), 1),
        }
    )
    df["arr_delay"] = np.round(rng.normal(5, 20, n) + 0.8 * (df.dep_hour - 12), 1)
    frame = df.astype({"distance": object, "arr_delay": object})
    frame.loc[rng.random(n) < 0.01, "distance"] = "12..5 mi"  # malformed
    frame.loc[rng.random(n) < 0.02, "arr_delay"] = None  # missing target
    frame["flight_date"] = frame.flight_date.dt.strftime("%Y-%m-%d")
    bounds = np.linspace(0, n, files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        frame.iloc[a:b].to_csv(directory / f"flights_{i}.csv", index=False)
    routes = pd.MultiIndex.from_product([AIRPORTS, AIRPORTS], names=["origin", "dest"]).to_frame(index=False)
    routes["popularity"] = rng.uniform(0, 1, len(routes)).round(3)
    routes["distance"] = rng.uniform(100, 2500, len(routes)).round(0)  # clashes with flights.distance
    routes.to_csv(directory / "routes.csv", index=False)
    pd.DataFrame({"code": CARRIERS, "alliance": ["oneworld", "skyteam", "star", "none", "none"]}).to_csv(
        directory / "carriers.csv", index=False
    )
    return frame


CONFIG = """
input:
  path: flights_*.csv
  blocksize: {blocksize}
  exchangeable: true  # rows compared with the reference in file order (the shuffle: test_planner.py)
joins:
  - path: routes.csv
    on: [origin, dest]
  - path: carriers.csv
    on: [carrier]
    right_on: [code]
    columns: [alliance]
target:
  column: late
  expression: arr_delay > 15
  task: classification
features:
  numeric: [dep_hour, distance, popularity, distance_routes]
  categorical: [carrier, origin, dest, alliance]
  datetime: [flight_date]
  datetime_parts: [month, dayofweek]
  derived:
    speed: distance / (air_time + 1)
split:
  key: [flight_id]
output:
  keep_columns: [flight_id]
  runs_dir: {runs}
encode:
  min_frequency: 1
"""


@pytest.fixture
def flights(tmp_path):
    frame = write_flights(tmp_path / "flights")
    return tmp_path / "flights", frame


def _config(directory, runs, blocksize="64MB"):
    path = directory / f"job-{blocksize}.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(blocksize=blocksize, runs=runs)))
    return load_config(path)


def test_csv_join_derived_target(flights, runtime, tmp_path):
    directory, frame = flights
    result = etl(_config(directory, tmp_path / "runs"), runtime=runtime)

    distance = pd.to_numeric(frame.distance, errors="coerce")
    malformed = frame.distance.notna() & distance.isna()
    missing_target = frame.arr_delay.isna() & ~malformed
    assert result.quarantined == {
        "distance: not a number": int(malformed.sum()),
        "late: missing target": int(missing_target.sum()),
    }
    good = frame[~malformed & ~missing_target]
    assert result.rows == len(good)

    features = pd.read_parquet(result.stage_dir / "features")
    np.testing.assert_array_equal(features.flight_id.astype(int), good.flight_id)  # CSV: kept as text
    expected_late = (pd.to_numeric(good.arr_delay) > 15).astype(np.float32).to_numpy()
    np.testing.assert_array_equal(features.late.to_numpy(), expected_late)
    # The clashing dimension column got the join's suffix; both distances are features.
    prep = result.preprocessor
    assert "distance_routes" in prep.numeric and "distance" in prep.numeric
    routes = pd.read_csv(directory / "routes.csv")
    joined = good.merge(routes, on=["origin", "dest"], how="left", suffixes=("", "_routes"))
    index = prep.numeric.index("distance_routes")
    assert prep.mean[index] == pytest.approx(joined.distance_routes.mean(), rel=1e-9)
    # Two carriers share "none": the most frequent category comes first.
    assert prep.vocabularies["alliance"][0] == "none"
    assert sorted(prep.vocabularies["alliance"]) == ["none", "oneworld", "skyteam", "star"]
    assert "flight_date_month" in prep.numeric and "speed" in prep.numeric


def test_csv_byte_ranges_equal_whole_files(flights, runtime, tmp_path):
    """Splitting each CSV file into many byte ranges changes nothing in the output."""
    directory, _ = flights
    whole = etl(_config(directory, tmp_path / "a"), runtime=runtime)
    split = etl(_config(directory, tmp_path / "b", blocksize="20kB"), runtime=runtime)
    assert whole.partitions == 3 and split.partitions > 6
    a = pd.read_parquet(whole.stage_dir / "features")
    b = pd.read_parquet(split.stage_dir / "features")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), rtol=1e-6)
    assert whole.quarantined == split.quarantined
