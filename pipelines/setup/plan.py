"""The input plan: a job's input inspected once, shared by every stage that needs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dask.dataframe as dd
import numpy as np
from dask.utils import format_bytes, parse_bytes

from shardflow.pipelines.setup.config import Config
from shardflow.pipelines.setup.dimensions import dimension_frames, load_dimensions
from shardflow.pipelines.setup.read import prepared_meta, read_source, table_spec
from shardflow.pipelines.setup.source import MIN_PARTITION_ROWS, inspect_source
from shardflow.pipelines.setup.train_config import trains_on_one_worker
from shardflow.tasks.schema import TableSpec

logger = logging.getLogger("shardflow.plan")


class InputPlan:
    """A job's input, inspected once: what is read and how it is split (the files' footers
    and headers), the dimension tables, and the table spec checked against both.

    Built once per job and handed to every stage that needs it (stage keys, the ETL,
    prediction), so no footer is read twice. The dimension tables and the spec are
    loaded on first use: deciding that a stage is current needs only the fingerprints.

    Examples
    --------
    >>> from shardflow.pipelines.setup.config import load_config
    >>> plan = InputPlan(load_config("job.yaml"))  # doctest: +SKIP
    >>> len(plan.source.pieces), plan.spec.feature_names  # doctest: +SKIP
    """

    def __init__(self, config: Config, *, for_prediction: bool = False, threads: int | None = None):
        self.config = config
        self.for_prediction = for_prediction
        self.threads = threads
        self.source = inspect_source(config, threads)
        self._dimensions = None
        self._spec = None

    def with_threads(self, threads: int) -> InputPlan:
        """This plan for a cluster of ``threads`` worker threads: the input inspected again
        only when ``input.partitions: auto`` would split it differently."""
        if self.config.input.partitions != "auto" or threads == self.threads:
            return self
        planned = InputPlan(self.config, for_prediction=self.for_prediction, threads=threads)
        if list(planned.source.pieces) == list(self.source.pieces):
            return self
        planned._dimensions = self._dimensions
        return planned

    @property
    def dimensions(self) -> list:
        if self._dimensions is None:
            self._dimensions = load_dimensions(self.config, self.source)
        return self._dimensions

    @property
    def spec(self) -> TableSpec:
        if self._spec is None:
            self._spec = table_spec(self.config, self.source, self.dimensions, for_prediction=self.for_prediction)
        return self._spec

    @property
    def shuffles(self) -> bool:
        """Whether the ETL shuffles this input's rows: :func:`shuffles` and more than one partition."""
        return shuffles(self.config) and len(self.source.pieces) > 1

    def execution(self) -> Execution:
        """Where this job's local cluster runs its workers (:func:`execution_for`)."""
        return execution_for(self.config, self.source.bytes, sum(_piece_rows(self.source)))

    def start_cluster(self):
        """The job's cluster: ``cluster:`` as configured, its workers processes or threads as
        :meth:`execution` decides (a :class:`~shardflow.cluster.factory.Runtime` to close)."""
        from shardflow.cluster.factory import start

        execution = self.execution()
        if execution.processes is False:
            logger.info("cluster: threads in this process (%s)", execution.reason)
        return start(
            self.config.cluster, processes=None if execution.processes is None else str(execution.processes).lower()
        )

    def dimension_paths(self) -> list:
        """The dimension tables' paths, resolved (without reading them)."""
        return [self.config.resolve(j.path) for j in self.config.joins]

    def read(self, backend_name: str = "pandas") -> dd.DataFrame:
        """The raw input as a lazy Dask DataFrame (see :func:`read_source`)."""
        return read_source(self.config, backend_name, self.source, self.spec)

    def dimension_frames(self, backend_name: str) -> list:
        return dimension_frames(self.dimensions, backend_name)

    def check_expressions(self, backend_name: str) -> None:
        """Fail now, on the client, if the configured features cannot be computed; returns
        the prepared partitions' meta (an empty :class:`PreparedPartition`)."""
        return prepared_meta(self.source, self.spec, self.dimensions, backend_name)

    # ------------------------------------------------------------------------- the plan, shown

    def describe(self, runtime) -> dict:
        """What the job will do with this input on ``runtime``'s cluster, before anything runs
        (``shardflow plan``; logged at the start of the ETL and kept in the manifest).

        Sizes are estimates: Parquet rows are exact (footers), CSV rows are estimated from the
        first megabyte's line lengths; in-memory size is twice the uncompressed Parquet size
        or the CSV bytes (as the ETL's ``persist: auto`` counts it).
        """
        workers = runtime.client.scheduler_info(n_workers=-1)["workers"]
        threads = [w["nthreads"] for w in workers.values()]
        memory = [w.get("memory_limit") or 0 for w in workers.values()]
        source = self.source
        rows = _piece_rows(source)
        total_rows = sum(rows)
        in_memory = 2 * source.bytes
        per_row = in_memory / max(1, total_rows)
        partition_bytes = [r * per_row for r in rows]
        persist = persist_decision(self.config.input.persist, in_memory, memory)
        per_worker = max(threads or [1]) * 3 * max(partition_bytes or [0]) + (
            in_memory / max(1, len(workers)) if persist else 0
        )
        warnings = []
        if source.partitions_bounded:
            warnings.append(
                f"input.partitions: {source.partitions_bounded:,} would make partitions of about "
                f"{total_rows // source.partitions_bounded:,} rows; bounded by the data to {len(rows):,} "
                f"partition(s) of at least {MIN_PARTITION_ROWS:,} rows (each costs scheduling time): "
                "write auto, or fewer"
            )
        limit = min(memory) if memory and all(memory) else 0
        if limit and max(partition_bytes or [0]) * 3 > limit / max(threads or [1]):
            largest = format_bytes(int(max(partition_bytes)))
            warnings.append(
                f"a partition of about {largest} may not fit a worker thread's share "
                f"of {format_bytes(limit)}: lower input.blocksize / input.max_partition_rows or raise "
                "cluster.memory_limit"
            )
        if len(rows) < sum(threads):
            warnings.append(
                f"{len(rows)} partition(s) for {sum(threads)} worker threads: some will idle"
                + (
                    " (a CSV file with quotes is read whole: split it, or set input.blocksize)"
                    if source.format == "csv" and any(p.end is None for p in source.pieces)
                    else ""
                )
            )
        if self.shuffles and len(rows) > 64 and not persist:
            warnings.append(
                f"{len(rows)} partitions are shuffled again on each of the ETL's three passes (they are "
                "not kept in memory): set input.exchangeable: true if they are random samples already, or "
                "input.persist: true if the cluster's memory holds them"
            )
        from shardflow.pipelines.families.registry import FAMILIES, PerPartitionFamily

        per_partition = [m for m in self.config.train.models if isinstance(FAMILIES[m], PerPartitionFamily)]
        if per_partition and len(rows) <= self.config.train.partitions.partitions_per_model:
            warnings.append(
                f"{len(rows)} partition(s): {', '.join(per_partition)} will train one model on all "
                "training rows (nothing to combine; with the same options as its global family, trained "
                "too, that family's model); lower input.max_partition_rows or "
                "train.partitions.partitions_per_model for several"
            )
        if rows and np.median(rows) > 0 and max(rows) > 2 * np.median(rows):
            warnings.append(
                f"skewed partitions: the largest holds {max(rows):,} rows, the median {int(np.median(rows)):,}"
            )
        execution = self.execution()
        array_bytes = total_rows * (len(self.spec.feature_names) + 3) * 4  # X, y, weight, split as float32
        one_worker = trains_on_one_worker(self.config.train.xgboost.single_worker, array_bytes, memory)
        return {
            "input": {
                "format": source.format,
                "files": len(source.files),
                "bytes": source.bytes,
                "rows": total_rows,
                "rows_exact": source.format == "parquet",
            },
            "cluster": {"workers": len(workers), "threads": sum(threads), "memory_per_worker": limit},
            "shuffle": self.shuffles,
            "shuffle_for": shuffled_for(self.config) if self.shuffles else [],
            "partitions": {
                "count": len(rows),
                "how": self.config.input.partitions,
                "rows_min": min(rows, default=0),
                "rows_median": int(np.median(rows)) if rows else 0,
                "rows_max": max(rows, default=0),
                "bytes_max": int(max(partition_bytes, default=0)),
            },
            "persist": persist,
            "etl": "partitions kept in cluster memory between passes"
            if persist
            else "input read again for each pass (streaming)",
            "training": _training_line(self.config.train.models, len(workers), one_worker)
            + "; "
            + _overlap_line(self.config.train, getattr(runtime, "processes", True), len(workers)),
            "execution": ("worker processes" if getattr(runtime, "processes", True) else "threads in this process")
            + f" ({execution.reason})",
            "peak_memory_per_worker": int(per_worker),
            "warnings": warnings,
        }


