"""Key values in canonical form: the train/validation split's hash of each row's key, and
the instants datetime join keys compare as.

A key means its value, not how a file stored it: the CSV text ``"0.23"``, a Parquet float32
and a DataFrame's float64 ``0.23`` are one number; ``"2013-01-01T10:00:00Z"`` and a pandas
datetime are one instant.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from shardflow.core import backend

_SPLIT_BUCKETS = 1 << 20
_SPLIT_OFFSET = 0x243F6A8885A308D3  # π's first 64 fraction bits: any odd constant does


def split_membership(keys, validation_fraction: float, seed: int) -> np.ndarray:
    """Deterministic validation flags from a hash of each row's key columns.

    The split depends on the key's values, not on how a file stored them: each value is
    hashed in a canonical form computed on host, so a CSV (where every field is text), a
    Parquet file, a pandas or cuDF DataFrame and any partitioning of the same rows give the
    same membership. The canonical forms (see :func:`canonical_key_hash`): a number is its
    float64 value (``"1"``, ``"1.0"``, ``1``, ``True`` and a float32 ``1.0`` are one value;
    ``"true"``/``"false"`` are 1 and 0), a datetime its nanoseconds since the epoch (ISO
    8601 text such as ``"2026-01-05 10:00:00"`` is parsed), anything else its stripped text;
    every missing value (and empty text, as a CSV's empty field) is one value.

    Examples
    --------
    >>> text = pd.DataFrame({"id": ["1", "2.50", "x", None], "when": ["2026-01-05", "", "2026-01-05 10:00", "b"]})
    >>> typed = pd.DataFrame({"id": [1.0, 2.5, "x", np.nan],
    ...                       "when": pd.to_datetime(["2026-01-05", None, "2026-01-05 10:00", None],
    ...                                              format="ISO8601").astype(object)})
    >>> typed.loc[3, "when"] = "b"
    >>> bool((split_membership(text, 0.5, 7) == split_membership(typed, 0.5, 7)).all())
    True
    """
    keys = backend.to_pandas(keys)
    n = len(keys)
    # A non-zero start: with seed 0 a key whose hash is 0 (the number 0) would stay 0 through
    # every mix and always land in bucket 0, the validation side.
    start = (int(seed) * 0x9E3779B97F4A7C15 + _SPLIT_OFFSET) % 2**64
    combined = np.full(n, start, dtype=np.uint64)
    for col in keys.columns:
        combined = mix_hashes(combined, canonical_key_hash(keys[col]))
    bucket = combined % np.uint64(_SPLIT_BUCKETS)
    return bucket < np.uint64(round(validation_fraction * _SPLIT_BUCKETS))


#: ISO 8601 dates and times without an offset, the text a datetime column is written as.
_ISO_DATETIME = r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?"
#: ISO 8601 dates and times, with or without an offset (``Z``, ``+02:00``).
ISO_DATETIME = _ISO_DATETIME + r"(?:\s?(?:Z|[+-]\d{2}:?\d{2}))?"
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_MISSING_HASH = pd.util.hash_array(np.array([np.nan]), categorize=False)[0]


def canonical_key_hash(series: pd.Series) -> np.ndarray:
    """A 64-bit hash of each value of one key column in its canonical form (see
    :func:`split_membership`): equal for the same value however it is stored.

    Examples
    --------
    >>> a = canonical_key_hash(pd.Series(["7", " 7.0", "true", "007", "seven", None]))
    >>> b = canonical_key_hash(pd.Series([7, 7, 1, 7, 0, 0]).astype(object).where([True] * 4 + [False] * 2, None))
    >>> (a[:4] == b[:4]).tolist(), bool(a[4] != b[4]), bool(a[5] == b[5])
    ([True, True, True, True], True, True)
    >>> bool(canonical_key_hash(pd.Series([0.1], dtype="float32"))[0] == canonical_key_hash(pd.Series([0.1]))[0])
    True
    """
    missing = series.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        hashed = _hash_moments(series)
    elif pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(na_value=np.nan)
        if values.dtype == np.float32:  # float32 0.1 is the number its shortest text says, as in a CSV
            values = values.astype(str)
        hashed = _hash_numbers(np.asarray(values, dtype=np.float64))
    elif isinstance(series.dtype, pd.StringDtype):
        hashed = _hash_text(series)
    else:
        hashed = _hash_mixed(series.astype(object).where(~missing, None))
    hashed[missing] = _MISSING_HASH
    return hashed


def _hash_numbers(values: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(values + 0.0, categorize=False)  # + 0.0: -0.0 is 0.0


def _utc_microseconds(values, text: bool = False) -> pd.Series:
    """Datetimes (any dtype: NumPy, Arrow, with or without a time zone; Python objects; ISO
    8601 text with ``text``) as naive UTC ``datetime64[us]``, NaT where none. Naive values are
    taken as UTC; microseconds reach the years 1 to 9999 (nanoseconds stop at 2262)."""
    stamps = pd.to_datetime(pd.Series(values), utc=True, errors="coerce", format="ISO8601" if text else None)
    return stamps.dt.tz_convert(None).astype("datetime64[us]")


def _hash_moments(values, text: bool = False) -> np.ndarray:
    """The hash of each instant (its integer microseconds since the epoch, UTC)."""
    stamps = _utc_microseconds(values, text)
    hashed = pd.util.hash_array(stamps.to_numpy().view("int64"), categorize=False)
    hashed[stamps.isna().to_numpy()] = _MISSING_HASH
    return hashed


def _hash_mixed(values: pd.Series) -> np.ndarray:
    """Text (a CSV's columns), or Python objects of several kinds in one column."""
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return _hash_text(values.astype("str"))
    # A DataFrame's object column: booleans, numbers and timestamps in canonical form, text parsed.
    kind = values.map(
        lambda v: (
            "number"
            if isinstance(v, (bool, np.bool_, int, float, np.number))
            else "moment"
            if isinstance(v, (_dt.datetime, _dt.date, np.datetime64))
            else "text"
        )
    )
    hashed = np.full(len(values), _MISSING_HASH, dtype=np.uint64)
    present = values.notna().to_numpy()
    for name in ("number", "moment", "text"):
        rows = (kind == name).to_numpy() & present
        if not rows.any():
            continue
        chosen = values[rows]
        hashed[rows] = (
            _hash_numbers(chosen.to_numpy(np.float64))
            if name == "number"
            else _hash_moments(chosen)
            if name == "moment"
            else _hash_text(chosen.map(str).astype("str"))
        )
    return hashed


def _hash_text(text: pd.Series) -> np.ndarray:
    """Text values: numbers, booleans and ISO 8601 timestamps parsed, the rest as stripped text
    (Arrow's string kernels: a CSV's every column comes here)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    strings = pc.utf8_trim_whitespace(pa.array(text).cast(pa.string()))
    present = pc.fill_null(pc.not_equal(strings, ""), False).to_numpy(zero_copy_only=False)
    hashed = np.full(len(text), _MISSING_HASH, dtype=np.uint64)
    if not present.any():
        return hashed
    numeric = pc.fill_null(pc.match_substring_regex(strings, _NUMBER), False)
    numbers = pc.cast(pc.if_else(numeric, strings, None), pa.float64()).to_numpy(zero_copy_only=False)
    words = pc.index_in(pc.utf8_lower(strings), value_set=pa.array(["false", "true"]))
    words = pc.fill_null(words, -1).to_numpy(zero_copy_only=False)
    numbers = np.where(words >= 0, words, numbers).astype(np.float64)
    numbers[~present] = np.nan
    iso = pc.fill_null(pc.match_substring_regex(strings, f"^{ISO_DATETIME}$"), False).to_numpy(zero_copy_only=False)
    is_moment = iso & np.isnan(numbers)
    is_number = ~np.isnan(numbers)
    rest = present & ~is_number & ~is_moment
    hashed[is_number] = _hash_numbers(numbers[is_number])
    if is_moment.any():
        stamps = strings.filter(pa.array(is_moment))
        try:  # Arrow parses ISO 8601 without an offset in C; pandas takes offsets ("Z", "+02:00")
            micros = pc.cast(stamps, pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
            moments = pd.util.hash_array(micros, categorize=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            moments = _hash_moments(stamps.to_pylist(), text=True)
        hashed[is_moment] = moments
    if rest.any():
        hashed[rest] = pd.util.hash_array(
            strings.filter(pa.array(rest)).to_numpy(zero_copy_only=False).astype(object), categorize=False
        )
    return hashed


def mix_hashes(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mix the 64-bit hashes ``v`` into ``h`` (splitmix64's finaliser): the split's and the shuffle's."""
    with np.errstate(over="ignore"):
        h = (h ^ v) * np.uint64(0xBF58476D1CE4E5B9)
        return h ^ (h >> np.uint64(31))


def instants(values):
    """Datetimes (or ISO 8601 text) as naive UTC ``datetime64[us]``: text without an offset,
    and naive datetimes, are taken as UTC; anything else is missing."""
    if not isinstance(values, pd.Series):  # cuDF: its own parser, no time zones
        return backend.to_datetime(values)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _utc_microseconds(values).set_axis(values.index)
    text = values.astype("string").str.strip()
    return _utc_microseconds(text.where(text.str.fullmatch(ISO_DATETIME).fillna(False)), text=True).set_axis(
        values.index
    )
