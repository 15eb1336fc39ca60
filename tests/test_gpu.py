"""GPU path: cuDF partitions give the same ETL output as pandas partitions.

Skipped (by conftest) unless a CUDA device, cuDF and dask-cuda are usable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from shardflow.cluster.factory import start
from shardflow.pipelines.config import default_config_path, load_config
from shardflow.pipelines.etl import etl


@pytest.mark.gpu
def test_cudf_etl_equals_pandas_etl(trips_dir, runtime, tmp_path):
    config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=trips_dir)
    cpu = etl(config, runtime=runtime)
    gpu_runtime = start(spec="local-cuda", dashboard_address="127.0.0.1:0")
    try:
        assert gpu_runtime.backend == "cudf"
        gpu = etl(config, runtime=gpu_runtime)
    finally:
        gpu_runtime.close()
        import dask

        dask.config.set({"dataframe.backend": "pandas"})
    assert gpu.preprocessor.vocabularies == cpu.preprocessor.vocabularies
    np.testing.assert_allclose(gpu.preprocessor.mean, cpu.preprocessor.mean, rtol=1e-9)
    np.testing.assert_allclose(gpu.preprocessor.std, cpu.preprocessor.std, rtol=1e-9)
    assert gpu.quarantined == cpu.quarantined
    a = pd.read_parquet(cpu.stage_dir / "features")
    b = pd.read_parquet(gpu.stage_dir / "features")
    for col in cpu.preprocessor.categorical + ["_is_validation", "trip_id"]:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)
    xa = zarr.open_group(str(cpu.stage_dir / "features.zarr"), mode="r")["X"][:]
    xb = zarr.open_group(str(gpu.stage_dir / "features.zarr"), mode="r")["X"][:]
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-5)