@dataclass(frozen=True)
class Execution:
    """Whether a job's local cluster runs worker processes (``processes``; None: the cluster
    is not shardflow's to shape) and why, in the words ``shardflow plan`` prints."""

    processes: bool | None
    reason: str


def execution_for(config: Config, input_bytes: int, rows: int) -> Execution:
    """Worker processes or threads in this process for a job reading ``input_bytes`` of files
    holding about ``rows`` rows (``cluster.processes``).

    Small inputs run in this process: a worker process costs its start (about a second),
    its own imports of pandas and XGBoost, and a copy of every partition between it and
    the driver, which a table of some hundred thousand rows does not pay back. A scheduler
    address and GPU clusters are never switched, nor a cluster of several workers asked for.

    Examples
    --------
    >>> from shardflow.pipelines.setup.config import load_config
    >>> config = load_config(overrides=["input.path=data.csv", "cluster.spec=local"])
    >>> execution_for(config, 5 * 2**20, 50_000).processes
    False
    >>> execution_for(config, 2**30, 20_000_000).reason
    'input 1.00 GiB, ~20,000,000 rows: above cluster.in_process_max_bytes 64.00 MiB or cluster.in_process_max_rows
    500,000'
    """
    from shardflow.cluster.factory import resolve_spec

    cluster = config.cluster
    if cluster.is_address():
        return Execution(None, "the scheduler at cluster.spec: never switched")
    if resolve_spec(cluster) != "local":
        return Execution(None, "GPU workers, one per device")
    if str(cluster.processes).lower() in ("true", "false"):
        return Execution(
            str(cluster.processes).lower() == "true", f"cluster.processes: {str(cluster.processes).lower()}"
        )
    if cluster.n_workers not in (None, 1):
        return Execution(True, f"cluster.n_workers: {cluster.n_workers}")
    max_bytes = parse_bytes(cluster.in_process_max_bytes)
    size = f"input {format_bytes(input_bytes)}, ~{rows:,} rows"
    if input_bytes <= max_bytes and rows <= cluster.in_process_max_rows:
        return Execution(
            False,
            f"{size}: within cluster.in_process_max_bytes {format_bytes(max_bytes)} and "
            f"cluster.in_process_max_rows {cluster.in_process_max_rows:,}",
        )
    return Execution(
        True,
        f"{size}: above cluster.in_process_max_bytes {format_bytes(max_bytes)} or "
        f"cluster.in_process_max_rows {cluster.in_process_max_rows:,}",
    )


