"""Shared fixtures: one real LocalCluster (worker processes) and small generated datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shardflow.cluster.factory import cuda_available, start
from shardflow.pipelines.setup.generate import generate

TEST_ROWS = 24_000
TEST_ROWS_PER_PARTITION = 3_000  # 8 partitions


def pytest_collection_modifyitems(config, items):
    # Files with slow tests first (a stable sort keeps each file's order): the two test
    # processes (`-n 2 --dist loadfile --no-loadscope-reorder`) take files in this order, so the
    # long ones start first and the short ones fill in at the end.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device with cuDF and dask-cuda")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def runtime():
    """A LocalCluster of 2 worker processes, 1 thread each, as on a 2-core CI machine."""
    rt = start(spec="local", n_workers=2, threads_per_worker=1, memory_limit="2GB", dashboard_address="127.0.0.1:0")
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def trips_dir(tmp_path_factory, runtime) -> Path:
    """The default dataset, 8 partitions of 3,000 rows (read-only: copy before changing)."""
    out = tmp_path_factory.mktemp("data") / "trips"
    generate(out, TEST_ROWS, seed=7, rows_per_partition=TEST_ROWS_PER_PARTITION, runtime=runtime)
    return out


@pytest.fixture
def trips_copy(trips_dir, tmp_path) -> Path:
    """A private, modifiable copy of the generated dataset."""
    dest = tmp_path / "trips-copy"
    shutil.copytree(trips_dir, dest)
    return dest


@pytest.fixture
def constant_logloss():
    """``of(run_dir)``: the validation log loss of the best constant predictor (the training
    rows' positive rate) of a binary run, the bar a trained model must clearly beat."""

    def of(run_dir) -> float:
        import numpy as np
        import pandas as pd

        from shardflow.pipelines.records.rundir import RunDir
        from shardflow.tasks.encode import Preprocessor

        target = Preprocessor.from_json(RunDir(run_dir).preprocessor.read_text()).target
        frame = pd.read_parquet(Path(run_dir) / "etl" / "features", columns=[target, "_is_validation"])
        rate = frame.loc[~frame["_is_validation"], target].mean()
        y = frame.loc[frame["_is_validation"], target].to_numpy()
        return float(-np.mean(y * np.log(rate) + (1 - y) * np.log(1 - rate)))

    return of
