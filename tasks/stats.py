"""Per-partition statistics and the associative functions that combine them.

Every ``partition_*`` function summarises one partition into a small host-side object;
every ``combine_*`` function merges two summaries. Combining is associative, so the
pipeline can reduce thousands of partitions with a tree of any shape and get the same
answer as one pass over the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shardflow.core import backend
from shardflow.tasks.drift import QuantileSketch
from shardflow.tasks.labels import MAX_CLASSES
from shardflow.tasks.prepare import PreparedPartition
from shardflow.tasks.schema import REASON_COLUMN, SPLIT_COLUMN, WEIGHT_COLUMN, TableSpec
from shardflow.tasks.targets import target_kind, target_transform


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, min and max of each column (NaN skipped).

    Merged with Chan et al.'s pairwise update, which stays accurate where the
    naive sum-of-squares formula cancels catastrophically (timestamps, large means).

    Examples
    --------
    >>> import pandas as pd
    >>> a = Moments.of(pd.DataFrame({"x": [1.0, 2.0]}), ["x"])
    >>> b = Moments.of(pd.DataFrame({"x": [3.0, None, 6.0]}), ["x"])
    >>> both = a.merge(b)
    >>> both.count.tolist(), both.mean.tolist(), round(float(both.std[0]), 6)
    ([4.0], [3.0], 1.870829)
    """

    columns: list
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def of(cls, frame, columns, lower=None, upper=None) -> Moments:
        """Moments of ``frame[columns]``, optionally clipped to per-column bounds first."""
        data = frame[list(columns)]
        if lower is not None:
            data = clip_columns(data, columns, lower, upper)
        count = _host(data.count()).astype(np.float64)
        mean = _host(data.mean())
        var = _host(data.var(ddof=0))
        return cls(
            list(columns),
            count,
            np.where(count > 0, mean, 0.0),
            np.where(count > 0, var * count, 0.0),
            np.where(count > 0, _host(data.min()), np.inf),
            np.where(count > 0, _host(data.max()), -np.inf),
        )

    def merge(self, other: Moments) -> Moments:
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        return Moments(
            self.columns,
            n,
            self.mean + delta * other.count / safe,
            self.m2 + other.m2 + delta**2 * self.count * other.count / safe,
            np.minimum(self.minimum, other.minimum),
            np.maximum(self.maximum, other.maximum),
        )

    @classmethod
    def empty(cls, columns) -> Moments:
        """The moments of no rows (the identity of :meth:`merge`)."""
        k = len(columns)
        return cls(list(columns), np.zeros(k), np.zeros(k), np.zeros(k), np.full(k, np.inf), np.full(k, -np.inf))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (``ddof=0``); NaN for an empty column."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.m2 / self.count)


@dataclass
class Profile:
    """Everything the ETL learns about the table in its first pass."""

    rows: int
    partition_rows: list
    quarantined: dict
    numeric: Moments
    category_counts: dict
    target: Moments
    validation_rows: int
    missing_targets: int = 0
    #: Classification only: rows per label (its key, see :mod:`shardflow.tasks.labels`), for
    #: at most ``TARGET_VALUES_KEPT`` distinct labels; ``target_values_truncated`` says that
    #: more were seen.
    target_values: dict = field(default_factory=dict)
    target_values_truncated: bool = False
    #: Per join, ``[rows whose key found a dimension row, rows]`` over every input row.
    join_matches: list = field(default_factory=list)
    #: Regression only: moments of the target as the models see it (after
    #: ``target.transform``) over the training split, to standardise it.
    model_target: Moments | None = None
    #: Regression only: a few target values that were not numbers.
    target_examples: list = field(default_factory=list)
    #: Per partition index: ``[target mean, [numeric feature means]]`` over its kept rows
    #: (the target mean is the mean label code for classification, see
    #: :func:`partition_differences`); how much the partitions differ.
    partition_means: dict = field(default_factory=dict)
    #: With sample weights: ``[training rows' total weight, validation rows' total weight]``
    #: (float64, as the weights are kept), else None.
    weight_sums: list | None = None
    #: Per numeric feature: the :class:`~shardflow.tasks.drift.QuantileSketch` of its training
    #: rows (the edges of the bins drift is measured in at scoring).
    sketches: dict = field(default_factory=dict)


