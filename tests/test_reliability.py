"""Faults, resume, security and many machines: real processes are killed, real sockets checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from distributed import Client

from shardflow.cluster.factory import describe_failure, start
from shardflow.core.errors import InputError
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.job import run
from shardflow.pipelines.setup.config import default_config_path, load_config

pytestmark = pytest.mark.slow  # whole jobs on clusters: scheduled first (tests/conftest.py)

FAST = [
    "train.xgboost.single_worker=false",
    "train.xgboost.num_boost_round=30",
    "train.checkpoint_seconds=0",
    "train.partitions.xgboost_rounds=15",
    "train.partitions.mlp_epochs=1",
    "train.mlp.epochs=2",
    "train.mlp.batch_size=512",
    "encode.min_frequency=5",
]


def features_of(result_dir: Path):
    group = zarr.open_group(str(result_dir / "etl" / "features.zarr"), mode="r")
    return group["X"][:], group["y"][:], group["is_validation"][:]


@pytest.fixture
def own_cluster():
    """A private 2-worker cluster for tests that kill its workers."""
    rt = start(spec="local", n_workers=2, threads_per_worker=1, memory_limit="2GB", dashboard_address="127.0.0.1:0")
    yield rt
    rt.close()


def kill_a_worker_when(runtime, condition, timeout=60.0):
    """SIGKILL one worker process as soon as ``condition()`` holds (in a thread); returns the thread."""
    pids = runtime.client.run(os.getpid)
    victim = sorted(pids)[-1]
    killed = threading.Event()

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                os.kill(pids[victim], signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    thread.killed = killed
    return thread


def test_worker_killed_mid_etl_gives_the_fault_free_output(trips_dir, own_cluster, tmp_path):
    config = load_config(
        default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}", "input.persist=false"], base_dir=trips_dir
    )
    clean = etl(config, runtime=own_cluster)
    runs = tmp_path / "runs"

    def writing():  # pass 3 has written a first partition file
        return any(p.name.startswith(".") and list(p.glob("features/part-*.parquet")) for p in runs.iterdir())

    killer = kill_a_worker_when(own_cluster, writing)
    faulty = etl(config, runtime=own_cluster)
    killer.join()
    assert killer.killed.is_set(), "the worker was not killed during the write pass"
    for a, b in zip(features_of(clean.run_dir), features_of(faulty.run_dir)):
        np.testing.assert_array_equal(a, b)
    assert faulty.quarantined == clean.quarantined


def test_worker_killed_mid_run_completes_with_equal_results(trips_dir, own_cluster, tmp_path):
    """A worker dies while the per-partition models train; the run finishes with the same metrics."""
    config = load_config(
        default_config_path(),
        [*FAST, "train.models=[xgboost_partitions,stacked]", f"output.runs_dir={tmp_path / 'runs'}"],
        base_dir=trips_dir,
    )
    clean = run(config, runtime=own_cluster, force=True)

    def in_partition_training():
        tasks = own_cluster.client.run_on_scheduler(
            lambda dask_scheduler: [ts.key for ts in dask_scheduler.tasks.values() if ts.state == "processing"]
        )
        return any(str(k).startswith("train-xgboost-partition") for k in tasks)

    killer = kill_a_worker_when(own_cluster, in_partition_training, timeout=120)
    faulty = run(config, runtime=own_cluster, force=True)
    killer.join()
    assert killer.killed.is_set()
    assert faulty.metrics == clean.metrics


def test_task_that_kills_every_worker_stops_with_a_clear_error(tmp_path):
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        rt = start(spec="local", n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    try:
        future = rt.client.submit(os._exit, 1, key="etl-write-poisoned-7", pure=False)
        with pytest.raises(Exception) as info:
            future.result(timeout=60)
        message = describe_failure(info.value)
        assert message is not None
        assert "'etl-write-poisoned-7'" in message and "cluster.memory_limit" in message
        assert "allowed-failures = 1" in message
        rt.client.wait_for_workers(1, timeout=60)  # the nanny's restart, before the close
    finally:
        rt.close()


def test_run_skips_current_stages_and_recomputes_what_changed(trips_dir, runtime, tmp_path):
    base = [*FAST, "train.models=[xgboost,mlp]", f"output.runs_dir={tmp_path / 'runs'}"]
    config = load_config(default_config_path(), base, base_dir=trips_dir)
    first = run(config, runtime=runtime)
    assert first.skipped == []
    again = run(config, runtime=runtime)
    assert again.run_dir == first.run_dir and again.skipped == ["etl", "train", "evaluate"]
    assert again.metrics == first.metrics
    changed = load_config(default_config_path(), [*base, "train.mlp.epochs=1"], base_dir=trips_dir)
    partial = run(changed, runtime=runtime)
    assert partial.run_dir == first.run_dir and partial.skipped == ["etl"]
    assert partial.metrics["xgboost"] == first.metrics["xgboost"]
    forced = run(changed, runtime=runtime, force=True)
    assert forced.run_dir != first.run_dir and forced.skipped == []


def run_until_a_checkpoint(trips_dir, tmp_path, models: str, rounds: int):
    """``shardflow run`` on the default dataset in a process group of its own (as a shell's
    job), returned once the global XGBoost has written its first checkpoint: ``(command,
    process, the checkpoint's state.json)``."""
    runs = tmp_path / "runs"
    config = tmp_path / "job.yaml"
    config.write_text(
        (trips_dir / "trips.yaml")
        .read_text()
        .replace("path: trips", f"path: {trips_dir / 'trips'}")
        .replace("path: zones.parquet", f"path: {trips_dir / 'zones.parquet'}")
    )
    cmd = [
        sys.executable,
        "-m",
        "shardflow",
        "run",
        "-c",
        str(config),
        "--runs-dir",
        str(runs),
        "--n-workers",
        "2",
        *[a for o in FAST for a in ("--set", o)],
        "--set",
        f"train.models=[{models}]",
        "--set",
        f"train.xgboost.num_boost_round={rounds}",
        "--set",
        "train.xgboost.early_stopping_rounds=null",
        "--set",  # shallow trees: many rounds (the interruption lands mid-training), cheap to explain
        "train.xgboost.params.max_depth=4",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(runs.glob("*/checkpoints/xgboost/state.json")) if runs.exists() else []
        if found:
            return cmd, proc, found[0]
        time.sleep(0.05)
    raise AssertionError(proc.communicate()[1].decode()[-2000:])


def test_resume_after_the_driver_is_killed(trips_dir, tmp_path):
    """SIGKILL the `shardflow run` process during training; `--resume` finishes without redoing the ETL."""
    cmd, proc, state = run_until_a_checkpoint(trips_dir, tmp_path, "xgboost,mlp", rounds=60)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and its workers
    proc.wait()
    run_dir = state.parent.parent.parent
    etl_stamp = json.loads((run_dir / "manifest.json").read_text())["stages"]["etl"]["completed"]
    assert not (run_dir / "train").exists()
    done = subprocess.run([*cmd, "--resume", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["etl"]["completed"] == etl_stamp  # not redone
    assert "run " + run_dir.name + ": etl current" in done.stderr
    assert "resuming from the checkpoint at round" in done.stderr
    xgb_meta = json.loads((run_dir / "train" / "xgboost.json").read_text())
    assert xgb_meta["resumed_from"] > 0 and xgb_meta["rounds"] == 60


def test_local_cluster_listens_only_on_localhost(runtime):
    client = runtime.client
    pids = {os.getpid(), *client.run(os.getpid).values(), *client.run(os.getpid, nanny=True).values()}
    listening = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                listening.append((pid, conn.laddr.ip, conn.laddr.port))
    assert len(listening) >= 5  # scheduler, dashboard, 2 workers, 2 nannies
    assert {ip for _, ip, _ in listening} <= {"127.0.0.1", "::1"}, listening


def test_tls_refuses_a_client_without_the_certificate():
    from distributed.security import Security

    rt = start(spec="local", n_workers=1, tls=True, dashboard_address="127.0.0.1:0")
    try:
        address = rt.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert rt.client.submit(sum, [1, 2]).result() == 3  # the right certificate works
        with pytest.raises((OSError, TimeoutError)):
            Client(address.replace("tls://", "tcp://"), timeout="3s")  # no TLS at all
        with pytest.raises((OSError, TimeoutError)):
            Client(address, security=Security.temporary(), timeout="3s")  # another certificate
    finally:
        rt.close()


def test_existing_scheduler_started_by_dask_commands(trips_dir, runtime, tmp_path):
    """`dask scheduler` and two `dask worker` processes, reached by address, give the local result."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [
        subprocess.Popen(
            [
                "dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    ]
    try:
        deadline = time.monotonic() + 30
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    ["dask", "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--memory-limit", "2GB"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
            )
        config = load_config(
            default_config_path(),
            [f"output.runs_dir={tmp_path / 'runs'}", f"cluster.spec={address}"],
            base_dir=trips_dir,
        )
        remote = start(config.cluster)
        try:
            remote.client.wait_for_workers(2, timeout=60)
            assert remote.kind == "address"
            far = etl(config, runtime=remote)
        finally:
            remote.close()
        near = etl(config, runtime=runtime)
        for a, b in zip(features_of(far.run_dir), features_of(near.run_dir)):
            np.testing.assert_array_equal(a, b)
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)


@pytest.fixture
def many_files(trips_dir, tmp_path):
    """The dataset rewritten as 200 small files."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((trips_dir / "trips").glob("*.parquet"))])
    out = tmp_path / "many"
    (out / "trips").mkdir(parents=True)
    shutil.copy(trips_dir / "zones.parquet", out / "zones.parquet")
    for i in range(200):
        pq.write_table(table.slice(i * 120, 120), out / "trips" / f"part-{i:04d}.parquet")
    return out


def test_truncated_file_among_hundreds_is_named(many_files, runtime, tmp_path):
    victim = many_files / "trips" / "part-0137.parquet"
    victim.write_bytes(victim.read_bytes()[:300])
    config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=many_files)
    with pytest.raises(InputError, match="part-0137.parquet: not a readable Parquet file"):
        etl(config, runtime=runtime)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_partition_of_malformed_rows_is_quarantined_with_counts(many_files, runtime, tmp_path):
    victim = many_files / "trips" / "part-0042.parquet"
    table = pq.read_table(victim)
    index = table.schema.get_field_index("trip_distance")
    pq.write_table(table.set_column(index, "trip_distance", pa.array([-5.0] * len(table))), victim)
    config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=many_files)
    result = etl(config, runtime=runtime)
    summary = json.loads((result.stage_dir / "summary.json").read_text())
    assert summary["partition_rows"][42] == 0
    assert summary["partition_quarantined"][42] == 120
    assert result.quarantined["trip_distance: below 0"] >= 120
    assert result.rows + sum(result.quarantined.values()) == 24_000  # nothing lost


def test_partition_larger_than_worker_memory_fails_with_the_setting_to_change(runtime, tmp_path):
    """The nanny kills a worker that passes 95% of its memory limit; the job says what to change."""
    from shardflow.pipelines.setup.generate import generate

    data = generate(tmp_path / "big", 2_000_000, rows_per_partition=2_000_000, runtime=runtime).path
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        rt = start(
            spec="local", n_workers=1, threads_per_worker=1, memory_limit="400MB", dashboard_address="127.0.0.1:0"
        )
    try:
        config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=data)
        with pytest.raises(Exception) as info:
            etl(config, runtime=rt)
        message = describe_failure(info.value)
        assert message is not None, repr(info.value)
        assert "raise cluster.memory_limit" in message and "input.max_partition_rows" in message
        assert not (tmp_path / "runs").exists() or not [
            p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")
        ]
    finally:
        rt.close()


def test_worker_killed_mid_epoch_of_the_data_parallel_mlp_resumes_and_finishes(
    trips_dir, own_cluster, tmp_path, constant_logloss
):
    """SIGKILL a rank mid-epoch: its peer's collective fails at once (no hang), and training
    resumes from the last epoch's checkpoint on the restarted worker and finishes."""
    from shardflow.pipelines.setup.train_config import MLPConfig
    from shardflow.pipelines.training import load_training_data, train_data_parallel_mlp

    config = load_config(
        default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}", "encode.min_frequency=5"], base_dir=trips_dir
    )
    run_dir = etl(config, runtime=own_cluster).run_dir
    data = load_training_data(own_cluster, run_dir / "etl", seed=0)
    cfg = MLPConfig(hidden=[32], epochs=4, batch_size=32, sync="gradients", early_stopping_patience=None)

    def in_second_epoch():
        tasks = own_cluster.client.run_on_scheduler(
            lambda dask_scheduler: [ts.key for ts in dask_scheduler.tasks.values() if ts.state == "processing"]
        )
        return any(str(k).startswith("train-mlp-") and "-e1-rank" in str(k) for k in tasks)

    killer = kill_a_worker_when(own_cluster, in_second_epoch, timeout=120)
    started = time.monotonic()
    out = train_data_parallel_mlp(
        own_cluster, data, cfg, seed=0, checkpoint_dir=tmp_path / "ckpt", collective_timeout=60
    )
    killer.join()
    assert killer.killed.is_set(), "no worker was killed during the second epoch"
    assert out["restarts"] == [1]  # resumed after the first epoch's checkpoint
    assert len(out["history"]["validation_loss"]) == 4
    constant = constant_logloss(run_dir)
    print(f"validation loss {out['history']['validation_loss'][-1]:.4f}, constant predictor {constant:.4f}")
    assert out["history"]["validation_loss"][-1] < 0.95 * constant
    assert time.monotonic() - started < 60  # the survivor did not wait for the 60 s collective timeout


