"""The default dataset: synthetic taxi-like trips with known signal, generated per partition.

Each partition is a pure function of ``(seed, partition index, rows)``: any worker can
make any partition with one partition's memory, and the same seed always gives the
same bytes. A small ``zones`` dimension table is joined by ``pickup_zone``.

Columns of the trips table
--------------------------
trip_id (int64, unique), pickup_datetime (timestamp), vendor and payment_type
(low-cardinality strings), pickup_zone and dropoff_zone (high-cardinality strings,
Zipf-distributed), passenger_count (int, nulls, malformed -1 / 99), trip_distance
(log-normal miles with outliers, nulls, malformed negatives), fare_amount,
temperature (seasonal, nulls), delay_min (regression target) and is_delayed
(classification target: ``delay_min > 10`` with 3% label noise).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

N_ZONES = 2_000
VENDORS = np.array(["CMT", "VTS", "DDS", "NYC"])
VENDOR_P = [0.46, 0.44, 0.07, 0.03]
PAYMENTS = np.array(["card", "cash", "no_charge", "dispute", "voucher"])
PAYMENT_P = [0.70, 0.26, 0.02, 0.01, 0.01]
BOROUGHS = np.array(["Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island", "EWR"])
ZONE_TYPES = np.array(["residential", "commercial", "airport", "park"])
_EPOCH_2024 = np.datetime64("2024-01-01T00:00:00", "s")
_SECONDS_2024 = 366 * 24 * 3600


ZONE_NAMES = np.array([f"Z{code:04d}" for code in range(N_ZONES)])


def zones_table(seed: int = 0) -> pa.Table:
    """The zones dimension table: one row per zone, ``zone`` is the key."""
    rng = np.random.default_rng([seed, 1_000_003])
    codes = np.arange(N_ZONES)
    return pa.table(
        {
            "zone": ZONE_NAMES[codes],
            "borough": BOROUGHS[rng.choice(len(BOROUGHS), N_ZONES, p=[0.35, 0.25, 0.25, 0.1, 0.04, 0.01])],
            "zone_type": ZONE_TYPES[rng.choice(len(ZONE_TYPES), N_ZONES, p=[0.5, 0.35, 0.05, 0.1])],
            "congestion": np.round(rng.gamma(2.0, 0.5, N_ZONES), 3),
        }
    )


def _zone_effect(seed: int) -> np.ndarray:
    """Hidden per-zone delay (minutes): the signal a high-cardinality encoding can learn."""
    return np.random.default_rng([seed, 1_000_003]).normal(0.0, 3.0, N_ZONES)


def generate_partition(seed: int, index: int, rows: int, first_trip_id: int) -> pa.Table:
    """One partition of the trips table.

    Parameters
    ----------
    seed : int
        Dataset seed; with ``index`` it fully determines the partition.
    index : int
        Partition number.
    rows : int
        Number of rows in this partition.
    first_trip_id : int
        ``trip_id`` of the first row (ids are unique across partitions).

    Returns
    -------
    pyarrow.Table
    """
    rng = np.random.default_rng([seed, index])
    zone_effect = _zone_effect(seed)
    congestion = zones_table(seed).column("congestion").to_numpy()

    seconds = rng.integers(0, _SECONDS_2024, rows)
    # More trips in the day than at night: redraw the hour from a daily profile.
    hour_p = np.array([2, 1, 1, 1, 1, 2, 4, 6, 7, 6, 5, 5, 5, 5, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3], float)
    hour = rng.choice(24, rows, p=hour_p / hour_p.sum())
    seconds = seconds - seconds % 86_400 + hour * 3600 + rng.integers(0, 3600, rows)
    pickup = _EPOCH_2024 + seconds.astype("timedelta64[s]")
    day_of_week = ((seconds // 86_400) + 0) % 7  # 2024-01-01 was a Monday
    day_of_year = seconds // 86_400

    vendor = rng.choice(len(VENDORS), rows, p=VENDOR_P)
    payment = rng.choice(len(PAYMENTS), rows, p=PAYMENT_P)
    pickup_zone = np.minimum(rng.zipf(1.25, rows) - 1, N_ZONES - 1)
    dropoff_zone = np.minimum(rng.zipf(1.25, rows) - 1, N_ZONES - 1)
    passengers = rng.choice(6, rows, p=[0.6, 0.2, 0.08, 0.06, 0.04, 0.02]) + 1
    distance = rng.lognormal(0.8, 0.75, rows)
    distance = np.where(rng.random(rows) < 0.002, distance * 50, distance)  # outliers
    temperature = 12 - 12 * np.cos(2 * np.pi * day_of_year / 366) + rng.normal(0, 4, rows)
    rush = np.isin(hour, [7, 8, 9, 16, 17, 18]) & (day_of_week < 5)
    fare = 3.0 + 2.6 * distance + rng.normal(0, 1.5, rows) + 4.0 * rush

    delay = (
        -2.0
        + 7.0 * rush
        + 1.2 * np.minimum(distance, 30)
        + 2.5 * congestion[pickup_zone]
        + zone_effect[pickup_zone]
        + 0.6 * zone_effect[dropoff_zone]
        + 0.25 * np.maximum(0.0, 5.0 - temperature)
        + 2.0 * (vendor == 2)
        + rng.normal(0, 4.0, rows)
    )
    delayed = (delay > 10) ^ (rng.random(rows) < 0.03)

    # Missing values, then malformed ones (violate the documented valid ranges).
    def with_nulls(values, rate):
        return pa.array(values, mask=rng.random(rows) < rate)

    passengers = np.where(rng.random(rows) < 0.0005, rng.choice([-1, 99], rows), passengers)
    distance = np.where(rng.random(rows) < 0.0005, -distance, distance)

    return pa.table(
        {
            "trip_id": pa.array(first_trip_id + np.arange(rows, dtype=np.int64)),
            "pickup_datetime": pa.array(pickup.astype("datetime64[ms]")),
            "vendor": pa.array(VENDORS[vendor]),
            "payment_type": with_nulls(PAYMENTS[payment], 0.01),
            "pickup_zone": pa.array(ZONE_NAMES[pickup_zone]),
            "dropoff_zone": with_nulls(ZONE_NAMES[dropoff_zone], 0.005),
            "passenger_count": with_nulls(passengers.astype(np.int64), 0.02),
            "trip_distance": with_nulls(np.round(distance, 3), 0.01),
            "fare_amount": with_nulls(np.round(fare, 2), 0.005),
            "temperature": with_nulls(np.round(temperature, 1), 0.03),
            "delay_min": pa.array(np.round(delay, 2)),
            "is_delayed": pa.array(delayed),
        }
    )
