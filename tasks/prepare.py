"""Validate, type, join and derive one partition: raw rows in, feature rows + quarantine out.

Nothing here depends on global statistics: every row's fate (kept or quarantined, and
with which reason) and its train/validation membership is a function of the row alone,
so the result does not depend on how the table is partitioned.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from shardflow.core import backend
from shardflow.tasks.expressions import evaluate
from shardflow.tasks.io import ROW_ERROR_COLUMN
from shardflow.tasks.keys import instants, mix_hashes, split_membership
from shardflow.tasks.labels import label_keys
from shardflow.tasks.schema import REASON_COLUMN, SPLIT_COLUMN, WEIGHT_COLUMN, TableSpec
from shardflow.tasks.targets import target_kind, target_transform

#: The target and the weights are float32 in the feature arrays and the models: a value past
#: float32's largest is infinite there (every sum, loss and metric with it), and a positive
#: weight under its smallest normal number is zero or a denormal (XGBoost's weight sums fail).
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)


class PreparedPartition(NamedTuple):
    """The two outputs of :func:`prepare_partition` for one partition."""

    features: object  #: good rows: typed, joined, derived columns + target + split flag
    quarantine: object  #: rejected rows with their raw values and a ``_reason`` column
    missing_targets: int = 0  #: rows whose target is missing, whatever else is wrong with them
    #: Per join, ``(rows whose key found a dimension row, rows)`` over every input row.
    join_matches: tuple = ()
    #: A few distinct target values that are not numbers (regression), for the error message.
    target_examples: tuple = ()


def prepare_partition(raw, spec: TableSpec, dimensions=()) -> PreparedPartition:
    """Type, validate, join and derive the columns of one raw partition.

    Parameters
    ----------
    raw : pandas.DataFrame or cudf.DataFrame
        One partition as read from the source (``spec.source_columns()``).
    spec : TableSpec
        The table schema.
    dimensions : sequence of DataFrame
        One frame per ``spec.joins`` entry, same backend as ``raw``, keys unique.

    Returns
    -------
    PreparedPartition
        ``features`` holds the rows that passed every check, with numeric feature
        columns as float64, categoricals as strings, the target as float64 (classification:
        its label keys, see :mod:`shardflow.tasks.labels`), the sample weight and a
        boolean ``_is_validation`` column. ``quarantine`` holds the other rows with
        their raw values and the first failed check in ``_reason``.
    """
    n = len(raw)
    reasons = np.zeros(n, dtype=np.int16)
    messages: list[str] = []

    def reject(mask, message: str) -> None:
        host = backend.to_host_array(mask, bool) if n else np.zeros(0, bool)
        fresh = host & (reasons == 0)
        if fresh.any():
            if message not in messages:
                messages.append(message)
            reasons[fresh] = messages.index(message) + 1

    if ROW_ERROR_COLUMN in raw.columns:  # CSV rows with the wrong number of fields
        row_errors = raw[ROW_ERROR_COLUMN]
        for message in backend.to_pandas(row_errors.dropna()).unique():
            reject(row_errors == message, str(message))
        raw = raw.drop(columns=[ROW_ERROR_COLUMN])
    frame = raw.copy(deep=False)
    raw_target = (
        raw[spec.target]
        if spec.target_required and spec.target_expression is None and spec.target in raw.columns
        else None
    )
    join_matches = []
    for join, table in zip(spec.joins, dimensions):
        frame, matched = _left_join(frame, table, join)
        join_matches.append((matched, n))
    frame = type_columns(frame, spec, reject)

    examples = ()
    if spec.target_required:
        target = _target(frame, spec)
        if target_kind(spec.task).is_classification:
            target = backend.host_series_like(frame, label_keys(backend.to_pandas(target)))
        elif raw_target is not None:
            failed = raw_target.notna() & target.isna()
            examples = tuple(str(v) for v in backend.to_pandas(raw_target[failed]).unique()[:3])
        target_missing = target.isna()
        reject(target_missing, f"{spec.target}: missing target")
        if not target_kind(spec.task).is_classification:  # inf, 1e400 (read as inf), 1e300
            reject(~(target.abs() <= _FLOAT32_MAX), f"{spec.target}: target not a finite number within ±3.4e+38")
        if spec.classes:
            reject(~target.isin(list(spec.classes)), f"{spec.target}: label not in target.classes")
        transform = target_transform(spec.target_transform)
        if transform.above > -np.inf:
            reject(
                target <= transform.above,
                f"{spec.target}: at or below {transform.above:g}, outside target.transform {transform.name}",
            )
        # Classification labels are not checked here: the profile counts them and the ETL
        # stops with an error that says what the target holds.
    else:  # prediction: no target, nothing to reject for it
        target = raw[raw.columns[0]].isna().astype("float64") * np.nan
        target_missing = target.isna()
    weight = None
    if spec.weight:
        weight = as_float(frame[spec.weight])
        reject(weight.isna(), f"{spec.weight}: missing sample weight")
        reject(~(weight >= 0) | (weight == np.inf), f"{spec.weight}: sample weight not a finite number ≥ 0")
        reject(
            ((weight > 0) & (weight < _FLOAT32_TINY)) | (weight > _FLOAT32_MAX),
            f"{spec.weight}: sample weight outside float32's range (0, or 1.2e-38 to 3.4e+38)",
        )

    good = reasons == 0
    split = split_membership(raw[list(spec.split_key)], spec.validation_fraction, spec.split_seed)

    features = frame[list(spec.keep_columns)].copy() if spec.keep_columns else frame[[]].copy()
    for col in spec.numeric:
        features[col] = frame[col]
    for name, expression in spec.derived:
        features[name] = as_float(evaluate(expression, frame))
    for col in spec.datetime:
        for part in spec.datetime_parts:
            features[f"{col}_{part}"] = as_float(datetime_part(frame[col], part))
    for col in spec.categorical:
        features[col] = backend.as_strings(frame[col])
    features[spec.target] = target
    features[SPLIT_COLUMN] = split
    if weight is not None:
        features[WEIGHT_COLUMN] = weight
    # Division by zero in a derived feature is a missing value, not a number; so is a value the
    # float32 feature arrays cannot hold (1e300), whose square would also overflow the statistics.
    for col in spec.numeric_features:
        features[col] = features[col].where(features[col].abs() <= _FLOAT32_MAX)

    quarantine = raw[~good]
    quarantine = quarantine.assign(
        **{
            REASON_COLUMN: np.array(messages, dtype=object)[reasons[~good] - 1]
            if (~good).any()
            else np.array([], dtype=object)
        }
    )
    return PreparedPartition(features[good], quarantine, int(target_missing.sum()), tuple(join_matches), examples)


def type_columns(frame, spec: TableSpec, reject=None):
    """``frame``'s columns typed as the spec says (numbers as float64, datetimes parsed,
    ``input.types``, ``clean.valid_ranges``), each of them that ``frame`` holds.

    ``reject(mask, message)`` is told the rows a column refuses (a value that is not a
    number, a datetime or within its range); without it nothing is refused, only typed.
    This is how :func:`prepare_partition` types a partition and how the ONNX export types
    a dimension table's columns, so both type a value alike.
    """
    if reject is None:

        def reject(mask, message):
            pass

    frame = frame.copy(deep=False)

    def present(columns):
        return [col for col in columns if col in frame.columns]

    for col in present(spec.numeric):
        before = frame[col]
        frame[col] = as_float(before)
        reject(before.notna() & frame[col].isna(), f"{col}: not a number")
    for col in present(spec.datetime):
        before = frame[col]
        frame[col] = backend.to_datetime(before)
        reject(before.notna() & frame[col].isna(), f"{col}: not a datetime")
    for col, kind in spec.column_types:
        if col not in frame.columns:
            continue
        before = frame[col]
        if kind == "number":
            frame[col] = as_float(before, booleans=True)
            reject(before.notna() & frame[col].isna(), f"{col}: not a number")
        elif kind == "datetime":
            frame[col] = backend.to_datetime(before)
            reject(before.notna() & frame[col].isna(), f"{col}: not a datetime")
        else:
            frame[col] = backend.as_strings(before)
    for col, low, high in spec.valid_ranges:
        if col not in frame.columns:
            continue
        values = frame[col]
        if values.dtype.kind not in "fiubM":
            before, values = values, as_float(values)
            frame[col] = values
            reject(before.notna() & values.isna(), f"{col}: not a number")
        bound = pd.Timestamp if values.dtype.kind == "M" else float
        if low is not None:
            reject(values < bound(low), f"{col}: below {low}")
        if high is not None:
            reject(values > bound(high), f"{col}: above {high}")

    return frame


def datetime_part(series, part: str):
    """One part (``hour``, ``dayofweek``, ...) of a datetime column, as pandas names it."""
    accessor = series.dt
    modern = {"dayofweek": "day_of_week", "dayofyear": "day_of_year"}.get(part, part)
    return getattr(accessor, modern) if hasattr(accessor, modern) else getattr(accessor, part)


def as_float(series, booleans: bool = False):
    """``series`` as float64; unparseable strings become NaN (the caller quarantines them).

    With ``booleans``, the strings true/false (any case) read as 1/0, as CSV writers
    spell boolean columns that way.
    """
    if series.dtype.kind in "biuf":
        return series.astype("float64")
    if booleans:
        lowered = series.str.lower()
        series = series.where(~lowered.isin(["true", "false"]), (lowered == "true").astype("int64").astype(str))
    return backend.to_numeric(series).astype("float64")


def _target(frame, spec: TableSpec):
    """The target column: labels as read (classification) or numbers; an expression's value
    as a number (a condition gives 0/1)."""
    if spec.target_expression is None:
        if target_kind(spec.task).is_classification:
            return frame[spec.target]
        return as_float(frame[spec.target])
    value = as_float(evaluate(spec.target_expression, frame))
    # `NaN > 15` is False in pandas; a target computed from a missing input is missing.
    missing = None
    for col in spec.target_inputs:
        missing = frame[col].isna() if missing is None else missing | frame[col].isna()
    return value if missing is None else value.where(~missing)


def join_key(values, kind: str):
    """A join key column in its comparable form (see :attr:`JoinSpec.key_kinds`).

    ``integer`` keys compare exactly (no float rounding beyond 2**53); text that is not
    a whole number matches nothing.

    Examples
    --------
    >>> import pandas as pd
    >>> join_key(pd.Series(["7", "7.0", None, "x"]), "number").tolist()
    [7.0, 7.0, nan, nan]
    >>> join_key(pd.Series(["9007199254740993", "9007199254740992", "7.5"]), "integer").tolist()
    [9007199254740993, 9007199254740992, <NA>]
    >>> text = join_key(pd.Series(["2013-01-01T10:00:00Z", "2013-01-01 11:00", "soon"]), "datetime")
    >>> stamps = join_key(pd.Series(pd.to_datetime(["2013-01-01 10:00", "2013-01-01 11:00", None]).tz_localize("UTC")),
    ...                   "datetime")
    >>> text.tolist() == stamps.tolist()  # one instant, however it is stored; unparseable text is missing
    True
    """
    if kind == "datetime":
        return instants(values)
    if kind == "integer" and isinstance(values, pd.Series):
        if values.dtype.kind in "iu":
            return values.astype("Int64")
        if values.dtype.kind == "f":
            return values.where(values == values.round()).astype("Int64")
        text = values.astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
        whole = text.where(text.str.fullmatch(r"[+-]?\d{1,18}").fillna(False))
        return pd.to_numeric(whole, errors="coerce", dtype_backend="numpy_nullable").astype("Int64")
    if kind in ("number", "integer"):
        return as_float(values, booleans=True)
    return backend.as_strings(values)


def _left_join(frame, table, join):
    """Left join that keeps the fact table's rows and order, and never copies the partition.

    Each fact row's position in the (unique-keyed) dimension table is looked up, and
    the dimension columns are gathered by position; unmatched keys give nulls. The
    dimension table's keys arrive already in their comparable form.

    Returns
    -------
    (frame, int)
        The joined frame, and how many of its rows found a dimension row.
    """
    kinds = join.key_kinds or ("string",) * len(join.on)
    keys = frame[list(join.on)]
    keys = keys.assign(**{key: join_key(keys[key], kind) for key, kind in zip(join.on, kinds)})
    positions = backend.row_positions(keys, table[list(join.on)])
    gathered = backend.take_rows(table[list(join.columns)], positions)
    gathered.index = frame.index
    joined = frame.assign(**{join.rename.get(col, col): gathered[col] for col in join.columns})
    return joined, int((positions >= 0).sum())


def shuffle_keys(features, seed: int) -> np.ndarray:
    """A key in ``[0, 1)`` per row: a seeded hash of the row's values (host-side)."""
    hashed = pd.util.hash_pandas_object(backend.to_pandas(features), index=False).to_numpy()
    start = (int(seed) * 0x9E3779B97F4A7C15 + 1) % 2**64  # the same value as uint64 arithmetic, without its warning
    mixed = mix_hashes(np.full(len(hashed), start, dtype=np.uint64), hashed)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def keyed_rows(part: PreparedPartition, seed: int) -> tuple:
    """``(keys, features)``: the partition's good rows with their shuffle keys (see
    :func:`shuffle_keys`), the form rows travel in through the shuffle's stages."""
    return shuffle_keys(part.features, seed), part.features


