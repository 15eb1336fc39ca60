"""Runs in an object store: a real S3 API server (moto's standalone server) on 127.0.0.1.

Every test here reads its input from ``s3://``, writes its run there and is compared with
the same job on local disk, run in this process's own test cluster: worker processes reach
the server with the credentials of their environment and the endpoint from the config's
``storage_options``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import zarr

pytest.importorskip("moto.server", reason="the object-store tests need moto's S3 server: pip install -e '.[test]'")
s3fs = pytest.importorskip("s3fs", reason="the object-store tests need s3fs: pip install -e '.[test]'")

from test_reliability import FAST, kill_a_worker_when  # noqa: E402

from shardflow.cluster.factory import start  # noqa: E402
from shardflow.core.storage import zarr_store  # noqa: E402
from shardflow.pipelines.etl.stage import etl  # noqa: E402
from shardflow.pipelines.job import run, train  # noqa: E402
from shardflow.pipelines.records.rundir import COMMIT_FILE, RunDir, read_manifest  # noqa: E402
from shardflow.pipelines.serving.model import load_model  # noqa: E402
from shardflow.pipelines.serving.predict import predict  # noqa: E402
from shardflow.pipelines.setup.config import default_config_path, load_config  # noqa: E402

pytestmark = pytest.mark.slow  # whole jobs on clusters: scheduled first (tests/conftest.py)

BUCKET = "shardflow-test"
SECRET = "not-a-real-secret-7f3a"  # must never appear in what a run writes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(trips_dir):
    """moto's S3 server on 127.0.0.1, a bucket holding the test dataset, and credentials in the
    environment (set before the module's cluster starts, so its worker processes inherit them)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    credentials = {
        "AWS_ACCESS_KEY_ID": "shardflow-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in [*credentials, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "SHARDFLOW_STORAGE_ENDPOINTS"]
    }
    os.environ.update(credentials, SHARDFLOW_STORAGE_ENDPOINTS=endpoint)  # configs may name this endpoint
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(k, None)  # the endpoint comes from the config's storage_options only
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        options = {"endpoint_url": endpoint}
        fs = s3fs.S3FileSystem(**options, use_listings_cache=False)
        fs.mkdir(BUCKET)
        fs.put(f"{trips_dir}/", f"{BUCKET}/data/", recursive=True)
        yield SimpleNamespace(options=options, fs=fs, url=f"s3://{BUCKET}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_cluster(s3):
    """Two worker processes started with the S3 credentials in their environment."""
    rt = start(spec="local", n_workers=2, threads_per_worker=1, memory_limit="2GB", dashboard_address="127.0.0.1:0")
    yield rt
    rt.close()


def s3_config(s3, runs: str, extra=()):
    """The job reading ``s3://.../data`` (its input and join table) and writing runs under ``runs``."""
    return load_config(
        default_config_path(),
        [
            *FAST,
            "train.models=[xgboost,mlp]",
            "input.path=trips",
            f"output.runs_dir={s3.url}/{runs}",
            f"storage_options={json.dumps(s3.options)}",
            *extra,
        ],
        base_dir=f"{s3.url}/data",
    )


def local_config(trips_dir, tmp_path, extra=()):
    return load_config(
        default_config_path(),
        [*FAST, "train.models=[xgboost,mlp]", f"output.runs_dir={tmp_path / 'runs'}", *extra],
        base_dir=trips_dir,
    )


def zarr_arrays(run_dir):
    group = zarr.open_group(zarr_store(RunDir(run_dir).zarr, read_only=True), mode="r")
    return {name: group[name][:] for name in ("X", "y", "is_validation")}


def objects_under(s3, url: str) -> list:
    return sorted(s3.fs.find(url.removeprefix("s3://")))


def test_job_on_s3_equals_the_job_on_local_disk_and_resumes_there(s3, s3_cluster, trips_dir, tmp_path):
    local = run(local_config(trips_dir, tmp_path), runtime=s3_cluster)
    config = s3_config(s3, "runs")
    remote = run(config, runtime=s3_cluster)
    assert str(remote.run_dir).startswith(f"{s3.url}/runs/")
    assert remote.metrics == local.metrics
    for name, array in zarr_arrays(local.run_dir).items():
        np.testing.assert_array_equal(zarr_arrays(remote.run_dir)[name], array)
    features = pd.read_parquet(f"{RunDir(remote.run_dir).features}/", storage_options=s3.options)
    pd.testing.assert_frame_equal(features, pd.read_parquet(RunDir(local.run_dir).features))

    # Each stage lies under the prefix the manifest committed; nothing else is left in the run.
    manifest = read_manifest(remote.run_dir)
    assert set(manifest.locations) == {"etl", "train", "evaluate"}
    objects = objects_under(s3, str(remote.run_dir))
    prefixes = {o.split("/")[3] for o in objects}
    assert prefixes == {
        *manifest.locations.values(),
        "checkpoints",
        "manifest.json",
        "config.yaml",
        "report.html",
    }, prefixes
    assert manifest.input["path"] == f"{s3.url}/data/trips"
    for key in objects:  # credentials come from the environment and are written nowhere
        assert SECRET.encode() not in s3.fs.cat_file(key), key

    # A second run finds the run in the store; a changed train section reuses its ETL.
    again = run(config, runtime=s3_cluster)
    assert again.run_dir == remote.run_dir and again.skipped == ["etl", "train", "evaluate"]
    old_train = manifest.locations["train"]
    changed = s3_config(s3, "runs", ["train.mlp.epochs=1"])
    partial = run(changed, runtime=s3_cluster, resume=str(remote.run_dir))
    assert partial.run_dir == remote.run_dir and partial.skipped == ["etl"]
    assert partial.metrics["xgboost"] == local.metrics["xgboost"]
    assert read_manifest(remote.run_dir).locations["train"] != old_train
    assert not [o for o in objects_under(s3, str(remote.run_dir)) if f"/{old_train}/" in o]  # replaced: deleted

    # Predictions from the store into the store, and the model as an object, equal local ones.
    reference = predict(local.run_dir, trips_dir / "trips", tmp_path / "predictions", runtime=s3_cluster)
    scored = predict(
        str(remote.run_dir),
        f"{s3.url}/data/trips",
        f"{s3.url}/predictions",
        runtime=s3_cluster,
        storage_options=s3.options,
    )
    assert scored.rows == reference.rows and scored.model == reference.model
    written = pd.read_parquet(f"{s3.url}/predictions/", storage_options=s3.options)
    pd.testing.assert_frame_equal(written, pd.read_parquet(tmp_path / "predictions"))
    commit = json.loads(s3.fs.cat_file(f"{BUCKET}/predictions/{COMMIT_FILE}"))
    assert sorted(commit["files"]) == sorted(
        o.split("/predictions/")[1] for o in objects_under(s3, f"{s3.url}/predictions") if not o.endswith(COMMIT_FILE)
    )
    # The command line: an S3-compatible endpoint from AWS_ENDPOINT_URL, URLs as they are.
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.options["endpoint_url"]}
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow",
            "predict",
            "--run",
            str(remote.run_dir),
            "--input",
            f"{s3.url}/data/trips",
            "--output",
            f"{s3.url}/cli-predictions",
            "--n-workers",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(f"{s3.url}/cli-predictions/", storage_options=s3.options), written)
    listed = subprocess.run(
        [sys.executable, "-m", "shardflow", "runs", "--runs-dir", f"{s3.url}/runs"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert listed.returncode == 0 and remote.run_dir.name in listed.stdout, listed.stderr
    rows = pd.read_parquet(trips_dir / "trips").head(500)
    model = load_model(str(partial.run_dir), "xgboost", storage_options=s3.options)
    pd.testing.assert_frame_equal(model.predict(rows), load_model(local.run_dir, "xgboost").predict(rows))
    # The copy of its scoring files (what an MLflow python function carries) opens as a local run.
    from shardflow.pipelines.records.trained_models import copy_scoring_files

    copied = copy_scoring_files(partial.run_dir, tmp_path / "scoring-files")
    assert not [p for p in copied.rglob("*") if "@" in p.name]  # each stage under its own name
    model = load_model(copied, "xgboost", storage_options=s3.options)  # the join table: in the store
    pd.testing.assert_frame_equal(model.predict(rows), load_model(local.run_dir, "xgboost").predict(rows))


def test_a_failed_stage_on_s3_commits_nothing(s3, s3_cluster):
    import xgboost as xgb

    class Boom(xgb.callback.TrainingCallback):
        def after_iteration(self, model, epoch, evals_log):
            if epoch == 3:
                raise RuntimeError("boom in round 3")
            return False

    config = s3_config(s3, "failing", ["train.models=[xgboost]", "train.max_attempts=1"])
    done = etl(config, runtime=s3_cluster)
    before = read_manifest(done.run_dir)
    with pytest.raises(Exception, match="boom in round 3"):
        train(config, s3_cluster, done.run_dir, xgboost_callbacks=[Boom()])
    after = read_manifest(done.run_dir)
    assert after == before and not after.has("train")
    assert not [o for o in objects_under(s3, str(done.run_dir)) if "/train@" in o]


def test_worker_lost_during_an_s3_etl_gives_the_fault_free_output(s3, s3_cluster):
    config = s3_config(s3, "faults", ["input.persist=false"])
    clean = etl(config, runtime=s3_cluster)

    def writing():  # pass 3 has written a first partition file of a stage not yet committed
        return any(
            "/features/part-" in o
            for o in objects_under(s3, f"{s3.url}/faults")
            if not o.startswith(str(clean.run_dir).removeprefix("s3://"))
        )

    killer = kill_a_worker_when(s3_cluster, writing)
    faulty = etl(config, runtime=s3_cluster)
    killer.join()
    assert killer.killed.is_set(), "no worker was killed during the write pass"
    for name, array in zarr_arrays(clean.run_dir).items():
        np.testing.assert_array_equal(zarr_arrays(faulty.run_dir)[name], array)
    assert faulty.quarantined == clean.quarantined


def test_fingerprints_follow_the_objects(s3):
    """An object replaced in the store (same name, new content) changes the ETL's key."""
    from shardflow.pipelines.records.stages import stage_keys
    from shardflow.pipelines.setup.plan import InputPlan

    s3.fs.copy(f"{BUCKET}/data/", f"{BUCKET}/fingerprint/", recursive=True)
    config = load_config(
        default_config_path(),
        ["input.path=trips", f"output.runs_dir={s3.url}/runs", f"storage_options={json.dumps(s3.options)}"],
        base_dir=f"{s3.url}/fingerprint",
    )
    before = stage_keys(config, InputPlan(config))
    assert stage_keys(config, InputPlan(config)) == before
    first = sorted(s3.fs.find(f"{BUCKET}/fingerprint/trips"))[0]
    table = pd.read_parquet(f"s3://{first}", storage_options=s3.options)
    table.iloc[:-1].to_parquet(f"s3://{first}", storage_options=s3.options)  # one row fewer
    after = stage_keys(config, InputPlan(config))
    assert after["etl"] != before["etl"]


def test_unreachable_store_and_missing_bucket_say_so_in_one_line(s3, tmp_path):
    from shardflow.core.errors import ShardflowError

    config = load_config(
        default_config_path(),
        [f"output.runs_dir=s3://no-such-bucket-{os.getpid()}/runs", f"storage_options={json.dumps(s3.options)}"],
        base_dir=str(tmp_path),
    )
    with pytest.raises(
        ShardflowError,
        match=r"output.runs_dir s3://no-such-bucket-\d+/runs: bucket "
        r"'no-such-bucket-\d+' does not exist",
    ):
        run(config)
    missing = s3_config(s3, "runs", ["input.path=nothing-here"])
    with pytest.raises(
        ShardflowError,
        match=r"input.path 'nothing-here': no such file or directory \(resolved to "
        r"s3://shardflow-test/data/nothing-here\)",
    ):
        run(missing)
    shutil.rmtree(tmp_path, ignore_errors=True)
