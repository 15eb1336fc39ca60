"""Why a model predicts what it does, on a worker: exact per-row feature contributions of the
XGBoost models (TreeSHAP, by XGBoost itself), and permutation importance for the others,
as fixed-size sums per partition that are added on the cluster.

Contributions are in the model's margin (log-odds for a binary target, each class's score
for a multi-class one, the value — transformed, e.g. ``log1p`` — for regression): per row
they add up, with the bias (the last column), to the model's raw prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardflow.tasks.metrics import finish_metrics, partial_metrics, primary_metric
from shardflow.tasks.models import load_booster, weighted_average

#: Most validation rows, over all partitions, whose exact contributions are computed (a
#: seeded sample, split evenly across the partitions), for models cheap to explain.
EXPLAIN_ROWS = 1_000
#: Fewest such rows, however costly the model: the mean |contribution| of 200 rows ranks
#: the features as 1,000 do, and the report's summary plot keeps its points.
MIN_EXPLAIN_ROWS = 200
#: TreeSHAP work per model, in the units of :func:`treeshap_row_cost` (leaves × depth² summed
#: over the trees: exact TreeSHAP is O(trees · leaves · depth²) a row). A unit took 3.6 ns on
#: one core here, so the budget is about one core-second: 150 trees of depth 8 (about 1.5M
#: units a row, 4 ms on two cores) get the 200 rows, 300 trees of depth 4 all 1,000. Without
#: a budget, 1,000 rows of the former took 4 s of a 20 s job.
EXPLAIN_BUDGET = 280_000_000
#: Rows per partition kept for the report's per-feature summary (value against contribution).
SAMPLE_ROWS = 200
#: Validation rows, over all partitions, that permutation importance scores (a seeded sample
#: split evenly across the partitions): each feature costs one prediction of every row by the
#: model, an ensemble's every member.
PERMUTATION_ROWS = 20_000


def xgboost_contributions(model: bytes, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """Exact TreeSHAP contributions of one XGBoost model: ``(rows, features + 1)``, or
    ``(rows, classes, features + 1)`` for a multi-class model; the last column is the bias."""
    import xgboost as xgb

    booster = load_booster(model, nthread)
    matrix = xgb.DMatrix(
        np.ascontiguousarray(x, dtype=np.float32),
        feature_names=booster.feature_names,
        feature_types=booster.feature_types,
        enable_categorical=True,
    )
    return booster.predict(matrix, pred_contribs=True).astype(np.float64)


def treeshap_row_cost(model: bytes) -> int:
    """TreeSHAP's work for one row of an XGBoost model: Σ over its trees of leaves × depth²,
    the depth estimated as ⌈log₂ leaves⌉ (the trees of ``hist`` grown depth-wise are nearly
    full); a linear booster's is 0.

    Examples
    --------
    >>> import xgboost as xgb
    >>> x = np.arange(64, dtype=np.float32).reshape(32, 2)
    >>> booster = xgb.train({"max_depth": 2, "min_child_weight": 0}, xgb.DMatrix(x, x[:, 0] % 5), 3)
    >>> treeshap_row_cost(bytes(booster.save_raw("ubj")))  # three trees of three leaves, depth 2: 3 × 3 × 2²
    36
    """
    import re

    text = bytes(load_booster(model).save_raw("json"))
    cost = 0
    for nodes in re.findall(rb'"num_nodes":"?(\d+)', text):
        leaves = (int(nodes) + 1) // 2
        cost += leaves * max(1, (leaves - 1).bit_length()) ** 2
    return cost


def explained_rows(cost: int, partitions: int) -> int:
    """Validation rows explained per partition for a model whose rows cost ``cost`` each
    (:func:`treeshap_row_cost`; an ensemble's, the sum of its members'): as many as
    :data:`EXPLAIN_BUDGET` affords, between :data:`MIN_EXPLAIN_ROWS` and :data:`EXPLAIN_ROWS`
    over all partitions.

    Examples
    --------
    >>> explained_rows(48, 2), explained_rows(1_500_000, 2), explained_rows(76_000, 1), explained_rows(0, 3)
    (500, 100, 1000, 334)
    """
    total = EXPLAIN_ROWS if cost <= 0 else min(EXPLAIN_ROWS, max(MIN_EXPLAIN_ROWS, EXPLAIN_BUDGET // cost))
    return max(1, -(-total // max(partitions, 1)))


def contributions_of_booster(payload: dict, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """The global XGBoost's contributions (``payload["model"]``)."""
    return xgboost_contributions(payload["model"], x, nthread)


