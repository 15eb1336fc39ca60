"""What the ETL stage finds out about its input and records of it in ``summary.json``.

The checks of the profile (pass 1 of :func:`~shardflow.pipelines.etl.stage.etl`) that refuse an
input with one line naming the fix (no rows, an all-null target, every row quarantined,
an empty split, a zero weight sum), the match rate of each join, the differences between
the partitions (with a warning when per-partition models would extrapolate), and the
stage summary these feed. All of it runs on the client, on the reduced profile.
"""

from __future__ import annotations

import logging

import numpy as np

from shardflow.core.errors import InputError
from shardflow.pipelines.etl.target_fit import check_labels, check_target_type
from shardflow.pipelines.families.specs import SPECS
from shardflow.pipelines.records.manifest import EtlSummary
from shardflow.pipelines.setup.config import Config
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.stats import partition_differences
from shardflow.tasks.targets import target_kind

logger = logging.getLogger("shardflow.etl")

#: A partition whose target mean is this many of the table's standard deviations from the
#: table's mean makes per-partition models extrapolate: the ETL says so.
TARGET_GAP_WARNING = 0.25


def check_profile(profile, config: Config, source) -> None:
    """Refuse an input the profile shows unusable, before anything is written.

    Parameters
    ----------
    profile : Profile
        The combined profile of every partition (see :func:`~shardflow.tasks.stats.partition_profile`).
    config : Config
        The job.
    source : Source
        The inspected input.

    Raises
    ------
    InputError
        No rows, a target null in every row, every row quarantined, a classification target
        with unusable labels, a split that leaves no training or no validation rows, or
        rows whose weights sum to 0.
    """
    quarantined = sum(profile.quarantined.values())
    if profile.rows + quarantined == 0:
        raise InputError(f"input.path {config.input.path!r}: the dataset has no rows")
    check_target_type(profile, config)
    if profile.missing_targets == profile.rows + quarantined:
        what = "target.expression" if config.target.expression else "target.column"
        raise InputError(
            f"target {config.target.column!r} is null in every row of {config.input.path!r}; check config key '{what}'"
        )
    if profile.rows == 0:
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(profile.quarantined.items(), key=lambda kv: -kv[1]))
        raise InputError(
            f"every row of {config.input.path!r} was quarantined: {reasons}; check clean.valid_ranges and the input"
        )
    if target_kind(config.target.task).is_classification:
        check_labels(profile, config)
    train_rows = profile.rows - profile.validation_rows
    if train_rows == 0 or profile.validation_rows == 0:
        raise InputError(
            f"the split of {config.input.path!r} left {train_rows} training and {profile.validation_rows} "
            "validation rows; both are needed: adjust split.validation_fraction (or split.key, if few "
            "distinct keys decide the split)"
        )
    for rows, total, (split, consequence) in zip(
        (train_rows, profile.validation_rows),
        profile.weight_sums or (),
        (("training", "no model can learn from them"), ("validation", "no metric can be computed on them")),
    ):
        if not total > 0:  # XGBoost fails on a zero weight sum (a native stack), metrics divide by it
            raise InputError(
                f"target.weight {config.target.weight!r}: the {rows:,} {split} rows kept weigh 0 in total, so "
                f"{consequence}: check the column in {config.input.path!r} (rows with missing, negative or "
                "non-finite weights are quarantined), or remove target.weight"
            )


def join_report(profile, config: Config, dims) -> dict:
    """``{join name: rows, matched, match_rate}``; a warning for each join under its threshold."""
    report = {}
    for i, (dim, (matched, rows)) in enumerate(zip(dims, profile.join_matches)):
        rate = matched / rows if rows else float("nan")
        report[dim.join.name] = {"rows": rows, "matched": matched, "match_rate": rate, "path": dim.path}
        threshold = config.joins[i].min_match_rate
        if rows and rate < threshold:
            logger.warning(
                "join %r (joins[%d], %s): only %d of %d rows (%.1f%%) found a row of the dimension "
                "table on %s; check the key columns (or lower joins[%d].min_match_rate)",
                dim.join.name,
                i,
                dim.path,
                matched,
                rows,
                100 * rate,
                list(dim.join.on),
                i,
            )
        else:
            logger.info("join %r: %d of %d rows matched (%.1f%%)", dim.join.name, matched, rows, 100 * rate)
    return report