def shuffles(config: Config) -> bool:
    """Whether the ETL shuffles the rows: a family that assumes exchangeable partitions is
    trained (:func:`shuffled_for`) and ``input.exchangeable`` does not say the partitions
    are samples already."""
    return not config.input.exchangeable and bool(shuffled_for(config))


def shuffled_for(config: Config) -> list:
    """The configured families that assume the partitions are samples of one table
    (per-partition models, their combiners, data-parallel SGD)."""
    from shardflow.pipelines.families.specs import SPECS

    return [m for m in config.train.models if SPECS[m].assumes_exchangeable_partitions]


def _training_line(models: list, n_workers: int, one_worker: bool) -> str:
    """Where each configured family trains, as the plan prints it."""
    from shardflow.pipelines.families.registry import FAMILIES

    lines = [FAMILIES[name].plan_line(n_workers, one_worker) for name in models]
    return "; ".join([f"partition i on worker i mod {n_workers}", *(line for line in lines if line)])


def _overlap_line(train, processes: bool, n_workers: int) -> str:
    """Whether the families train one after another or overlap, and why."""
    from shardflow.pipelines.families.registry import training_order
    from shardflow.pipelines.training.schedule import overlap_decision, overlap_line

    return overlap_line(training_order(train.models), overlap_decision(train.overlap, processes, n_workers))


