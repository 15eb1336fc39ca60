"""Stage outputs written by tasks: the ETL's Parquet files and Zarr rows of one partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from shardflow.core import backend
from shardflow.core.storage import location, zarr_store
from shardflow.pipelines.records.rundir import RunDir
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.prepare import PreparedPartition
from shardflow.tasks.schema import SPLIT_COLUMN, WEIGHT_COLUMN


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def create_feature_arrays(
    stage_dir: Path, *, rows: int, n_features: int, chunk_rows: int, attributes: dict, weighted: bool = False
) -> None:
    """Create the empty Zarr arrays ``X`` (rows × features, float32), ``y``, ``is_validation``
    and, with ``weighted``, ``w`` (sample weights)."""
    group = zarr.open_group(zarr_store(RunDir.etl_file(stage_dir, "zarr")), mode="w")
    group.attrs.update(attributes)
    chunk_rows = max(1, chunk_rows)
    # LZ4 with byte shuffling: several times faster than Zarr's default Zstd on float columns.
    codec = [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    group.create_array(
        "X",
        shape=(rows, n_features),
        chunks=(chunk_rows, max(1, n_features)),
        dtype="float32",
        fill_value=np.nan,
        compressors=codec,
    )
    group.create_array("y", shape=(rows,), chunks=(chunk_rows,), dtype="float32", fill_value=np.nan, compressors=codec)
    group.create_array(
        "is_validation", shape=(rows,), chunks=(chunk_rows,), dtype="bool", fill_value=False, compressors=codec
    )
    if weighted:
        group.create_array(
            "w", shape=(rows,), chunks=(chunk_rows,), dtype="float32", fill_value=np.nan, compressors=codec
        )


def write_etl_partition(
    part: PreparedPartition,
    index: int,
    *,
    preprocessor: Preprocessor,
    stage_dir,
    offset: int,
    expected_rows: int,
    total_rows: int,
    chunk_rows: int,
    lock_prefix: str,
) -> dict:
    """Transform one prepared partition and write its Parquet file, quarantine and Zarr rows.

    Returns
    -------
    dict
        ``partition``, ``rows`` and ``quarantined`` counts.
    """
    features, quarantine = part.features, part.quarantine
    if len(features) != expected_rows:
        raise RuntimeError(
            f"partition {index} has {len(features)} valid rows now but {expected_rows} in the first pass: "
            "the input changed while the ETL ran; run it again"
        )
    stage = location(stage_dir)
    table = preprocessor.transform(features)
    backend.write_parquet(table, RunDir.etl_file(stage, "features") / part_name(index))
    if len(quarantine):
        backend.write_parquet(quarantine, RunDir.etl_file(stage, "quarantine") / part_name(index))
    arrays = {
        "X": backend.to_host_array(table[preprocessor.feature_names], np.float32),
        "y": backend.to_host_array(table[preprocessor.target], np.float32),
        "is_validation": backend.to_host_array(table[SPLIT_COLUMN], bool),
    }
    if preprocessor.weighted:
        arrays["w"] = backend.to_host_array(table[WEIGHT_COLUMN], np.float32)
    write_rows(
        RunDir.etl_file(stage, "zarr"),
        arrays,
        offset=offset,
        total_rows=total_rows,
        chunk_rows=chunk_rows,
        lock_prefix=lock_prefix,
    )
    return {"partition": index, "rows": len(features), "quarantined": len(quarantine)}


def write_rows(root: Path, arrays: dict, *, offset: int, total_rows: int, chunk_rows: int, lock_prefix: str) -> None:
    """Write rows ``[offset, offset + n)`` of several row-chunked Zarr arrays.

    Chunks wholly inside the range are written directly. A chunk shared with a
    neighbouring partition is read, modified and written back under a cluster-wide
    ``distributed.Lock`` for that chunk, the way ``dask.array.store`` protects
    unaligned writes.
    """
    n = len(next(iter(arrays.values())))
    if n == 0:
        return
    stop = offset + n
    segments = []
    pos = offset
    while pos < stop:
        chunk = pos // chunk_rows
        end = min(stop, (chunk + 1) * chunk_rows)
        owned = pos == chunk * chunk_rows and end == min((chunk + 1) * chunk_rows, total_rows)
        segments.append((chunk, pos, end, owned))
        pos = end
    targets = {name: zarr.open_array(zarr_store(location(root) / name), mode="r+") for name in arrays}
    for chunk, begin, end, owned in segments:
        if owned:
            for name, data in arrays.items():
                targets[name][begin:end] = data[begin - offset : end - offset]
            continue
        from distributed import Lock

        with Lock(f"{lock_prefix}-{chunk}"):
            for name, data in arrays.items():
                targets[name][begin:end] = data[begin - offset : end - offset]