def partition_report(profile, preprocessor: Preprocessor, config: Config, *, shuffled: bool) -> dict:
    """How much the partitions differ (see :func:`~shardflow.tasks.stats.partition_differences`),
    logged; a warning when per-partition models would see too different slices of the target
    (more than :data:`TARGET_GAP_WARNING` of its standard deviation apart)."""
    classification = target_kind(preprocessor.task).is_classification
    differences = partition_differences(
        profile, preprocessor.numeric, list(preprocessor.classes) if classification else None
    )
    gap = differences["target_gap"]
    per_partition = any(SPECS[m].assumes_exchangeable_partitions for m in config.train.models)
    worst = max(differences["numeric_gap"].items(), key=lambda kv: kv[1], default=(None, 0.0))
    logger.info(
        "etl partitions differ by up to %.2f std in the target%s",
        gap,
        f", {worst[1]:.2f} std in {worst[0]!r}" if worst[0] else "",
    )
    if per_partition and gap > TARGET_GAP_WARNING and len(differences["partitions"]) > 1:
        logger.warning(
            "partitions differ by %.2f std in the target mean: per-partition models and data-parallel "
            "SGD each see a slice of it%s",
            gap,
            "" if shuffled else " (input.exchangeable: true skips the shuffle; set it to false to mix the rows)",
        )
    return differences


def stage_summary(
    profile,
    preprocessor: Preprocessor,
    *,
    partition_rows: list,
    written: list,
    chunk_rows: int,
    seconds: float,
    timings: dict,
    peaks: dict,
    backend: str,
    joins: dict,
    differences: dict,
    drift_reference: dict | None = None,
) -> EtlSummary:
    """The ETL stage's ``summary.json``: what was written, how long it took, the target's
    statistics and what the joins and partitions looked like.

    Parameters
    ----------
    profile : Profile
        The combined profile of pass 1.
    preprocessor : Preprocessor
        The fitted preprocessor.
    partition_rows : list of int
        Rows written by each partition.
    written : list of dict
        What each partition's write task returned (its ``quarantined`` rows).
    chunk_rows : int
        Rows of one Zarr chunk.
    seconds, timings, peaks : float, dict, dict
        Wall time of the stage, seconds per pass, peak memory per worker.
    backend : str
        The partitions' backend (``pandas``, ``cudf``).
    joins, differences : dict
        :func:`join_report` and :func:`partition_report`.
    drift_reference : dict, optional
        Each feature's bins and its training rows' counts in them
        (:func:`~shardflow.tasks.drift.reference_of`), what scoring measures drift against.
    """
    return EtlSummary(
        rows=profile.rows,
        partitions=len(partition_rows),
        validation_rows=profile.validation_rows,
        quarantined=profile.quarantined,
        quarantined_rows=sum(profile.quarantined.values()),
        partition_rows=partition_rows,
        partition_quarantined=[w["quarantined"] for w in written],
        feature_names=preprocessor.feature_names,
        zarr_chunk_rows=chunk_rows,
        seconds=seconds,
        timings=timings,
        peak_memory=peaks,
        backend=backend,
        joins=joins,
        target_mean=float(profile.target.mean[0]),
        target_std=float(np.nan_to_num(profile.target.std[0])),
        target_min=float(profile.target.minimum[0]) if profile.target.count[0] else 0.0,
        target_max=float(profile.target.maximum[0]) if profile.target.count[0] else 1.0,
        task=preprocessor.task,
        classes={key: profile.target_values.get(key, 0) for key in preprocessor.classes},
        partition_differences=differences,
        drift_reference=drift_reference or {},
    )
