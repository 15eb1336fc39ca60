"""What a feature's training distribution looks like, and how new rows fall into it.

The ETL keeps, per feature, the bins of its training rows (:func:`reference_layout`):
numeric features in about :data:`DRIFT_BINS` quantile bins whose edges come from a
mergeable :class:`QuantileSketch` reduced with the profile, the outer bins open to
``±inf``; categorical features by their categories (at most :data:`KEPT_CATEGORIES`,
most frequent first), the rest as one bin. :func:`bin_counts` counts rows into those bins
— training rows at the ETL's write pass (exact counts), new rows at scoring — plus one bin
of missing values. Counts of partitions add (:meth:`DriftCounts.merge`): the driver only
sees the reduced sums, never a partition's rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardflow.core import backend
from shardflow.tasks.prepare import PreparedPartition
from shardflow.tasks.schema import SPLIT_COLUMN

#: Quantile bins of a numeric feature (deciles); fewer where quantiles coincide (a
#: feature with few distinct values).
DRIFT_BINS = 10
#: Categories of a categorical feature the reference names (most frequent first). A column
#: with more distinct values keeps these and counts the others as one bin; then a value
#: outside them may be rare or unseen, and the unseen share is not measured.
KEPT_CATEGORIES = 10_000
#: Points a :class:`QuantileSketch` keeps: its quantiles are within about
#: ``depth / SKETCH_POINTS`` of the true rank (depth: levels of the reduction tree).
SKETCH_POINTS = 1024
#: Values of one partition's column the sketch is drawn from (a seeded sample above this).
SKETCH_SAMPLE = 65_536


@dataclass
class QuantileSketch:
    """A column's distribution as at most :data:`SKETCH_POINTS` weighted points, mergeable.

    Each point ``values[i]`` stands for ``weights[i]`` rows at or below it and above the
    previous point. Merging two sketches and compressing keeps the total weight exact and
    the ranks within about ``1 / SKETCH_POINTS`` per merge, plenty for bin edges; the rows
    in each bin are counted exactly afterwards (:func:`bin_counts`).

    Examples
    --------
    >>> a = QuantileSketch.of(np.arange(0.0, 50.0))
    >>> b = QuantileSketch.of(np.array([np.nan, *np.arange(50.0, 100.0)]))
    >>> both = a.merge(b)
    >>> float(both.weights.sum()), both.quantiles([0.25, 0.5, 0.9]).tolist()
    (100.0, [24.0, 49.0, 89.0])
    """

    values: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, seed: int = 0) -> QuantileSketch:
        """The sketch of ``values`` (NaN skipped; a seeded sample of :data:`SKETCH_SAMPLE` above that)."""
        x = np.asarray(values, dtype=np.float64)
        x = x[~np.isnan(x)]
        n = len(x)
        if n > SKETCH_SAMPLE:
            x = x[np.random.default_rng(seed).integers(0, n, SKETCH_SAMPLE)]
        points, counts = np.unique(x, return_counts=True)
        return cls(points, counts * (n / max(1, len(x)))).compressed()

    @classmethod
    def empty(cls) -> QuantileSketch:
        return cls(np.zeros(0), np.zeros(0))

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        points, inverse = np.unique(np.concatenate([self.values, other.values]), return_inverse=True)
        weights = np.bincount(inverse, weights=np.concatenate([self.weights, other.weights]), minlength=len(points))
        return QuantileSketch(points, weights).compressed()

    def compressed(self, size: int = SKETCH_POINTS) -> QuantileSketch:
        """At most ``size`` points, at evenly spaced ranks; the largest value and the total kept."""
        if len(self.values) <= size:
            return self
        cumulative = np.cumsum(self.weights)
        targets = cumulative[-1] * np.arange(1, size + 1) / size
        keep = np.unique(np.minimum(np.searchsorted(cumulative, targets), len(cumulative) - 1))
        keep[-1] = len(cumulative) - 1
        return QuantileSketch(self.values[keep], np.diff(cumulative[keep], prepend=0.0))

    def quantiles(self, probabilities) -> np.ndarray:
        """The smallest point whose cumulative share reaches each probability (empty: no rows)."""
        if not len(self.values):
            return np.zeros(0)
        cumulative = np.cumsum(self.weights) / self.weights.sum()
        positions = np.searchsorted(cumulative, np.asarray(probabilities) - 1e-12)
        return self.values[np.minimum(positions, len(self.values) - 1)]


def quantile_edges(sketch: QuantileSketch, bins: int = DRIFT_BINS) -> list:
    """The inner edges of a numeric feature's bins: its ``1/bins … (bins-1)/bins`` quantiles,
    once each. Bin ``k`` holds ``edges[k-1] < x <= edges[k]``; the first and last are open.

    Examples
    --------
    >>> quantile_edges(QuantileSketch.of(np.arange(1.0, 101.0)), bins=4)
    [25.0, 50.0, 75.0]
    >>> quantile_edges(QuantileSketch.of(np.array([0.0] * 70 + [1.0] * 30)))  # two values: 3 bins
    [0.0, 1.0]
    """
    return [float(v) for v in np.unique(sketch.quantiles(np.arange(1, bins) / bins))]


def reference_layout(sketches: dict, category_counts: dict, kept: int = KEPT_CATEGORIES) -> dict:
    """The bins each feature is counted in: ``{"numeric": {column: edges}, "categorical":
    {column: {"categories": [...], "complete": bool}}}``.

    Parameters
    ----------
    sketches : dict of str to QuantileSketch
        The training rows' sketch of each numeric feature (the ETL's profile).
    category_counts : dict of str to pandas.Series
        Rows per category of each categorical feature over every row the ETL kept.
    kept : int
        At most this many categories per column, most frequent first (ties by value), as
        the encoder's vocabularies spell them; ``complete``: no other category was seen.
    """
    categorical = {}
    for col, counts in category_counts.items():
        order = sorted(zip(counts.index, counts.to_numpy()), key=lambda kv: (-int(kv[1]), str(kv[0])))
        categorical[col] = {"categories": [str(v) for v, _ in order[:kept]], "complete": len(order) <= kept}
    return {"numeric": {col: quantile_edges(s) for col, s in sketches.items()}, "categorical": categorical}


@dataclass
class DriftCounts:
    """Rows per bin of each feature (:func:`bin_counts`), summable over partitions.

    Attributes
    ----------
    rows : int
        Rows counted.
    counts : dict of str to numpy.ndarray
        Per feature, int64 counts: numeric ``[bin 0 … bin len(edges), missing]``;
        categorical ``[each kept category …, any other value, missing]``.
    """

    rows: int
    counts: dict

    def merge(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(self.rows + other.rows, {k: v + other.counts[k] for k, v in self.counts.items()})


def bin_counts(features, layout: dict, rows: np.ndarray | None = None) -> DriftCounts:
    """Count one partition's rows into each feature's bins (``layout``: :func:`reference_layout`).

    ``rows``: a boolean mask of the rows to count (default: all). Numeric values go by
    ``edges[k-1] < x <= edges[k]``; categories are looked up as the encoder looks them up
    (:func:`shardflow.core.backend.category_codes`).

    Examples
    --------
    >>> import pandas as pd
    >>> layout = {"numeric": {"x": [1.0, 2.0]}, "categorical": {"c": {"categories": ["a", "b"]}}}
    >>> frame = pd.DataFrame({"x": [0.5, 1.0, 1.5, 9.0, None], "c": ["a", "a", "z", None, "b"]})
    >>> counts = bin_counts(frame, layout).counts
    >>> counts["x"].tolist(), counts["c"].tolist()
    ([2, 1, 1, 1], [2, 1, 1, 1])
    """
    counts = {}
    for col, edges in layout["numeric"].items():
        x = backend.to_host_array(features[col], np.float64)
        x = x if rows is None else x[rows]
        missing = np.isnan(x)
        binned = np.bincount(
            np.searchsorted(np.asarray(edges, dtype=np.float64), x[~missing]), minlength=len(edges) + 1
        )
        counts[col] = np.append(binned, missing.sum()).astype(np.int64)
    for col, spec in layout["categorical"].items():
        n = len(spec["categories"])
        codes = backend.category_codes(features[col], spec["categories"]) if len(features) else np.zeros(0, np.int64)
        codes = np.where(codes < 0, n, codes)
        codes[backend.to_host_array(features[col].isna(), bool)] = n + 1
        counts[col] = np.bincount(codes if rows is None else codes[rows], minlength=n + 2).astype(np.int64)
    return DriftCounts(int(len(features) if rows is None else rows.sum()), counts)


def partition_reference_counts(part: PreparedPartition, layout: dict) -> DriftCounts:
    """The training rows of one prepared partition (the ETL's), counted into their bins."""
    training = ~backend.to_host_array(part.features[SPLIT_COLUMN], bool)
    return bin_counts(part.features, layout, training)


def combine_drift_counts(a: DriftCounts, b: DriftCounts) -> DriftCounts:
    return a.merge(b)


def reference_of(layout: dict, counts: DriftCounts) -> dict:
    """The reference the ETL stores (``summary.json``'s ``drift_reference``): the layout with
    the training rows' counts per bin, as JSON-ready lists.

    ``numeric``: ``{column: {"edges", "counts" (one per bin), "missing"}}``; ``categorical``:
    ``{column: {"categories", "counts" (one per category), "other" (training rows of the
    categories not kept), "missing", "complete"}}``; ``rows``: training rows counted.
    """
    numeric = {
        col: {"edges": edges, "counts": counts.counts[col][:-1].tolist(), "missing": int(counts.counts[col][-1])}
        for col, edges in layout["numeric"].items()
    }
    categorical = {
        col: {
            "categories": spec["categories"],
            "counts": counts.counts[col][:-2].tolist(),
            "other": int(counts.counts[col][-2]),
            "missing": int(counts.counts[col][-1]),
            "complete": bool(spec["complete"]),
        }
        for col, spec in layout["categorical"].items()
    }
    return {"rows": counts.rows, "bins": DRIFT_BINS, "numeric": numeric, "categorical": categorical}


def layout_of(reference: dict) -> dict:
    """The bins of a stored reference (:func:`reference_of`), to count new rows into."""
    return {
        "numeric": {col: ref["edges"] for col, ref in reference["numeric"].items()},
        "categorical": {
            col: {"categories": ref["categories"], "complete": ref["complete"]}
            for col, ref in reference["categorical"].items()
        },
    }
