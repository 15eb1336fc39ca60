"""The ETL stage: raw table → validated, encoded, standardised features (Parquet + Zarr).

Three passes over the partitions, each one ``compute``:

1. **profile** — type, validate, join and derive each partition; reduce row counts,
   quarantine reasons, numeric moments and category frequencies in a tree.
2. **clip statistics** — moments of the numerics clipped to ``mean ± clip_sigma·std``
   (skipped when ``clean.clip_sigma`` is null).
3. **write** — transform each partition with the fitted :class:`Preprocessor` and write
   its Parquet file, its quarantined rows and its rows of the Zarr arrays.

The input is read once per pass and never held whole in memory, so the table may be
many times larger than the cluster's memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np

from shardflow.cluster.factory import Runtime, as_runtime
from shardflow.cluster.memory import peak_memory, reset_peak_memory
from shardflow.core.errors import InputError
from shardflow.core.storage import location
from shardflow.pipelines.etl import outputs
from shardflow.pipelines.etl.summary import check_profile, join_report, partition_report, stage_summary
from shardflow.pipelines.etl.target_fit import target_encoding
from shardflow.pipelines.graph import named_delayed, shuffled_partitions, task_names, tree_reduce
from shardflow.pipelines.interface import progress
from shardflow.pipelines.records.artifacts import sha256
from shardflow.pipelines.records.manifest import StageRecord, library_versions
from shardflow.pipelines.records.ownership import prepare_runs_dir
from shardflow.pipelines.records.rundir import RunDir, new_run_id, record_config, stage_output
from shardflow.pipelines.records.stages import stage_keys
from shardflow.pipelines.setup.config import Config
from shardflow.pipelines.setup.plan import InputPlan, shuffled_for
from shardflow.tasks.drift import combine_drift_counts, partition_reference_counts, reference_layout, reference_of
from shardflow.tasks.encode import Preprocessor, fit_vocabulary
from shardflow.tasks.prepare import prepare_partition
from shardflow.tasks.stats import (
    Moments,
    combine_moments,
    combine_profiles,
    partition_clipped_moments,
    partition_profile,
)

logger = logging.getLogger("shardflow.etl")

#: Upper bound of one Zarr chunk of ``X`` (bytes, uncompressed).
MAX_CHUNK_BYTES = 64 * 2**20


@dataclass
class EtlResult:
    """What :func:`etl` produced.

    Attributes
    ----------
    run_dir : Path
        The run directory (see :class:`~shardflow.pipelines.records.rundir.RunDir`).
    rows, partitions, validation_rows : int
        Rows written (quarantined ones excluded), partitions, rows in the validation split.
    quarantined : dict
        Quarantined row count per reason.
    seconds : float
        Wall time of the stage (cluster start excluded).
    peak_memory : dict
        Peak resident memory (bytes) per worker during the stage.
    preprocessor : Preprocessor
        Fitted vocabularies and statistics (also saved in the stage output).
    """

    run_dir: Path
    rows: int
    partitions: int
    validation_rows: int
    quarantined: dict
    seconds: float
    peak_memory: dict
    preprocessor: Preprocessor
    timings: dict = field(default_factory=dict)

    @property
    def stage_dir(self) -> Path:
        return RunDir(self.run_dir).stage(RunDir.ETL)

    @property
    def rows_per_second(self) -> float:
        total = self.rows + sum(self.quarantined.values())
        return total / self.seconds if self.seconds else float("nan")


def etl(
    config: Config,
    runtime: Runtime | None = None,
    run_dir=None,
    key: str | None = None,
    *,
    plan: InputPlan | None = None,
) -> EtlResult:
    """Run the ETL stage of a job and write its output into a run directory.

    Parameters
    ----------
    config : Config
        The job (see :func:`~shardflow.pipelines.setup.config.load_config`).
    runtime : Runtime or distributed.Client, optional
        A started cluster; by default one is started from ``config.cluster`` and closed
        at the end.
    run_dir : path, optional
        Run directory to write ``etl/`` into; default a new one under ``output.runs_dir``.
    key : str, optional
        Stage key recorded in the manifest (default: :func:`shardflow.pipelines.records.stages.stage_keys`).
    plan : InputPlan, optional
        The job's inspected input, when the caller already has it (its footers are not read again).

    Returns
    -------
    EtlResult

    Raises
    ------
    InputError
        Missing or unreadable input, a missing or mistyped column, no rows, an
        all-null target, a bad join key. Nothing is written then.

    Examples
    --------
    >>> from shardflow.pipelines.setup.config import load_config
    >>> result = etl(load_config("job.yaml"))  # doctest: +SKIP
    >>> result.rows, result.quarantined  # doctest: +SKIP
    (19996000, {'trip_distance: below 0': 4000})
    """
    prepare_runs_dir(location(run_dir, config.storage_options).parent if run_dir else config.runs_dir)
    plan = plan or InputPlan(config)
    if plan.source.rows == 0:
        raise InputError(f"input.path {config.input.path!r}: the dataset has no rows")
    plan.spec  # noqa: B018 - loads the dimension tables and checks the columns before any cluster work
    # Recorded even when called from Python, so that a later `run()` finds this ETL output.
    key = key or stage_keys(config, plan)[RunDir.ETL]
    owns_runtime = runtime is None
    runtime = as_runtime(runtime) or plan.start_cluster()
    try:
        plan = plan.with_threads(runtime.threads)  # every worker thread busy (input.partitions: auto)
        return _run(config, runtime, plan=plan, run_dir=run_dir, key=key)
    finally:
        if owns_runtime:
            runtime.close()


def _run(config, runtime, *, plan: InputPlan, run_dir, key) -> EtlResult:
    client, backend_name = runtime.client, runtime.backend
    source, dims, spec = plan.source, plan.dimensions, plan.spec
    plan.check_expressions(backend_name)  # fails early on a bad expression
    shuffle = plan.shuffles
    if shuffle:
        logger.info(
            "etl: rows shuffled by a seeded hash (%s assume partitions alike; set input.exchangeable: true "
            "if the input's partitions are random samples already)",
            ", ".join(shuffled_for(config)),
        )
    started = time.perf_counter()
    reset_peak_memory(client)
    timings = {}
    # In the graph, not scattered: scattered data dies with its workers, graph data is recomputed.
    dim_frames = named_delayed("etl-dimension-tables", plan.dimension_frames(backend_name)) if dims else []

    cached = None

    def prepared(stage):
        """The prepared partitions for one pass: from cluster memory, or read again."""
        if cached is not None:
            return cached
        raw = plan.read(backend_name)
        name = task_names(f"{stage}-prepare", source.fingerprint, spec)
        parts = [
            dask.delayed(prepare_partition, pure=True)(part, spec, dim_frames, dask_key_name=name(i))
            for i, part in enumerate(raw.to_delayed())
        ]
        if shuffle:
            parts = shuffled_partitions(
                parts, seed=config.split.seed, name=f"{stage}-shuffle", token=(source.fingerprint, spec)
            )
        return parts

    described = plan.describe(runtime)
    logger.info(
        "etl plan: %d partitions (%s), rows per partition min/median/max %d/%d/%d, %s",
        described["partitions"]["count"],
        described["partitions"]["how"],
        described["partitions"]["rows_min"],
        described["partitions"]["rows_median"],
        described["partitions"]["rows_max"],
        described["etl"],
    )
    for warning in described["warnings"]:
        logger.warning("etl plan: %s", warning)
    persist = described["persist"]
    if persist:
        # Read and prepare once; the three passes then start from partitions in worker
        # memory (spilled to disk under pressure, recomputed if a worker is lost).
        cached = client.compute(prepared("etl"))
        logger.info("etl: keeping the prepared partitions in cluster memory between passes")
        progress.wait(client, cached, "etl read + prepare")

    # Pass 1: profile.
    t = time.perf_counter()
    name = task_names("etl-profile", source.fingerprint, spec)
    parts = prepared("etl-profile")
    profiles = [
        dask.delayed(partition_profile, pure=True)(p, spec, i, dask_key_name=name(i)) for i, p in enumerate(parts)
    ]
    profile = progress.compute(
        client, tree_reduce(profiles, combine_profiles, "etl-profile-combine"), "etl pass 1/3 (profile)"
    )
    timings["profile"] = time.perf_counter() - t
    check_profile(profile, config, source)
    drift_layout = reference_layout(profile.sketches, profile.category_counts)  # counted in pass 3
    joins = join_report(profile, config, dims)
    partition_rows = profile.partition_rows + [0] * (len(parts) - len(profile.partition_rows))
    logger.info(
        "etl pass 1/3 (profile): %d rows valid, %d quarantined, %d partitions, %.1fs",
        profile.rows,
        sum(profile.quarantined.values()),
        len(parts),
        timings["profile"],
    )

    # Pass 2: statistics of the clipped numerics.
    t = time.perf_counter()
    numeric = spec.numeric_features
    raw_mean, raw_std = profile.numeric.mean, np.nan_to_num(profile.numeric.std)
    if config.clean.clip_sigma is not None and numeric:
        k = config.clean.clip_sigma
        lower = [float(m - k * s) if c > 0 else None for m, s, c in zip(raw_mean, raw_std, profile.numeric.count)]
        upper = [float(m + k * s) if c > 0 else None for m, s, c in zip(raw_mean, raw_std, profile.numeric.count)]
        lo = [-np.inf if v is None else v for v in lower]
        hi = [np.inf if v is None else v for v in upper]
        name = task_names("etl-clipstats", source.fingerprint, spec, lo, hi)
        parts = prepared("etl-clipstats")
        moments = [
            dask.delayed(partition_clipped_moments, pure=True)(p, numeric, lo, hi, dask_key_name=name(i))
            for i, p in enumerate(parts)
        ]
        clipped: Moments = progress.compute(
            client, tree_reduce(moments, combine_moments, "etl-clipstats-combine"), "etl pass 2/3 (clip statistics)"
        )
        logger.info("etl pass 2/3 (clip statistics): %.1fs", time.perf_counter() - t)
    else:
        lower = upper = [None] * len(numeric)
        clipped = profile.numeric
    timings["clip_statistics"] = time.perf_counter() - t
    for col, count in zip(numeric, clipped.count):
        if count == 0:
            logger.warning("feature %r is missing in every row; it will be constant 0", col)
    preprocessor = Preprocessor(
        **target_encoding(profile, config, spec),
        numeric=numeric,
        lower=lower,
        upper=upper,
        mean=[float(m) if c > 0 else 0.0 for m, c in zip(clipped.mean, clipped.count)],
        std=[float(s) if c > 0 and s > 0 else 1.0 for s, c in zip(clipped.std, clipped.count)],
        categorical=list(spec.categorical),
        vocabularies={
            col: fit_vocabulary(profile.category_counts[col], config.encode.min_frequency, config.encode.max_categories)
            for col in spec.categorical
        },
        target=spec.target,
        keep_columns=list(spec.keep_columns),
    )

    # Pass 3: transform and write.
    t = time.perf_counter()
    run_dir = location(run_dir, config.storage_options) if run_dir else config.runs_dir / new_run_id()
    n_features = len(preprocessor.feature_names)
    chunk_rows = config.output.zarr_chunk_rows or _auto_chunk_rows(profile.rows, len(partition_rows), n_features)
    offsets = np.concatenate([[0], np.cumsum(partition_rows)[:-1]]).astype(int).tolist()
    with stage_output(run_dir, RunDir.ETL) as stage_dir:
        RunDir.etl_file(stage_dir, "features").mkdir()
        RunDir.etl_file(stage_dir, "quarantine").mkdir()
        outputs.create_feature_arrays(
            stage_dir,
            rows=profile.rows,
            n_features=n_features,
            chunk_rows=chunk_rows,
            attributes={
                "feature_names": preprocessor.feature_names,
                "target": spec.target,
                "partition_offsets": offsets,
                "partition_rows": partition_rows,
            },
            weighted=preprocessor.weighted,
        )
        name = task_names("etl-write", source.fingerprint, spec, str(stage_dir))
        parts = prepared("etl-write")
        writes = [
            dask.delayed(outputs.write_etl_partition, pure=False)(
                p,
                i,
                preprocessor=preprocessor,
                stage_dir=stage_dir,
                offset=offsets[i],
                expected_rows=partition_rows[i],
                total_rows=profile.rows,
                chunk_rows=chunk_rows,
                lock_prefix=f"shardflow-zarr-{stage_dir.name}",
                dask_key_name=name(i),
            )
            for i, p in enumerate(parts)
        ]
        # The training rows' counts in each feature's drift bins, from the partitions this pass reads.
        name = task_names("etl-drift", source.fingerprint, spec, drift_layout)
        layout = named_delayed("etl-drift-layout", drift_layout)  # in the graph once, not in every task
        counts = [
            dask.delayed(partition_reference_counts, pure=True)(p, layout, dask_key_name=name(i))
            for i, p in enumerate(parts)
        ]
        *written, counted = progress.compute(
            client, [*writes, tree_reduce(counts, combine_drift_counts, "etl-drift-combine")], "etl pass 3/3 (write)"
        )
        timings["write"] = time.perf_counter() - t
        seconds = time.perf_counter() - started
        peaks = peak_memory(client)
        logger.info("etl pass 3/3 (write): %.1fs", timings["write"])
        differences = partition_report(profile, preprocessor, config, shuffled=shuffle)
        summary = stage_summary(
            profile,
            preprocessor,
            partition_rows=partition_rows,
            written=written,
            chunk_rows=chunk_rows,
            seconds=seconds,
            timings=timings,
            peaks=peaks,
            backend=backend_name,
            joins=joins,
            differences=differences,
            drift_reference=reference_of(drift_layout, counted),
        )
        RunDir.etl_file(stage_dir, "preprocessor").write_text(preprocessor.to_json())
        RunDir.etl_file(stage_dir, "summary").write_text(summary.to_json())
    run = RunDir(run_dir)
    record_config(run_dir, config.resolved().to_yaml())
    stage = StageRecord(
        completed=time.strftime("%Y-%m-%dT%H:%M:%S"),
        key=key,
        seconds=round(seconds, 3),
        rows=profile.rows,
        partitions=len(partition_rows),
    )
    run.record_stage(
        RunDir.ETL,
        stage,
        # What scoring later reads from the run directory; predict refuses edited copies.
        artifacts={run.relative(path): sha256(path) for path in (run.preprocessor, run.summary)},
        run_id=run_dir.name,
        input={
            "path": config.resolve(config.input.path),
            "format": source.format,
            "files": len(source.files),
            "fingerprint": source.fingerprint,
        },
        # Scoring reads the dimension tables again: their content must be what was trained on.
        joins=[{"path": d.path, "sha256": sha256(location(d.path, config.storage_options))} for d in dims],
        versions=library_versions(),
        cluster=runtime.layout(),
        plan=described,
        seeds={"split": config.split.seed},
    )
    if cached is not None:
        client.cancel(cached)  # release the cluster memory now, not at garbage collection
    result = EtlResult(
        run_dir,
        profile.rows,
        len(partition_rows),
        profile.validation_rows,
        profile.quarantined,
        seconds,
        peaks,
        preprocessor,
        timings,
    )
    logger.info(
        "etl done: %d rows (%d quarantined) in %d partitions, %.1fs, %.0f rows/s, peak worker memory %s → %s",
        result.rows,
        summary.quarantined_rows,
        result.partitions,
        seconds,
        result.rows_per_second,
        _format_bytes(max(peaks.values()) if peaks else 0),
        result.stage_dir,
    )
    return result


def _auto_chunk_rows(rows: int, partitions: int, n_features: int) -> int:
    """Chunks about one partition long, so that most chunks are written by one task."""
    per_partition = max(1, int(round(rows / max(1, partitions))))
    return max(1, min(per_partition, MAX_CHUNK_BYTES // (4 * max(1, n_features))))


def _format_bytes(n: float) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n))


def read_features(run_dir, decoded: bool = False):
    """A finished run's feature table as a lazy Dask DataFrame (one partition per file).

    Parameters
    ----------
    run_dir : path
        A run directory with a completed ``etl`` stage.
    decoded : bool
        The features in the input's terms instead of as the models see them: numeric
        columns in their units, categorical codes as their categories, the target as its
        labels or in its units (:meth:`~shardflow.tasks.encode.Preprocessor.inverse_transform`,
        partition by partition).

    Examples
    --------
    >>> features = read_features("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> features.groupby("pickup_datetime_hour").is_delayed.mean().compute()  # doctest: +SKIP
    >>> read_features(run_dir, decoded=True).groupby("payment_type").fare_amount.mean().compute()  # doctest: +SKIP
    """
    import dask.dataframe as dd

    path = RunDir(run_dir).features
    if not path.is_dir():
        raise InputError(f"{run_dir}: has no ETL output ({path} is missing)")
    features = dd.read_parquet(str(path), storage_options=getattr(path, "storage_options", None))
    if not decoded:
        return features
    from shardflow.pipelines.records.artifacts import RunFiles
    from shardflow.tasks.encode import Preprocessor

    files = RunFiles(run_dir)
    preprocessor = Preprocessor.from_json(files.path(files.run.preprocessor).read_text())
    meta = preprocessor.inverse_transform(features._meta)
    return features.map_partitions(preprocessor.inverse_transform, meta=meta)