def partition_profile(part: PreparedPartition, spec: TableSpec, index: int) -> Profile:
    """Summarise one prepared partition: counts, moments, category frequencies."""
    features, quarantine, missing_targets = part.features, part.quarantine, part.missing_targets
    reasons = backend.to_pandas(quarantine[REASON_COLUMN]).value_counts()
    counts = {}
    for col in spec.categorical:
        vc = backend.to_pandas(features[col].value_counts(dropna=True))
        vc.index = vc.index.astype(object)
        counts[col] = vc.astype(np.int64)
    partition_rows = [0] * (index + 1)
    partition_rows[index] = len(features)
    values, truncated = {}, False
    target_columns = [spec.target]
    if target_kind(spec.task).is_classification:
        vc = backend.to_pandas(features[spec.target].value_counts(dropna=True))
        values, truncated = _kept_values({str(k): int(v) for k, v in vc.items()})
        target = model_target = Moments.empty(target_columns)
        target_mean = None  # from the label counts, once the classes are known
    else:
        target = Moments.of(features, target_columns)
        training = features[~features[SPLIT_COLUMN]][target_columns]
        transformed = training.assign(
            **{spec.target: target_transform(spec.target_transform).forward(training[spec.target])}
        )
        model_target = Moments.of(transformed, target_columns)
        target_mean = float(target.mean[0]) if target.count[0] else None
    numeric = Moments.of(features, spec.numeric_features)
    means = [float(m) if c else None for m, c in zip(numeric.mean, numeric.count)]
    weight_sums = None
    if WEIGHT_COLUMN in features.columns:
        weights = backend.to_host_array(features[WEIGHT_COLUMN], np.float64)
        validation = backend.to_host_array(features[SPLIT_COLUMN], bool)
        weight_sums = [float(weights[~validation].sum()), float(weights[validation].sum())]
    training = ~backend.to_host_array(features[SPLIT_COLUMN], bool)
    sketches = {
        col: QuantileSketch.of(backend.to_host_array(features[col], np.float64)[training], seed=index)
        for col in spec.numeric_features
    }
    return Profile(
        rows=len(features),
        partition_rows=partition_rows,
        quarantined={str(k): int(v) for k, v in reasons.items()},
        numeric=numeric,
        category_counts=counts,
        target=target,
        validation_rows=int(backend.to_host_array(features[SPLIT_COLUMN], bool).sum()),
        missing_targets=missing_targets,
        target_values=values,
        target_values_truncated=truncated,
        join_matches=[list(m) for m in part.join_matches],
        model_target=model_target,
        target_examples=list(part.target_examples),
        partition_means={index: [target_mean, means, values]},
        weight_sums=weight_sums,
        sketches=sketches,
    )


#: Distinct labels a classification profile keeps: every class of a valid target, and one
#: more to tell that there are too many.
TARGET_VALUES_KEPT = MAX_CLASSES + 1


def _kept_values(counts: dict) -> tuple:
    """The ``TARGET_VALUES_KEPT`` most frequent values, and whether any were dropped."""
    if len(counts) <= TARGET_VALUES_KEPT:
        return counts, False
    kept = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:TARGET_VALUES_KEPT]
    return dict(kept), True


def combine_profiles(a: Profile, b: Profile) -> Profile:
    """Merge two profiles (associative; partition row counts are kept by index)."""
    width = max(len(a.partition_rows), len(b.partition_rows))
    rows = [0] * width
    for source in (a.partition_rows, b.partition_rows):
        for i, r in enumerate(source):
            rows[i] += r
    quarantined = dict(a.quarantined)
    for k, v in b.quarantined.items():
        quarantined[k] = quarantined.get(k, 0) + v
    counts = {
        col: a.category_counts[col].add(b.category_counts[col], fill_value=0).astype(np.int64)
        for col in a.category_counts
    }
    return Profile(
        rows=a.rows + b.rows,
        partition_rows=rows,
        quarantined=quarantined,
        numeric=a.numeric.merge(b.numeric),
        category_counts=counts,
        target=a.target.merge(b.target),
        validation_rows=a.validation_rows + b.validation_rows,
        missing_targets=a.missing_targets + b.missing_targets,
        **_combined_target_values(a, b),
        join_matches=[[x + y for x, y in zip(ma, mb)] for ma, mb in zip(a.join_matches, b.join_matches)],
        model_target=a.model_target.merge(b.model_target),
        target_examples=list(dict.fromkeys(a.target_examples + b.target_examples))[:3],
        partition_means={**a.partition_means, **b.partition_means},
        weight_sums=None
        if a.weight_sums is None or b.weight_sums is None
        else [x + y for x, y in zip(a.weight_sums, b.weight_sums)],
        sketches={col: sketch.merge(b.sketches[col]) for col, sketch in a.sketches.items()},
    )