# ----------------------------------------------------------------------------- damaged run directories


def small_regression_job(directory, rows=2_000, models=("xgboost",)):
    """A CSV regression job of ``rows`` rows, ``models`` of a few rounds or epochs."""
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    pd.DataFrame(
        {
            "id": np.arange(rows),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "y": (3 * x1 - x2 + rng.normal(size=rows)).round(3),
        }
    ).to_csv(directory / "t.csv", index=False)
    job = {
        "input": {"path": "t.csv"},
        "target": {"column": "y", "task": "regression"},
        "features": {"numeric": ["x1", "x2"]},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs"},
        "train": {
            "models": list(models),
            "xgboost": {"num_boost_round": 10},
            "mlp": {"epochs": 1, "hidden": [16], "batch_size": 512},
        },
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    return directory / "job.yaml"


def shardflow_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "shardflow", *args], capture_output=True, text=True, cwd=cwd, timeout=180
    )


def test_a_damaged_manifest_is_named_and_skipped_and_breaks_no_other_run(runtime, tmp_path):
    """A truncated manifest.json (a full disk, a copy cut short): listing and searching runs
    name it in one line and pass over it; a command that names that run fails in one line."""
    config = load_config(small_regression_job(tmp_path))
    good = run(config, runtime=runtime).run_dir
    damaged = good.parent / (good.name + "-copy")  # sorts after the good run: searched first
    shutil.copytree(good, damaged)
    text = (damaged / "manifest.json").read_text()
    (damaged / "manifest.json").write_text(text[: len(text) // 2])

    again = run(config, runtime=runtime)  # the search for a reusable ETL passes over the damaged run
    assert again.run_dir == good and again.skipped == ["etl", "train", "evaluate"]
    listed = shardflow_cli("runs", "--runs-dir", str(good.parent), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert good.name in listed.stdout and damaged.name not in listed.stdout
    warnings = [line for line in listed.stderr.splitlines() if "manifest.json" in line]
    assert len(warnings) == 1 and f"{damaged / 'manifest.json'}: damaged (not valid JSON" in warnings[0]
    # A damaged metrics.json: the run is listed without its metrics, the others as they are.
    (good / "evaluate" / "metrics.json").write_text('{"metrics": ')
    listed = shardflow_cli("runs", "--runs-dir", str(good.parent), cwd=tmp_path)
    assert listed.returncode == 0 and good.name in listed.stdout, listed.stderr
    assert f"{good / 'evaluate' / 'metrics.json'}: damaged (JSONDecodeError)" in listed.stderr
    (good / "evaluate" / "metrics.json").write_text(json.dumps({"metrics": []}))
    assert shardflow_cli("runs", "--runs-dir", str(good.parent), cwd=tmp_path).returncode == 0
    shutil.rmtree(good / "evaluate")
    shutil.copytree(damaged / "evaluate", good / "evaluate")  # the copy's is intact (the same run)

    message = f"shardflow: error: {damaged / 'manifest.json'}: damaged (not valid JSON: "
    for command in (
        ["report", str(damaged)],
        ["export", str(damaged), "--out", str(tmp_path / "onnx")],
        [
            "predict",
            "--run",
            str(damaged),
            "--input",
            "t.csv",
            "--output",
            "scores",
            "--cluster",
            "local",
            "--n-workers",
            "1",
        ],
        ["run", "-c", "job.yaml", "--resume", str(damaged), "--cluster", "local", "--n-workers", "1"],
    ):
        proc = shardflow_cli(*command, cwd=tmp_path)
        errors = [line for line in proc.stderr.splitlines() if "shardflow: error" in line or "Traceback" in line]
        assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(message), (command, proc.stderr)
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "scores").exists()

    from shardflow.pipelines.records.manifest import ManifestError
    from shardflow.pipelines.records.rundir import read_manifest

    for text, why in [
        ("", "empty file"),
        ("[1, 2]", "holds a list, not a JSON object"),
        ('{"stages": {"etl": 3}}', "a stage's entry \\('etl'\\) is not a JSON object"),
        ('{"stages": {"etl": {"key": 3}}}', "a stage's key or completion time \\('etl'\\) is not text"),
        ('{"artifacts": []}', "'artifacts' is not a JSON object"),
    ]:
        (damaged / "manifest.json").write_text(text)
        with pytest.raises(ManifestError, match=f"manifest.json: damaged \\({why}\\)"):
            read_manifest(damaged)


def test_a_pickle_in_a_runs_weights_file_is_refused_in_one_line(runtime, tmp_path):
    """A run's ``mlp.pt`` replaced by a pickle that runs a command, its hash recorded in the
    manifest too: torch's weights-only loader refuses it, and the command says so in one line."""
    import hashlib
    import pickle

    marker = tmp_path / "the-payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    run_dir = run(load_config(small_regression_job(tmp_path, models=["mlp"])), runtime=runtime).run_dir
    weights = run_dir / "train" / "mlp.pt"
    weights.write_bytes(pickle.dumps({"layers.0.weight": Payload()}))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["artifacts"]["train/mlp.pt"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    proc = shardflow_cli("export", str(run_dir), "--model", "mlp", "--out", str(tmp_path / "onnx"), cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if "shardflow: error" in line or "Traceback" in line]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith(
        f"shardflow: error: {weights}: not a weights file shardflow wrote (UnpicklingError: "
        "torch's weights-only loader refused it"
    ), errors[0]
    assert "weights_only" not in errors[0]  # not torch's advice to load it unsafely
    assert not marker.exists() and not (tmp_path / "onnx").exists()


# ----------------------------------------------------------------------------- one process per run directory


def test_two_jobs_on_one_runs_directory_never_share_a_run(runtime, tmp_path):
    """Two `shardflow run`s on one runs_dir both found the same reusable run: one printed
    its table while the directory held the other's models (config.yaml max_depth 8,
    train/xgboost.json 2). A run directory now belongs to one process at a time."""
    from shardflow.pipelines.records.ownership import claim_run, release_run

    rng = np.random.default_rng(0)
    n = 3000
    table = {"id": np.arange(n), "x": rng.normal(size=n).round(4), "z": rng.normal(size=n).round(4)}
    table["y"] = (table["x"] + 0.5 * table["z"] + rng.normal(scale=0.5, size=n) > 0).astype(int)
    import pandas as pd

    pd.DataFrame(table).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        "input: {path: t.csv}\ntarget: {column: y}\nfeatures: {numeric: [x, z]}\n"
        "split: {key: [id]}\noutput: {runs_dir: runs}\n"
        "train: {models: [xgboost], xgboost: {num_boost_round: 20}}\n"
    )
    reusable = etl(load_config(tmp_path / "job.yaml"), runtime=runtime).run_dir

    def command(depth, *extra):
        return [
            sys.executable,
            "-m",
            "shardflow",
            "run",
            "-c",
            str(tmp_path / "job.yaml"),
            "--n-workers",
            "1",
            "--set",
            f"train.xgboost.params={{max_depth: {depth}}}",
            *extra,
        ]

    def consistent(run_dir: Path) -> int:
        """The run's config and its model agree; returns their max_depth."""
        import yaml

        configured = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["xgboost"]["params"]["max_depth"]
        trained = json.loads((run_dir / "train" / "xgboost.json").read_text())["params"]["max_depth"]
        assert configured == trained, run_dir
        return trained

    # This process holds the run (as a live `shardflow run` does): another job writes elsewhere.
    assert claim_run(reusable)
    try:
        done = subprocess.run(command(2), capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        elsewhere = Path(done.stdout.split("run:    ")[1].split()[0])
        assert elsewhere != reusable and consistent(elsewhere) == 2
        assert not (reusable / "train").exists()  # the held run was not touched
        assert f"run {reusable.name}: in use by process {os.getpid()}" in done.stderr
        resumed = subprocess.run(
            command(2, "--resume", str(reusable)), capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        errors = [line for line in resumed.stderr.splitlines() if line.startswith("shardflow: error:")]
        assert resumed.returncode == 2 and len(errors) == 1 and f"in use by process {os.getpid()}" in errors[0]
    finally:
        release_run(reusable)
    assert not (reusable / ".lock").exists()

    # Two jobs at once, both finding the reusable run: each prints a directory holding its own model.
    jobs = {
        depth: subprocess.Popen(command(depth), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for depth in (3, 5)
    }
    printed = {}
    for depth, job in jobs.items():
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-2000:]
        printed[depth] = Path(out.split("run:    ")[1].split()[0])
    if printed[3] != printed[5]:  # they overlapped: one took the reusable run, the other a new one
        assert {consistent(printed[3]), consistent(printed[5])} == {3, 5}
        assert consistent(printed[3]) == 3 and consistent(printed[5]) == 5
    else:  # one ran after the other had finished: the run holds the later job, consistently
        assert consistent(printed[3]) in (3, 5)
    assert not any(p.name == ".lock" for p in (tmp_path / "runs").rglob(".lock"))


def test_an_output_over_the_run_or_the_input_is_refused_and_nothing_is_lost(runtime, tmp_path):
    """`predict --run R --output R --overwrite` deleted the run it read. An output may never
    be, hold or lie inside the run being read, nor be or hold its input."""
    import hashlib

    import pandas as pd

    from shardflow.core.errors import ShardflowError
    from shardflow.pipelines.serving.export import export
    from shardflow.pipelines.serving.predict import predict

    rng = np.random.default_rng(1)
    n = 2000
    frame = pd.DataFrame({"id": np.arange(n), "x": rng.normal(size=n).round(4)})
    frame["y"] = (frame.x + rng.normal(scale=0.5, size=n) > 0).astype(int)
    (tmp_path / "in").mkdir()
    frame.to_csv(tmp_path / "in" / "t.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        "input: {path: in/t.csv}\ntarget: {column: y}\nfeatures: {numeric: [x]}\n"
        "output: {runs_dir: runs}\n"
        "train: {models: [xgboost], xgboost: {num_boost_round: 10}}\n"
    )
    run_dir = run(load_config(tmp_path / "job.yaml"), runtime=runtime).run_dir

    def snapshot():
        return {
            p.relative_to(tmp_path): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp_path.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    for output, words in (
        (run_dir, "is --run"),
        (run_dir / "scores", "lies inside --run"),
        (run_dir.parent, "holds --run"),
        (tmp_path / "in", "holds --input"),
        (tmp_path / "in" / "t.csv", "is --input"),
        (tmp_path, "holds --run"),
    ):
        with pytest.raises(ShardflowError, match=words):
            predict(run_dir, tmp_path / "in" / "t.csv", output, overwrite=True, runtime=runtime)
    with pytest.raises(ShardflowError, match="is --input"):  # the directory a glob reads
        predict(run_dir, str(tmp_path / "in" / "*.csv"), tmp_path / "in", overwrite=True, runtime=runtime)
    (tmp_path / "in" / "2026").mkdir()
    (tmp_path / "in" / "t.csv").rename(tmp_path / "in" / "2026" / "t.csv")
    with pytest.raises(ShardflowError, match="lies inside --input"):  # a pattern that reads every folder below
        predict(
            run_dir, str(tmp_path / "in" / "*" / "t.csv"), tmp_path / "in" / "2026", overwrite=True, runtime=runtime
        )
    (tmp_path / "in" / "2026" / "t.csv").rename(tmp_path / "in" / "t.csv")
    (tmp_path / "in" / "2026").rmdir()
    with pytest.raises(ShardflowError, match="lies inside run"):
        export(run_dir, run_dir / "onnx")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow",
            "predict",
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "in" / "t.csv"),
            "--output",
            str(run_dir),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("shardflow: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "is --run" in errors[0], done.stderr[-2000:]
    assert snapshot() == before  # nothing written, nothing lost
    # Beside or below the input is fine.
    scored = predict(run_dir, str(tmp_path / "in" / "*.csv"), tmp_path / "in" / "scores", runtime=runtime)
    assert len(pd.read_parquet(scored.output)) == n


def test_ctrl_c_during_training_exits_cleanly_and_the_next_run_resumes(trips_dir, tmp_path):
    """Ctrl-C (SIGINT to the terminal's foreground process group: the driver, its scheduler and
    its workers) while the global XGBoost trains: exit 130 with one line, no process of the
    group left, no half-written stage; the same command then reuses the ETL and resumes."""
    runs = tmp_path / "runs"
    cmd, proc, state = run_until_a_checkpoint(trips_dir, tmp_path, "xgboost", rounds=400)
    group = proc.pid  # start_new_session: the group's id is the driver's pid, as a shell's job is
    members = [p for p in psutil.process_iter(["pid"]) if _in_group(p, group)]
    assert len(members) >= 3  # the driver and two worker processes (with their nannies)
    os.killpg(group, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    run_dir = state.parent.parent.parent
    # One line that names the run to continue (the ETL it completed is kept, nothing else).
    last = err.strip().splitlines()[-1]
    expected = f"shardflow: interrupted; continue with: shardflow run --resume {run_dir.name} "
    assert last.startswith(expected), err[-2000:]
    assert "Traceback" not in err
    assert psutil.wait_procs(members, timeout=30)[1] == []  # every process of the group has exited
    assert not (run_dir / "train").exists() and not list(runs.glob(".*tmp*")) and not (run_dir / ".lock").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"run {run_dir.name}: etl current" in again.stderr
    assert "resuming from the checkpoint at round" in again.stderr, again.stderr[-4000:]


def _in_group(process, group: int) -> bool:
    try:
        return os.getpgid(process.pid) == group
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def test_a_checkpoint_stopped_between_its_model_and_its_state_resumes_at_the_state(tmp_path):
    """The model is written before the state: a process killed between the two leaves a model
    with more rounds than the state says. The checkpoint is the model's first rounds (the
    model the state describes), not a restart from round 0."""
    import json

    import xgboost as xgb

    from shardflow.pipelines.records.rundir import RunDir
    from shardflow.pipelines.training.xgboost_checkpoint import read_checkpoint

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    train = xgb.DMatrix(x, label=x[:, 0] + rng.normal(0, 0.1, 500))
    params = {"max_depth": 3, "eta": 0.3, "seed": 0, "nthread": 1}
    seven = xgb.train(params, train, num_boost_round=7)
    RunDir.checkpoint_file(tmp_path, "model").write_bytes(bytes(seven.save_raw(raw_format="ubj")))
    RunDir.checkpoint_file(tmp_path, "state").write_text(json.dumps({"token": "t", "rounds": 5}))
    booster, state = read_checkpoint(tmp_path, "t")
    assert state["rounds"] == 5 and booster.num_boosted_rounds() == 5
    five = xgb.train(params, train, num_boost_round=5)
    np.testing.assert_array_equal(booster.predict(train), five.predict(train))
    # Going on from it gives the model trained without the stop.
    np.testing.assert_allclose(
        xgb.train(params, train, num_boost_round=2, xgb_model=booster).predict(train), seven.predict(train), rtol=1e-6
    )
    assert read_checkpoint(tmp_path, "another job") == (None, None)
