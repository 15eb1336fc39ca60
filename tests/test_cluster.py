"""Each cluster spec that can run here, against real scheduler and worker processes."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from distributed import LocalCluster

from shardflow.cluster.config import ClusterConfig
from shardflow.cluster.factory import ClusterError, resolve_spec, start
from shardflow.cluster.plugins import worker_thread_report


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_local_binds_to_localhost_and_reports_dashboard():
    logger = logging.getLogger("shardflow.cluster")
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        rt = start(spec="local", n_workers=1, threads_per_worker=2, memory_limit="1GB", dashboard_address="127.0.0.1:0")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    try:
        assert rt.kind == "local" and rt.backend == "pandas"
        assert rt.client.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = rt.client.scheduler_info(n_workers=-1)["workers"]
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
        assert [w["memory_limit"] for w in workers.values()] == [10**9]
        assert rt.dashboard_link.startswith("http://127.0.0.1:")
        assert any(rt.dashboard_link in m for m in records.messages)
        # Dask starts workers with OMP_NUM_THREADS=1; native libraries must get the worker's 2.
        (report,) = rt.client.run(worker_thread_report).values()
        assert report["nthreads"] == 2
        assert report["OMP_NUM_THREADS"] == "2"
        assert report["torch"] == 2
        assert set(report["blas"]) <= {2}
        assert rt.layout()["threads"] == [2]
    finally:
        rt.close()


def test_existing_scheduler_by_address():
    """An address spec connects to a cluster shardflow did not start, and fixes its threads."""
    with LocalCluster(
        n_workers=1, threads_per_worker=2, host="127.0.0.1", dashboard_address=None, processes=True
    ) as cluster:
        rt = start(spec=cluster.scheduler_address)
        try:
            assert rt.kind == "address" and rt.backend == "pandas"
            assert rt.client.submit(sum, [1, 2]).result() == 3
            (report,) = rt.client.run(worker_thread_report).values()
            assert report["OMP_NUM_THREADS"] == "2"  # set by NativeThreadsPlugin, not by the nanny
            assert report["torch"] == 2
        finally:
            rt.close()
        assert cluster.scheduler_info["workers"]  # the remote cluster is left running


def test_an_existing_client_runs_a_job_and_stays_open(tmp_path):
    """The API takes the ``distributed.Client`` a notebook already has, and leaves it open."""
    import numpy as np
    import pandas as pd
    import yaml
    from distributed import Client

    from shardflow.pipelines.job import run
    from shardflow.pipelines.setup.config import load_config

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": np.arange(2_000), "x": rng.normal(size=2_000).round(4)})
    frame["y"] = (frame.x + rng.normal(scale=0.5, size=2_000) > 0).astype(int)
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "input": {"path": "t.csv"},
                "target": {"column": "y"},
                "features": {"numeric": ["x"]},
                "split": {"key": ["id"]},
                "output": {"runs_dir": "runs"},
                "train": {"models": ["xgboost"], "xgboost": {"num_boost_round": 10}},
            }
        )
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
        ) as cluster,
        Client(cluster) as client,
    ):
        result = run(load_config(tmp_path / "job.yaml"), runtime=client)
        assert result.metrics["xgboost"]["auc"] > 0.75
        assert client.status == "running" and client.submit(sum, [1, 2]).result() == 3
    with pytest.raises(ClusterError, match="expected a shardflow Runtime or a distributed.Client, got str"):
        run(load_config(tmp_path / "job.yaml"), runtime="tcp://127.0.0.1:8786")


@pytest.mark.skipif(importlib.util.find_spec("cudf") is not None, reason="cuDF is installed")
def test_auto_is_local_without_gpu_stack():
    assert resolve_spec(ClusterConfig(spec="auto")) == "local"


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask-cuda is installed")
def test_local_cuda_without_gpu_stack_says_what_to_install():
    with pytest.raises(ClusterError, match=r"pip install \"shardflow\[gpu\]\"|environment.yml"):
        start(spec="local-cuda")


def test_bad_spec_names_the_key():
    with pytest.raises(ValueError, match="cluster.spec"):
        start(spec="kubernetes")


# ----------------------------------------------------------------------------- a config does not choose where


@pytest.mark.parametrize(
    "section, key",
    [
        ("{host: 0.0.0.0}", "cluster.host"),
        ("{dashboard_address: ':8787'}", "cluster.dashboard_address"),
        ("{dashboard_address: '0.0.0.0:0'}", "cluster.dashboard_address"),
        ("{spec: 'tcp://localhost.:{port}'}", "cluster.spec"),
    ],
)
def test_a_config_file_cannot_open_the_cluster_or_send_the_data_elsewhere(tmp_path, section, key):
    """A shared config made a local cluster listen on 0.0.0.0, or shipped every partition to
    a scheduler it named. Where the cluster runs and listens comes from the command line or
    the environment; a config file's value is refused before anything starts."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as recorder:  # stands for "elsewhere": it must see no connection
        recorder.bind(("127.0.0.1", 0))
        recorder.listen()
        recorder.settimeout(0)
        port = recorder.getsockname()[1]
        (tmp_path / "t.csv").write_text("id,x,y\n" + "".join(f"{i},{i * 0.5},{i % 2}\n" for i in range(200)))
        (tmp_path / "job.yaml").write_text(
            "input: {path: t.csv}\ntarget: {column: y}\nfeatures: {numeric: [x]}\n"
            "output: {runs_dir: runs}\n"
            f"cluster: {section.replace('{port}', str(port))}\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "SHARDFLOW_ALLOW_REMOTE_CLUSTER"}
        done = subprocess.run(
            [sys.executable, "-m", "shardflow", "etl", "-c", str(tmp_path / "job.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("shardflow: error:")]
        assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
        assert f"config key '{key}'" in errors[0] and "--allow-remote-cluster" in errors[0]
        assert "cluster local" not in done.stderr  # no cluster was started, so nothing was bound
        assert not (tmp_path / "runs").exists()
        with pytest.raises(BlockingIOError):
            recorder.accept()  # nobody connected


def test_the_command_line_and_consent_may_choose_where(tmp_path, monkeypatch):
    from shardflow.pipelines.setup.config import ConfigError, load_config

    (tmp_path / "job.yaml").write_text(
        "input: {path: t.csv}\ntarget: {column: y}\nfeatures: {numeric: [x]}\n"
        "cluster: {spec: 'tcp://scheduler.example:8786', host: 0.0.0.0}\n"
    )
    monkeypatch.delenv("SHARDFLOW_ALLOW_REMOTE_CLUSTER", raising=False)
    with pytest.raises(ConfigError, match="config key 'cluster.spec'"):
        load_config(tmp_path / "job.yaml")
    # The person running the command: overrides (--cluster, --set), the flag, the environment.
    assert (
        load_config(
            tmp_path / "job.yaml", ["cluster.spec=tcp://scheduler.example:8786", "cluster.host=0.0.0.0"]
        ).cluster.host
        == "0.0.0.0"
    )
    assert load_config(tmp_path / "job.yaml", allow_remote_cluster=True).cluster.spec == "tcp://scheduler.example:8786"
    monkeypatch.setenv("SHARDFLOW_ALLOW_REMOTE_CLUSTER", "1")
    assert load_config(tmp_path / "job.yaml").cluster.host == "0.0.0.0"
    # Loopback and a local scheduler address are this machine: a config may name them.
    (tmp_path / "local.yaml").write_text(
        "input: {path: t.csv}\ntarget: {column: y}\nfeatures: {numeric: [x]}\n"
        "cluster: {spec: 'tcp://127.0.0.1:8786', host: '::1', "
        "dashboard_address: 'localhost:0'}\n"
    )
    monkeypatch.delenv("SHARDFLOW_ALLOW_REMOTE_CLUSTER")
    assert load_config(tmp_path / "local.yaml").cluster.spec == "tcp://127.0.0.1:8786"