def partition_differences(profile: Profile, numeric: list, classes: list | None = None) -> dict:
    """How different the partitions are: each partition's target mean and feature means, and
    the largest gap to the table's mean in units of the table's standard deviation.

    Per-partition models and their averages assume partitions drawn from one distribution;
    a partition whose target mean sits a standard deviation away from the others' has a
    model that extrapolates. For classification the target mean is the share of each
    class (``classes``, in model order); its gap is in units of the class share's binomial
    standard deviation ``sqrt(p (1 - p))``.

    Returns
    -------
    dict
        ``partitions`` (per partition: ``rows``, ``target_mean`` or ``class_shares``,
        ``numeric_means``), ``target_gap`` and ``numeric_gap`` (``{feature: gap}``),
        the largest ``|partition mean - table mean| / table std`` over partitions with rows.
    """
    rows = profile.partition_rows
    entries, target_gaps = [], []
    std = np.nan_to_num(profile.numeric.std)
    numeric_gaps = np.zeros(len(numeric))
    shares = np.array([profile.target_values.get(c, 0) for c in classes or []], dtype=float)
    shares = shares / max(1.0, shares.sum())
    for index in range(len(rows)):
        target_mean, means, values = profile.partition_means.get(index, [None, [None] * len(numeric), {}])
        entry = {"rows": int(rows[index]), "numeric_means": means}
        if classes is not None:
            counts = np.array([values.get(c, 0) for c in classes], dtype=float)
            part_shares = counts / max(1.0, counts.sum())
            entry["class_shares"] = [round(float(v), 6) for v in part_shares]
            if counts.sum():
                spread = np.sqrt(shares * (1 - shares))
                target_gaps.append(float(np.max(np.abs(part_shares - shares) / np.where(spread > 0, spread, 1.0))))
        else:
            entry["target_mean"] = target_mean
            target_std = float(np.nan_to_num(profile.target.std[0]))
            if target_mean is not None and target_std > 0:
                target_gaps.append(abs(target_mean - float(profile.target.mean[0])) / target_std)
        for k, m in enumerate(means):
            if m is not None and std[k] > 0:
                numeric_gaps[k] = max(numeric_gaps[k], abs(m - profile.numeric.mean[k]) / std[k])
        entries.append(entry)
    return {
        "partitions": entries,
        "target_gap": round(max(target_gaps, default=0.0), 4),
        "numeric_gap": {col: round(float(g), 4) for col, g in zip(numeric, numeric_gaps)},
    }


def _combined_target_values(a: Profile, b: Profile) -> dict:
    merged = dict(a.target_values)
    for k, v in b.target_values.items():
        merged[k] = merged.get(k, 0) + v
    values, truncated = _kept_values(merged)
    return {
        "target_values": values,
        "target_values_truncated": truncated or a.target_values_truncated or b.target_values_truncated,
    }


def partition_clipped_moments(part: PreparedPartition, columns, lower, upper) -> Moments:
    """Moments of one partition's numeric features after clipping to global bounds."""
    return Moments.of(part.features, columns, lower, upper)


def combine_moments(a: Moments, b: Moments) -> Moments:
    return a.merge(b)


def clip_columns(frame, columns, lower, upper):
    """``frame`` with each of ``columns`` clipped to its own ``[lower, upper]``."""
    return frame.assign(**{col: frame[col].clip(lo, hi) for col, lo, hi in zip(columns, lower, upper)})


def _host(series) -> np.ndarray:
    return np.asarray(backend.to_pandas(series), dtype=np.float64)
