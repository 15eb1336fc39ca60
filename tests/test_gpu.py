"""GPU path: cuDF partitions give the same ETL output as pandas partitions.

Skipped (by conftest) unless a CUDA device, cuDF and dask-cuda are usable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from shardflow.cluster.factory import start
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import default_config_path, load_config


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


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available() and torch.distributed.is_nccl_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device and NCCL (the MLP's GPU process group)")
def test_data_parallel_mlp_over_nccl_equals_gloo(trips_dir, tmp_path):
    """The MLP trained over NCCL on the GPU equals the same training over gloo on the CPU
    (full-batch SGD, one rank per GPU: the worker sees its GPU first, as dask-cuda sets it)."""
    from dataclasses import replace

    from shardflow.pipelines.setup.train_config import MLPConfig
    from shardflow.pipelines.training import load_training_data, train_data_parallel_mlp

    # One rank: the workers of a plain LocalCluster would all see the same first GPU.
    runtime = start(spec="local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    try:
        config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=trips_dir)
        run_dir = etl(config, runtime=runtime).run_dir
        data = load_training_data(runtime, run_dir / "etl", seed=0)
        cfg = MLPConfig(
            hidden=[32],
            epochs=4,
            batch_size=None,
            optimizer="sgd",
            lr=0.05,
            lr_schedule="constant",
            sync="gradients",
            early_stopping_patience=None,
        )
        gpu = train_data_parallel_mlp(runtime, data, replace(cfg, device="cuda"), seed=1)
        cpu = train_data_parallel_mlp(runtime, data, replace(cfg, device="cpu"), seed=1)
    finally:
        runtime.close()
    assert (gpu["backend"], cpu["backend"]) == ("nccl", "gloo")
    for name, value in cpu["params"].items():
        np.testing.assert_allclose(gpu["params"][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(gpu["history"]["validation_loss"], cpu["history"]["validation_loss"], rtol=1e-5)
