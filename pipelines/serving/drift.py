"""Drift at scoring: new rows measured against the training distribution the ETL kept.

The ETL stores each feature's bins and its training rows' counts in them
(``summary.json``'s ``drift_reference``, see :mod:`shardflow.tasks.drift`). ``predict``
counts the new rows into the same bins on the cluster (per-partition sums, reduced in a
tree: no partition's rows reach the driver) in the same compute as the predictions, and
:func:`drift_report` compares them:

- **PSI** (population stability index) per feature, ``Σ (a − e) · ln(a / e)`` over the
  bins, ``e`` and ``a`` the training and new shares of each bin, each at least
  :data:`PSI_EPSILON` (an empty bin would make the logarithm infinite). Missing values are
  one bin; a categorical's bins are its :data:`~shardflow.tasks.drift.DRIFT_BINS` most
  frequent categories, the other seen ones together, unseen ones, missing.
  Above :data:`PSI_THRESHOLD` (0.2, the usual "significant shift"; 0.1–0.2 is "moderate")
  a feature has drifted.
- **Unseen share**: the share of the scored rows whose category the ETL never saw (the
  model codes them as "other"); above :data:`UNSEEN_THRESHOLD` a feature has drifted.
- **Missing share**, new and in training (reported; its change counts in the PSI).

The report is written beside the predictions (``_drift.json``: Parquet readers skip names
starting with ``_``), each drifted feature is logged as a warning, and ``fail=True``
(``--fail-on-drift``) raises :class:`DriftError` before the output appears.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from shardflow.core.errors import ShardflowError
from shardflow.pipelines.records.artifacts import verified_path
from shardflow.pipelines.records.manifest import EtlSummary
from shardflow.pipelines.records.rundir import RunDir
from shardflow.tasks.drift import DRIFT_BINS

logger = logging.getLogger("shardflow.predict")

#: A feature whose PSI exceeds this has drifted (0.1–0.2: moderate shift, over 0.2: significant).
PSI_THRESHOLD = 0.2
#: A categorical feature whose share of rows with categories never seen in training exceeds
#: this has drifted.
UNSEEN_THRESHOLD = 0.01
#: Smallest share a bin counts with in the PSI, training's or the new rows'.
PSI_EPSILON = 1e-4
#: The drift report, beside the predictions.
DRIFT_FILE = "_drift.json"


class DriftError(ShardflowError):
    """``--fail-on-drift``: the new rows drifted from the training rows; nothing was written."""


def population_stability_index(expected, actual, epsilon: float = PSI_EPSILON) -> float | None:
    """PSI of ``actual`` counts per bin against ``expected`` ones (None: no actual rows).

    Examples
    --------
    >>> round(population_stability_index([50, 50], [50, 50]), 6)
    0.0
    >>> round(population_stability_index([50, 50], [60, 40]), 4)  # 0.1·ln(1.2) + 0.1·ln(1.25)
    0.0405
    """
    expected, actual = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if actual.sum() == 0 or expected.sum() == 0:
        return None
    e = np.maximum(expected / expected.sum(), epsilon)
    a = np.maximum(actual / actual.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def read_reference(run_dir, manifest) -> dict | None:
    """The run's drift reference (from its ``summary.json``, checked against the manifest), or
    None for a run made before the ETL kept one."""
    run = RunDir(run_dir)
    if run.relative(run.summary) not in manifest.artifacts:
        return None
    path = verified_path(run.path, run.relative(run.summary), manifest)
    return EtlSummary.from_json(path.read_text(), path).drift_reference or None


def _shares(counts, rows: int) -> list:
    return [round(float(c) / rows, 6) if rows else None for c in counts]


def drift_report(
    reference: dict, counts, *, psi_threshold: float = PSI_THRESHOLD, unseen_threshold: float = UNSEEN_THRESHOLD
) -> dict:
    """Compare new rows' counts (:class:`~shardflow.tasks.drift.DriftCounts`) with the reference.

    Returns
    -------
    dict
        ``rows``, ``reference_rows``, the thresholds and ``epsilon``; ``features``: per feature
        its ``kind``, ``psi``, ``missing_share``, ``reference_missing_share``, for a categorical
        ``unseen_share`` (None where the reference kept only the most frequent of many
        categories); ``drifted``: ``{feature: [why, ...]}`` of the features over a threshold.
    """
    rows, features, drifted = counts.rows, {}, {}
    for col, ref in reference["numeric"].items():
        new = counts.counts[col]
        expected = [*ref["counts"], ref["missing"]]
        features[col] = {"kind": "numeric", "psi": population_stability_index(expected, new)}
        features[col].update(_missing(ref["missing"], reference["rows"], new[-1], rows))
    for col, ref in reference["categorical"].items():
        new, k, top = counts.counts[col], len(ref["categories"]), DRIFT_BINS
        complete = ref["complete"]
        # bins: the most frequent categories, the other seen ones, unseen ones, missing
        expected = [*ref["counts"][:top], sum(ref["counts"][top:]) + ref["other"], 0, ref["missing"]]
        unseen = int(new[k]) if complete else 0
        actual = [*new[: min(top, k)], int(new[top:k].sum()) + int(new[k]) - unseen, unseen, new[k + 1]]
        features[col] = {
            "kind": "categorical",
            "psi": population_stability_index(expected, actual),
            "unseen_share": (_shares([unseen], rows)[0] if complete else None),
        }
        features[col].update(_missing(ref["missing"], reference["rows"], new[-1], rows))
    for col, measured in features.items():
        why = []
        if measured["psi"] is not None and measured["psi"] > psi_threshold:
            why.append(f"PSI {measured['psi']:.3g} > {psi_threshold:g}")
        unseen = measured.get("unseen_share")
        if unseen is not None and unseen > unseen_threshold:
            why.append(f"unseen categories in {unseen:.1%} of rows > {unseen_threshold:.1%}")
        measured["psi"] = None if measured["psi"] is None else round(measured["psi"], 6)
        measured["drifted"] = bool(why)
        if why:
            drifted[col] = why
    return {
        "rows": rows,
        "reference_rows": reference["rows"],
        "psi_threshold": psi_threshold,
        "unseen_threshold": unseen_threshold,
        "epsilon": PSI_EPSILON,
        "drifted": drifted,
        "features": features,
    }


def _missing(reference_missing, reference_rows, missing, rows) -> dict:
    return {
        "missing_share": _shares([missing], rows)[0],
        "reference_missing_share": _shares([reference_missing], reference_rows)[0],
    }


def record_drift(report: dict, output_dir, *, fail: bool, output) -> None:
    """Write ``report`` into the (temporary) output directory, warn once per drifted feature,
    and with ``fail`` raise :class:`DriftError` naming them (the output then never appears)."""
    for col, why in report["drifted"].items():
        logger.warning("drift: feature %r of the input differs from the training rows: %s", col, "; ".join(why))
    if not report["drifted"]:
        worst = max(
            ((c, f["psi"]) for c, f in report["features"].items() if f["psi"] is not None),
            key=lambda kv: kv[1],
            default=(None, 0.0),
        )
        logger.info("drift: no feature over the thresholds (largest PSI %.3g, %r)", worst[1], worst[0])
    if fail and report["drifted"]:
        named = ", ".join(f"{col!r} ({'; '.join(why)})" for col, why in report["drifted"].items())
        raise DriftError(
            f"--fail-on-drift: the input drifted from the training rows on {named}; nothing written to {output}"
        )
    (output_dir / DRIFT_FILE).write_text(json.dumps(report, indent=1))