def contributions_of_ensemble(payload: dict, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """Per-partition models (``models``, ``weights``): their contributions averaged with the
    ensemble's weights (each member's add up to its margin; the average, to the members'
    weighted mean margin)."""
    return weighted_average([xgboost_contributions(m, x, nthread) for m in payload["models"]], payload["weights"])


def contributions_by_group(payload: dict, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """Each row's contributions from its own group's model, or the global one (``fallback``)."""
    from shardflow.tasks.groups import rows_by_model

    out = None
    for model, rows in rows_by_model(payload, x):
        found = xgboost_contributions(model, x[rows], nthread)
        if out is None:
            out = np.zeros((len(x),) + found.shape[1:])
        out[rows] = found
    return out if out is not None else np.zeros((0, x.shape[1] + 1))


@dataclass
class Explanation:
    """One family's contribution sums over some validation rows (added across partitions)."""

    rows: int
    abs_sum: np.ndarray  #: Σ |contribution| per feature (and class), bias last
    sample_x: np.ndarray  #: sampled rows' feature values
    sample_c: np.ndarray  #: their contributions

    def merge(self, other: Explanation) -> Explanation:
        return Explanation(
            self.rows + other.rows,
            self.abs_sum + other.abs_sum,
            np.concatenate([self.sample_x, other.sample_x]),
            np.concatenate([self.sample_c, other.sample_c]),
        )


def explain_partition(shard, explainers: dict, *, seed: int, rows: dict, nthread: int | None = None) -> dict:
    """``{family: Explanation}`` of (a seeded sample of at most ``rows[family]`` of) this
    partition's validation rows; ``explainers`` maps a family to ``(contributions function,
    payload)``."""
    out = {}
    for name, (explain, payload) in explainers.items():
        rng = np.random.default_rng(seed)
        x = shard.x_valid
        if len(x) > rows[name]:
            x = x[np.sort(rng.choice(len(x), rows[name], replace=False))]
        keep = np.sort(rng.choice(len(x), min(SAMPLE_ROWS, len(x)), replace=False)) if len(x) else np.zeros(0, int)
        found = explain(payload, x, nthread)
        out[name] = Explanation(len(x), np.abs(found).sum(axis=0), x[keep], found[keep])
    return out


def explain_rows(partitions: int, total: int = EXPLAIN_ROWS, members: int = 1) -> int:
    """Validation rows explained per partition: ``total`` (:data:`EXPLAIN_ROWS`, or
    :data:`PERMUTATION_ROWS`) split evenly, over the model's ``members`` for an ensemble (each
    row costs a prediction of every member) but never below a quarter of ``total``.

    Examples
    --------
    >>> explain_rows(2), explain_rows(3), explain_rows(5_000), explain_rows(16, PERMUTATION_ROWS)
    (500, 334, 1, 1250)
    >>> explain_rows(16, EXPLAIN_ROWS, members=16), explain_rows(2, EXPLAIN_ROWS, members=2)
    (16, 250)
    """
    budget = max(total // 4, total // max(members, 1))
    return max(1, -(-budget // max(partitions, 1)))


def combine_explanations(a: dict, b: dict) -> dict:
    return {name: a[name].merge(b[name]) for name in a}


def permutation_partials(
    shard, predictors: dict, scoring, *, seed: int, rows: dict, nthread: int | None = None
) -> dict:
    """``{family: [partial metric sums with feature j's values permuted, for every j], plus
    the unpermuted sums last}`` on (a seeded sample of at most ``rows[family]`` of) this
    partition's validation rows."""
    out = {}
    for name, (predict, payload) in predictors.items():
        rng = np.random.default_rng(seed)
        kept = np.arange(len(shard.y_valid))
        if len(kept) > rows[name]:
            kept = np.sort(rng.choice(kept, rows[name], replace=False))
        x, y = shard.x_valid[kept], shard.y_valid[kept]
        w = None if shard.w_valid is None else shard.w_valid[kept]
        # Every feature's permuted copy and the rows as they are, scored in one call (a call
        # per copy paid an ensemble's per-member overhead once per feature).
        copies = []
        for j in range(x.shape[1]):
            permuted = x.copy()
            permuted[:, j] = rng.permutation(permuted[:, j])
            copies.append(permuted)
        scores = np.asarray(predict(payload, np.concatenate([*copies, x]), nthread, {}))
        out[name] = [partial_metrics(y, block, scoring, w) for block in np.split(scores, len(copies) + 1)]
    return out


def combine_permutations(a: dict, b: dict) -> dict:
    from shardflow.tasks.metric_sums import combine_metrics

    return {name: [combine_metrics(p, q) for p, q in zip(a[name], b[name])] for name in a}


def permutation_importance(sums: list, scoring) -> list:
    """Each feature's importance: how much worse the task's primary metric is with its
    values permuted (positive: the model relies on it)."""
    from shardflow.tasks.metric_sums import metric_direction

    metric = primary_metric(scoring.task)
    base = finish_metrics(sums[-1], scoring).get(metric, float("nan"))
    sign = 1.0 if metric_direction(metric) == "max" else -1.0
    return [sign * (base - finish_metrics(s, scoring).get(metric, float("nan"))) for s in sums[:-1]]
