"""Many machines, no shared file system (issue 27).

The hosts are Linux namespaces (``tests/multihost.py``): a scheduler host, two worker hosts, a
driver, a scorer and a storage host serving S3 (moto), each with its own address on a private
subnet, its own ``/tmp`` and its own processes. The only things they share are the network and
the object store, so a step that reads a local path on the wrong host fails here, as do
collectives that cannot find each other across hosts.

One job (ETL, the global XGBoost, the data-parallel MLP, the per-partition families, evaluation
and the report) runs from the driver against the scheduler host with its input and runs in
``s3://``, and is compared with the same job, same data and same config, on a LocalCluster on
the driver's 127.0.0.1; ``predict`` and ``export`` read the run from another host. Then hosts are
lost: a worker host mid-ETL and mid-XGBoost (the run completes with the undisturbed features and
model), and the scheduler host (the run fails in one line; ``--resume`` finishes it once a
scheduler is back).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from multihost import BUCKET, MultiHost, job_config, unavailable

REASON = unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=str(REASON)),
    pytest.mark.timeout(900),  # a shared 2-core machine: the first test runs both jobs
]

pytest.importorskip("moto.server", reason="the multi-host tests need moto's S3 server: pip install -e '.[test]'")
pytest.importorskip("s3fs", reason="the multi-host tests need s3fs: pip install -e '.[test]'")

#: The job's options: test_reliability's FAST, with a global XGBoost long enough to lose a host
#: in the middle of, checkpointed every round. Trees of depth 4: the evaluation's exact TreeSHAP
#: explanations of depth-8 trees would take most of the test's time.
OPTIONS = [
    "train.xgboost.single_worker=false",
    "train.xgboost.num_boost_round=60",
    "train.xgboost.early_stopping_rounds=null",
    "train.xgboost.params.max_depth=4",
    "train.checkpoint_seconds=0",
    "train.partitions.xgboost_rounds=15",
    "train.partitions.mlp_epochs=1",
    "train.mlp.epochs=2",
    "train.mlp.batch_size=512",
    "encode.min_frequency=5",
]
STORE = f"s3://{BUCKET}"


class Run:
    """A run directory fetched from the store (as this process sees the copy)."""

    def __init__(self, root: Path, seconds: float = 0.0, log: str = ""):
        (self.path,) = [p for p in root.iterdir() if (p / "manifest.json").exists()]
        self.id = self.path.name
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        self.seconds, self.log = seconds, log

    def stage(self, name: str) -> Path:
        return self.path / self.manifest["locations"][name]

    def models(self) -> dict:
        """SHA-256 of every model file, by its path inside the train stage."""
        train = self.manifest["locations"]["train"] + "/"
        return {
            key.removeprefix(train): digest
            for key, digest in self.manifest["artifacts"].items()
            if key.startswith(train) and key.endswith((".ubj", ".pt"))
        }

    def metrics(self) -> dict:
        """The evaluation, without what it measured of the run itself (seconds, memory)."""
        found = json.loads((self.stage("evaluate") / "metrics.json").read_text())
        return {k: v for k, v in found.items() if k not in ("train_seconds", "peak_memory")}


class PortWatch:
    """Samples the listening TCP sockets of some hosts while a job runs (``ss`` in their namespaces)."""

    def __init__(self, hosts):
        self.hosts, self.seen, self._stop = hosts, {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for host in self.hosts:
                for address, port, process in host.listening():
                    self.seen.setdefault((host.name, address, port), process)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def hosts(trips_dir):
    """The hosts and the cluster; the test dataset in the bucket; the job's config on the driver
    and on the scorer (each host has its own /tmp: a file is where it was written only)."""
    with MultiHost() as net:
        net.put(trips_dir, f"{STORE}/data")
        for name in ("driver", "scorer"):
            net[name].path("/tmp/work/job.yaml").write_text(job_config(f"{STORE}/data"))
        yield net


def run_args(hosts, runs: str, *more, cluster: str | None = None) -> list:
    """``shardflow run`` of the job (its config in the host's /tmp/work), runs under ``runs`` in the store."""
    sets = [a for option in OPTIONS for a in ("--set", option)]
    where = ["--runs-dir", f"{STORE}/{runs}", "--cluster", cluster or hosts.scheduler_address]
    return ["run", "-c", "job.yaml", *where, *sets, *more]


def shardflow_run(hosts, runs: str, *more, cluster: str | None = None):
    return hosts.shardflow("driver", *run_args(hosts, runs, *more, cluster=cluster))


def succeeded(done) -> str:
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


@pytest.fixture(scope="module")
def single(hosts):
    """The reference: the same job on one host (a LocalCluster of 2 worker processes on the
    driver's 127.0.0.1)."""
    local = ["--n-workers", "2", "--threads-per-worker", "1", "--memory-limit", "2GB"]
    done = shardflow_run(hosts, "single", *local, cluster="local")
    log = succeeded(done)
    return Run(hosts.get(f"{STORE}/single"), done.seconds, log)


@pytest.fixture(scope="module")
def across(hosts, single):
    """The job from the driver host against the scheduler host, the listening sockets of every
    worker and the scheduler host sampled while it runs."""
    with PortWatch([*hosts.workers, hosts["scheduler"]]) as ports:
        done = shardflow_run(hosts, "multi")
    log = succeeded(done)
    run = Run(hosts.get(f"{STORE}/multi"), done.seconds, log)
    run.ports = ports.seen
    print(f"\nsingle host: {single.seconds:.1f}s, across hosts: {run.seconds:.1f}s")
    return run


def test_a_job_across_hosts_equals_the_job_on_one_host(single, across):
    assert across.manifest["cluster"]["kind"] == "address" and across.manifest["cluster"]["workers"] == 2
    assert single.manifest["cluster"]["kind"] == "local"
    # ETL: the same features, in Parquet and in Zarr.
    pd.testing.assert_frame_equal(
        pd.read_parquet(across.stage("etl") / "features"), pd.read_parquet(single.stage("etl") / "features")
    )
    import zarr

    far = zarr.open_group(str(across.stage("etl") / "features.zarr"), mode="r")
    near = zarr.open_group(str(single.stage("etl") / "features.zarr"), mode="r")
    for name in ("X", "y", "is_validation"):
        np.testing.assert_array_equal(far[name][:], near[name][:])
    # Every model file (global XGBoost, the data-parallel MLP, per-partition models) byte for byte.
    models = across.models()
    assert {"xgboost.ubj", "mlp.pt"} <= set(models), sorted(models)
    assert any(m.startswith("xgboost_partitions/") for m in models)
    assert models == single.models()
    # Evaluation and report.
    assert across.metrics() == single.metrics()
    assert (across.path / "report.html").stat().st_size > 0
    # The workers trained where they are: the global XGBoost's ranks on both worker hosts.
    assert "xgboost: 60 rounds" in across.log


def test_what_listens_on_a_worker_host_binds_its_address(hosts, across):
    """Every socket a worker host listens on during the job is on the address its worker was
    started with (``--host``, ``--dashboard-address``), except XGBoost's, which it binds to every
    interface with no option to change it (README's multi-machine section); the scheduler
    host's (the scheduler, its HTTP server, XGBoost's tracker) are on the scheduler's address."""
    by_host = {}
    for (name, address, port), process in across.ports.items():
        by_host.setdefault(name, []).append((address, port, process))
    for worker in hosts.workers:
        found = by_host[worker.name]
        elsewhere = [s for s in found if s[0] != worker.ip]
        # The nanny, the worker, its HTTP server, torch's store and gloo's listener: all on its address.
        assert len(found) - len(elsewhere) >= 4, found
        # XGBoost's two (its peers' listener, and its error channel's), for one training.
        assert all(address == "0.0.0.0" for address, _, _ in elsewhere), elsewhere
        assert len(elsewhere) <= 2, elsewhere
    scheduler = hosts["scheduler"]
    assert {a for a, _, _ in by_host["scheduler"]} == {scheduler.ip}, by_host["scheduler"]


def test_predict_and_export_on_another_host_read_the_run_from_the_store(hosts, single, across):
    """The scorer host, which never saw the run being written, scores it on the cluster and
    exports it, reading it from the store; the reference run is scored (on a LocalCluster) and
    exported on the driver."""
    data = f"{STORE}/data/trips"
    far = hosts.shardflow(
        "scorer",
        "predict",
        f"{STORE}/multi/{across.id}",
        "--input",
        data,
        "--output",
        f"{STORE}/scored-multi",
        "--cluster",
        hosts.scheduler_address,
    )
    succeeded(far)
    near = hosts.shardflow(
        "driver",
        "predict",
        f"{STORE}/single/{single.id}",
        "--input",
        data,
        "--output",
        f"{STORE}/scored-single",
        "--cluster",
        "local",
        "--n-workers",
        "1",
    )
    succeeded(near)
    scored = {name: hosts.get(f"{STORE}/scored-{name}") for name in ("multi", "single")}
    pd.testing.assert_frame_equal(pd.read_parquet(scored["multi"]), pd.read_parquet(scored["single"]))
    summary = json.loads((across.stage("etl") / "summary.json").read_text())
    assert len(pd.read_parquet(scored["multi"])) == summary["rows"]  # every row the ETL kept

    succeeded(hosts.shardflow("scorer", "export", f"{STORE}/multi/{across.id}", "--out", f"{STORE}/export-multi"))
    succeeded(hosts.shardflow("driver", "export", f"{STORE}/single/{single.id}", "--out", f"{STORE}/export-single"))
    exported = {name: hosts.get(f"{STORE}/export-{name}") for name in ("multi", "single")}
    assert (exported["multi"] / "model.onnx").read_bytes() == (exported["single"] / "model.onnx").read_bytes()


def in_background(hosts, runs: str, *more):
    """``shardflow run`` of the job on the driver, not waited for; its output in the driver's ``<runs>.log``."""
    return hosts["driver"].popen([sys.executable, "-m", "shardflow", *run_args(hosts, runs, *more)], log=f"{runs}.log")


def wait_for_checkpoint(hosts, runs: str, rounds: int, timeout: float = 240) -> bool:
    """Block until the global XGBoost of a run under ``runs`` has checkpointed ``rounds`` rounds
    (and not finished): polled in the store, from the scorer host."""
    done = hosts["scorer"].run(
        [sys.executable, Path(__file__).with_name("multihost.py"), "s3-wait", f"{STORE}/{runs}"]
        + ["checkpoints/xgboost/state.json", "rounds", rounds, timeout],
        timeout=timeout + 60,
    )
    return done.returncode == 0


def wait_for_log(host, name: str, text: str, timeout: float = 120) -> bool:
    """Block until ``text`` appears in the host's log ``name`` (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in host.log(name):
            return True
        time.sleep(0.05)
    return False


def test_losing_a_worker_host_mid_etl_and_mid_xgboost_gives_the_undisturbed_outputs(hosts, across):
    """Every process of worker host 2 is killed twice in one run, and each time a fresh worker
    starts on that host again: during the ETL (as soon as its first pass reports progress) and
    after the global XGBoost's 10th round. The ETL's lost tasks run again and its features equal
    the undisturbed run's; training resumes from its checkpoint on both hosts and the model
    equals the undisturbed run's, byte for byte (the data are placed again as before: partition
    i on the i-th worker by address, and the hosts keep their addresses)."""
    job = in_background(hosts, "lost-worker", "--set", "train.models=[xgboost]")
    driver = hosts["driver"]
    assert wait_for_log(driver, "lost-worker.log", "etl read + prepare"), driver.log("lost-worker.log")[-3000:]
    etl_lost = time.time()
    hosts["worker2"].crash()
    assert job.poll() is None, "the job ended before the host was lost"
    hosts.restart_worker_host(hosts["worker2"])
    assert wait_for_checkpoint(hosts, "lost-worker", rounds=10), driver.log("lost-worker.log")[-3000:]
    lost = time.monotonic()
    hosts["worker2"].crash()
    assert job.poll() is None, "the job ended before the host was lost"
    hosts.restart_worker_host(hosts["worker2"])
    assert job.wait(timeout=300) == 0, driver.log("lost-worker.log")[-4000:]
    log = driver.log("lost-worker.log")
    print(f"\nworker host lost mid-ETL and at round >= 10: the run finished {time.monotonic() - lost:.1f}s later")
    assert "resuming from the checkpoint at round" in log, log[-4000:]
    faulty = Run(hosts.get(f"{STORE}/lost-worker"), log=log)
    etl_done = time.mktime(time.strptime(faulty.manifest["stages"]["etl"]["completed"], "%Y-%m-%dT%H:%M:%S"))
    assert etl_done >= int(etl_lost), "the ETL ended before the host was lost: nothing was lost mid-ETL"

    def features(run: Run) -> pd.DataFrame:
        return pd.read_parquet(run.stage("etl") / "features").sort_values("trip_id", ignore_index=True)

    pd.testing.assert_frame_equal(features(faulty), features(across))
    import zarr

    # The arrays training reads, in their order (the table above is sorted).
    far = zarr.open_group(str(faulty.stage("etl") / "features.zarr"), mode="r")
    near = zarr.open_group(str(across.stage("etl") / "features.zarr"), mode="r")
    for name in ("X", "y", "is_validation"):
        np.testing.assert_array_equal(far[name][:], near[name][:], err_msg=name)
    assert faulty.models()["xgboost.ubj"] == across.models()["xgboost.ubj"], log[-6000:]
    assert faulty.metrics()["metrics"]["xgboost"] == across.metrics()["metrics"]["xgboost"]


def test_losing_the_scheduler_host_fails_in_one_line_and_resume_finishes_the_run(hosts, across):
    """Every process of the scheduler host is killed mid-XGBoost: the run stops with one line
    that says what happened and how to continue. Once a scheduler is back (and the workers,
    which leave with it), ``--resume`` finishes the run from its checkpoint, without redoing the
    ETL: the model equals the undisturbed run's."""
    job = in_background(hosts, "lost-scheduler", "--set", "train.models=[xgboost]")
    driver = hosts["driver"]
    assert wait_for_checkpoint(hosts, "lost-scheduler", rounds=10), driver.log("lost-scheduler.log")[-3000:]
    lost = time.monotonic()
    hosts["scheduler"].crash()
    code = job.wait(timeout=120)
    failed_after = time.monotonic() - lost
    log = driver.log("lost-scheduler.log")
    assert code not in (0, None), log[-3000:]
    errors = [line for line in log.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1, log[-4000:]
    assert errors[0].startswith("shardflow: error: lost the connection to the scheduler at tcp://"), errors
    run_id = errors[0].rsplit("--resume ", 1)[1].strip()
    print(f"\nscheduler host lost: the run failed {failed_after:.1f}s later: {errors[0]}")

    hosts.restart_scheduler_host()
    done = shardflow_run(hosts, "lost-scheduler", "--set", "train.models=[xgboost]", "--resume", run_id)
    resumed = succeeded(done)
    assert f"run {run_id}: etl current" in resumed
    finished = Run(hosts.get(f"{STORE}/lost-scheduler"), log=resumed)
    assert finished.id == run_id
    # XGBoost's ring needs its tracker only to start: the ranks may go on without the scheduler
    # and checkpoint further (even to the end) before their workers leave; the run continues from
    # whatever was checkpointed last, at least the 10 rounds seen before the loss.
    trained = json.loads((finished.stage("train") / "xgboost.json").read_text())
    print(f"resumed from the checkpoint at round {trained['resumed_from']}")
    assert trained["resumed_from"] >= 10
    assert finished.models()["xgboost.ubj"] == across.models()["xgboost.ubj"]
    assert finished.metrics()["metrics"]["xgboost"] == across.metrics()["metrics"]["xgboost"]
