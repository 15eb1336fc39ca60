"""Generate the default dataset on the cluster: one task writes one Parquet partition."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import pyarrow.parquet as pq

from shardflow.cluster.factory import Runtime, as_runtime, start
from shardflow.core.errors import ShardflowError
from shardflow.data import trips
from shardflow.pipelines.graph import task_names
from shardflow.pipelines.interface import progress
from shardflow.pipelines.records.rundir import atomic_directory
from shardflow.pipelines.setup.config import default_config_path

logger = logging.getLogger("shardflow.generate")

#: Most rows per generated file; a smaller table is written in at least
#: :data:`MIN_PARTITIONS` files of at least :data:`MIN_ROWS_PER_PARTITION` rows.
DEFAULT_ROWS_PER_PARTITION = 1_000_000
MIN_PARTITIONS = 8
MIN_ROWS_PER_PARTITION = 25_000
MARKER = "_generated.json"


@dataclass
class GenerateResult:
    path: Path
    rows: int
    partitions: int
    seconds: float


def write_trips_partition(seed: int, index: int, rows: int, first_trip_id: int, path: str) -> int:
    """Generate partition ``index`` and write it to ``path``; returns its row count."""
    pq.write_table(trips.generate_partition(seed, index, rows, first_trip_id), path)
    return rows


def auto_rows_per_partition(rows: int) -> int:
    """Rows per file when none is given: enough files for every worker of a small cluster
    (at least :data:`MIN_PARTITIONS`), none below :data:`MIN_ROWS_PER_PARTITION` rows or above
    :data:`DEFAULT_ROWS_PER_PARTITION`. It depends on ``rows`` only, so the same ``rows`` and
    seed give the same files on any cluster.

    Examples
    --------
    >>> [auto_rows_per_partition(n) for n in (10_000, 300_000, 4_000_000, 50_000_000)]
    [25000, 37500, 500000, 1000000]
    """
    return min(DEFAULT_ROWS_PER_PARTITION, max(MIN_ROWS_PER_PARTITION, -(-rows // MIN_PARTITIONS)))


def generate(
    out,
    rows: int,
    *,
    seed: int = 0,
    rows_per_partition: int | None = None,
    runtime: Runtime | None = None,
    overwrite: bool = False,
) -> GenerateResult:
    """Write the synthetic trips dataset: ``out/trips/*.parquet``, ``out/zones.parquet`` and
    the default job config ``out/trips.yaml`` (run it with ``shardflow etl -c out/trips.yaml``).

    Parameters
    ----------
    out : path
        Dataset directory; it appears only when complete.
    rows : int
        Total rows of the trips table.
    seed : int
        Same seed, same rows and partitioning: the same bytes.
    rows_per_partition : int, optional
        Rows per Parquet file (one task each); default :func:`auto_rows_per_partition`.
    runtime : Runtime or distributed.Client, optional
        Cluster to generate on; by default a local one is started and closed.
    overwrite : bool
        Replace an existing dataset at ``out``.

    Examples
    --------
    >>> generate("data/trips-1m", rows=1_000_000)  # doctest: +SKIP
    """
    out = Path(out).expanduser().resolve()
    if rows_per_partition is None:
        rows_per_partition = auto_rows_per_partition(max(rows, 1))
    if rows < 1 or rows_per_partition < 1:
        raise ShardflowError(f"--rows and --rows-per-partition must be positive, got {rows} and {rows_per_partition}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ShardflowError(f"{out}: already exists and is not empty; pass --overwrite or choose another --out")
    owns_runtime = runtime is None
    runtime = as_runtime(runtime) or start()
    started = time.perf_counter()
    try:
        with atomic_directory(out) as tmp:
            (tmp / "trips").mkdir()
            sizes = [min(rows_per_partition, rows - start_row) for start_row in range(0, rows, rows_per_partition)]
            name = task_names("generate-trips", seed, rows, rows_per_partition, str(tmp))
            first = 0
            tasks = []
            for i, n in enumerate(sizes):
                path = str(tmp / "trips" / f"part-{i:05d}.parquet")
                tasks.append(
                    dask.delayed(write_trips_partition, pure=False)(seed, i, n, first, path, dask_key_name=name(i))
                )
                first += n
            progress.compute(runtime.client, tasks, "generate")
            pq.write_table(trips.zones_table(seed), tmp / "zones.parquet")
            # The default job, next to the data it describes: `shardflow etl -c OUT/trips.yaml`.
            shutil.copyfile(default_config_path(), tmp / "trips.yaml")
            (tmp / MARKER).write_text(
                json.dumps(
                    {"rows": rows, "seed": seed, "partitions": len(sizes), "rows_per_partition": rows_per_partition}
                )
            )
    finally:
        if owns_runtime:
            runtime.close()
    seconds = time.perf_counter() - started
    logger.info("generated %d rows in %d partitions at %s (%.1fs)", rows, len(sizes), out, seconds)
    return GenerateResult(out, rows, len(sizes), seconds)


def is_generated(path, rows: int, seed: int) -> bool:
    """Whether ``path`` holds a complete generated dataset of ``rows`` rows and ``seed``."""
    marker = Path(path) / MARKER
    if not marker.exists():
        return False
    info = json.loads(marker.read_text())
    return info.get("rows") == rows and info.get("seed") == seed