def persist_decision(setting: str, in_memory: float, memory_limits: list) -> bool:
    """Whether the ETL keeps the prepared partitions in cluster memory: ``auto`` when they
    take less than a quarter of the workers' memory limits (unknown limits: no)."""
    if setting in ("true", "false"):
        return setting == "true"
    if not memory_limits or not all(memory_limits):
        return False
    return in_memory < sum(memory_limits) / 4


def _piece_rows(source) -> list:
    """Rows of each piece: exact for Parquet (the footers, as inspected), estimated from bytes
    and line length for CSV."""
    if source.format == "parquet":
        return list(source.piece_rows)
    from shardflow.core.storage import file_size, open_file

    per_line, options = {}, source.pieces[0].storage_options if source.pieces else None
    for f in source.files:
        with open_file(f, "rb", options) as handle:
            head = handle.read(2**20)
        lines = max(1, head.count(b"\n"))
        per_line[f] = len(head) / lines
    return [
        int(
            ((piece.end if piece.end is not None else file_size(piece.path, options)) - piece.start)
            / per_line[piece.path]
        )
        for piece in source.pieces
    ]


def format_plan(plan: dict) -> str:
    """The plan as ``shardflow plan`` prints it."""
    i, c, p = plan["input"], plan["cluster"], plan["partitions"]
    lines = [
        f"input       {i['format']}, {i['files']} file(s), {format_bytes(i['bytes'])}, "
        f"{'' if i['rows_exact'] else '~'}{i['rows']:,} rows",
        f"cluster     {c['workers']} workers, {c['threads']} threads, "
        f"{format_bytes(c['memory_per_worker']) if c['memory_per_worker'] else 'no memory limit'} per worker",
        f"partitions  {p['count']} ({p['how']}), rows per partition {p['rows_min']:,} / {p['rows_median']:,} / "
        f"{p['rows_max']:,} (min / median / max), largest ~{format_bytes(p['bytes_max'])} in memory",
        f"etl         {plan['etl']}"
        + (
            f"; rows shuffled by a seeded hash (for {', '.join(plan.get('shuffle_for') or ['per-partition models'])}: "
            "they assume partitions alike; input.exchangeable: false)"
            if plan.get("shuffle")
            else ""
        ),
        f"execution   {plan['execution']}",
        f"training    {plan['training']}",
        f"memory      peak ~{format_bytes(plan['peak_memory_per_worker'])} per worker (estimate)",
    ]
    lines += [f"warning     {w}" for w in plan["warnings"]] or ["warnings    none"]
    return "\n".join(lines)


class JobPlan(str):
    """The plan's text (:func:`format_plan`), shown as such in a notebook."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(str(self))}</pre>"


def plan(config: Config, runtime=None) -> JobPlan:
    """What a job will do with its input, before anything runs (``shardflow plan``): the
    input's size, the partitions, where it runs and how it trains.

    Parameters
    ----------
    config : Config
    runtime : Runtime or distributed.Client, optional
        The cluster the job would run on (default: the one the job would start, started
        and closed here).

    Returns
    -------
    JobPlan
        A ``str``; a notebook shows it as it is.

    Examples
    --------
    >>> print(plan(load_config("job.yaml")))  # doctest: +SKIP
    input       csv, 1 file(s), 18.3 MiB, ~400,000 rows
    """
    import contextlib

    from shardflow.cluster.factory import as_runtime

    planned = InputPlan(config)
    planned.spec  # noqa: B018 - the columns and joins are checked, as the ETL would first
    given = as_runtime(runtime)
    with contextlib.closing(planned.start_cluster()) if given is None else contextlib.nullcontext(given) as used:
        return JobPlan(format_plan(planned.with_threads(used.threads).describe(used)))