def split_keyed(keyed: tuple, n: int, base: int, stage: int) -> list:
    """``keyed`` rows cut into ``base`` pieces by digit ``stage`` (base ``base``) of their
    destination partition ``floor(key * n)``: one stage of a staged all-to-all, as Dask's
    ``tasks`` shuffle does it.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> keys = np.array([0.05, 0.3, 0.55, 0.95])
    >>> [k.tolist() for k, _ in split_keyed((keys, pd.DataFrame({"v": range(4)})), 4, 2, 0)]
    [[0.05, 0.55], [0.3, 0.95]]
    """
    keys, frame = keyed
    destination = np.minimum((keys * n).astype(np.int64), n - 1)
    digit = (destination // base**stage) % base
    order = np.argsort(digit, kind="stable")
    bounds = np.searchsorted(digit[order], np.arange(base + 1), side="left")
    return [(keys[order[a:b]], frame.iloc[order[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def concat_keyed(*pieces: tuple, rows: int | None = None) -> tuple:
    """Several ``(keys, features)`` pieces as one (empty ones included: they keep the
    columns); ``rows``: only the first so many rows."""
    frames = [f for _, f in pieces]
    keys, frame = np.concatenate([k for k, _ in pieces]), backend.concat_frames(frames[0], frames)
    return (keys, frame) if rows is None else (keys[:rows], frame.iloc[:rows])


def gather_shuffled(part: PreparedPartition, keyed: tuple) -> PreparedPartition:
    """``part`` with its good rows replaced by ``keyed`` (its key range, gathered from every
    partition), in key order; its quarantined rows and counts stay (they belong to the input
    it read)."""
    keys, features = keyed
    order = np.argsort(keys, kind="stable")
    return part._replace(features=features.iloc[order].reset_index(drop=True))
