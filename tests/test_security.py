"""Untrusted configs and run directories: payloads are refused, nothing they name runs.

Each payload tries to create a marker file; the tests check the marker does not exist
afterwards — in the driver and in the workers, which share this file system.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import xgboost as xgb
import yaml

from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.job import train
from shardflow.pipelines.records.artifacts import ArtifactError, sha256
from shardflow.pipelines.records.rundir import read_manifest, update_manifest
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import ConfigError, default_config_path, load_config
from shardflow.tasks.expressions import evaluate, parse_expression

FAST = [
    "train.models=[xgboost]",
    "train.xgboost.single_worker=false",
    "train.xgboost.num_boost_round=12",
    "train.checkpoint_seconds=0",
    "encode.min_frequency=5",
]


def payloads(marker):
    """The issue's payloads, each aimed at creating ``marker``."""
    return [
        f"trip_distance.__class__.__init__.__globals__['sys'].modules['os'].system('touch {marker}')",
        f"trip_distance + 0 * trip_distance.__class__.__init__.__globals__['sys'].modules['os']"
        f".system('touch {marker}')",
        f"trip_distance.to_csv('{marker}')",
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w')",
        "(lambda: 1)()",
        "trip_distance[0]",
        "__builtins__",
        "[x for x in trip_distance]",
        "getattr(trip_distance, 'to_csv')",
    ]


@pytest.mark.parametrize("key", ["features.derived.evil", "target.expression"])
def test_config_expression_payloads_are_refused_and_run_nothing(trips_dir, runtime, tmp_path, key):
    marker = tmp_path / "pwned"
    runs = tmp_path / "runs"
    for payload in payloads(marker):
        override = f"{key}={json.dumps(payload)}"
        with pytest.raises(ConfigError) as err:
            config = load_config(default_config_path(), [f"output.runs_dir={runs}", override], base_dir=trips_dir)
            etl(config, runtime=runtime)  # only reached if the config were accepted
        message = str(err.value)
        assert f"config key '{key}" in message and "is not allowed" in message or "not a valid" in message, message
        assert len(message.splitlines()) == 1
        assert not marker.exists(), payload
    assert not runs.exists()


def test_refusal_names_the_offending_piece():
    with pytest.raises(ValueError, match=r"'distance.to_csv' is not allowed in an expression \(attribute access\)"):
        parse_expression("distance.to_csv('/tmp/x.csv')", "features.derived.x")
    with pytest.raises(
        ValueError, match=r"'open' is not allowed in an expression \(function 'open' is not in the list"
    ):
        parse_expression("distance + 0 * open('x')", "target.expression")
    with pytest.raises(ValueError, match=r"'__class__' is not allowed.*dunder"):
        parse_expression("where(__class__ > 1, 1, 0)", "target.expression")


def test_whitelisted_expressions_match_pandas():
    frame = pd.DataFrame(
        {"dist ance": [1.0, 2.0, np.nan, 4.0], "fare": [10.0, 0.0, 5.0, -2.0], "kind": ["a", "b", "a", None]}
    )
    cases = {
        "`dist ance` * 1.6": frame["dist ance"] * 1.6,
        "fare / `dist ance`": frame["fare"] / frame["dist ance"],
        "abs(fare) + sqrt(`dist ance`)": frame["fare"].abs() + np.sqrt(frame["dist ance"]),
        "log1p(clip(fare, 0, None))": np.log1p(frame["fare"].clip(0, None)),
        "where(kind == 'a', fare, -fare)": frame["fare"].where(frame["kind"] == "a", -frame["fare"]),
        "fare if fare > 0 else 0": frame["fare"].where(frame["fare"] > 0, 0),
        "isnull(`dist ance`) or kind in ['b']": frame["dist ance"].isna() | frame["kind"].isin(["b"]),
        "0 < fare <= 10 and not isnull(kind)": (frame["fare"] > 0) & (frame["fare"] <= 10) & frame["kind"].notna(),
        "fillna(`dist ance`, 0) ** 2 // 3 % 2": frame["dist ance"].fillna(0) ** 2 // 3 % 2,
    }
    for text, expected in cases.items():
        got = evaluate(parse_expression(text), frame)
        pd.testing.assert_series_equal(got.astype(expected.dtype), expected, check_names=False, obj=text)
    # `&` and `|` bind looser than comparisons, as in pandas' eval (Python's own would not).
    plain = frame.rename(columns={"dist ance": "dist"})
    for text in ("fare > 0 & kind == 'a'", "dist == 1 | fare > 5", "fare > 0 & dist > 1 | kind == 'b'"):
        pd.testing.assert_series_equal(
            evaluate(parse_expression(text), plain), plain.eval(text), check_names=False, obj=text
        )


def test_expressions_cannot_exhaust_a_worker():
    """Huge constants are folded in float64 on the client; text arithmetic and giant inputs are refused."""
    import time

    frame = pd.DataFrame({"a": [1.0, 2.0]})
    started = time.perf_counter()
    assert evaluate(parse_expression("a + 10**10**10"), frame).tolist() == [np.inf, np.inf]
    assert time.perf_counter() - started < 1
    with pytest.raises(ValueError, match="arithmetic on text"):
        parse_expression("a * ('x' * 10**10 == 'y')", "features.derived.x")
    with pytest.raises(ValueError, match="longer than 2000"):
        parse_expression("a+" * 1500 + "1", "features.derived.x")
    with pytest.raises(ValueError, match="not a valid expression|nested"):
        parse_expression("-" * 1500 + "a", "features.derived.x")


def test_backticked_column_names_work_end_to_end(runtime, tmp_path):
    rng = np.random.default_rng(3)
    n = 600
    data = pd.DataFrame({"id": np.arange(n), "dist ance": rng.uniform(1, 10, n), "y": rng.integers(0, 2, n)})
    data.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "input": {"path": "t.csv"},
                "target": {"column": "y"},
                "features": {"derived": {"km": "`dist ance` * 1.6"}},
                "split": {"key": ["id"]},
                "clean": {"clip_sigma": None},
                "output": {"keep_columns": ["id"], "runs_dir": "runs"},
            }
        )
    )
    result = etl(load_config(tmp_path / "job.yaml"), runtime=runtime)
    features = pd.read_parquet(result.stage_dir / "features")
    features = features.assign(id=features["id"].astype(int)).sort_values("id")
    mean, std = (data["dist ance"] * 1.6).mean(), (data["dist ance"] * 1.6).std(ddof=0)
    expected = ((data["dist ance"] * 1.6 - mean) / std).to_numpy()
    np.testing.assert_allclose(features["km"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def small_run(trips_dir, runtime, tmp_path_factory):
    runs = tmp_path_factory.mktemp("secure-runs")
    config = load_config(default_config_path(), [*FAST, f"output.runs_dir={runs}"], base_dir=trips_dir)
    from shardflow.pipelines.job import run

    return run(config, runtime=runtime).run_dir


def copy_run(run_dir, tmp_path):
    dest = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, dest)
    return dest


def test_predict_refuses_an_edited_config_and_runs_nothing(small_run, trips_dir, runtime, tmp_path):
    marker = tmp_path / "pwned"
    run_dir = copy_run(small_run, tmp_path)
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["features"]["derived"]["fare_per_mile"] = (
        f"fare_amount + 0 * fare_amount.__class__.__init__.__globals__['sys'].modules['os'].system('touch {marker}')"
    )
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ArtifactError, match=r"config.yaml: does not match the run's manifest"):
        predict(run_dir, str(trips_dir / "trips"), tmp_path / "scores", runtime=runtime)
    # Whoever can edit the run directory can also edit the manifest's hashes: the
    # expression still goes through the whitelist, and nothing runs.
    manifest = read_manifest(run_dir)
    update_manifest(run_dir, artifacts={**manifest.artifacts, "config.yaml": sha256(config_path)})
    with pytest.raises(ConfigError, match=r"features.derived.fare_per_mile.*is not allowed"):
        predict(run_dir, str(trips_dir / "trips"), tmp_path / "scores", runtime=runtime)
    assert not marker.exists()
    assert not (tmp_path / "scores").exists()


def test_predict_refuses_a_changed_dimension_table(small_run, trips_dir, runtime, tmp_path):
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(trips_dir, data)
    run_dir = copy_run(small_run, tmp_path)
    config_path = run_dir / "config.yaml"
    text = config_path.read_text().replace(str(trips_dir), str(data))
    config_path.write_text(text)
    manifest = read_manifest(run_dir)
    update_manifest(
        run_dir,
        artifacts={**manifest.artifacts, "config.yaml": sha256(config_path)},
        joins=[{**j, "path": j["path"].replace(str(trips_dir), str(data))} for j in manifest.joins],
    )
    predict(run_dir, str(data / "trips"), tmp_path / "scores-before", runtime=runtime)  # unchanged: scores
    zones = pq.read_table(data / "zones.parquet")
    pq.write_table(zones.slice(1), data / "zones.parquet")  # a zone less
    with pytest.raises(ArtifactError, match=r"zones.parquet: the dimension table changed since the run"):
        predict(run_dir, str(data / "trips"), tmp_path / "scores", runtime=runtime)
    assert not (tmp_path / "scores").exists()


@pytest.mark.parametrize("relative", ["etl/preprocessor.json", "evaluate/metrics.json"])
def test_predict_refuses_every_edited_file_it_reads(small_run, trips_dir, runtime, tmp_path, relative):
    run_dir = copy_run(small_run, tmp_path)
    path = run_dir / relative
    path.write_text(path.read_text().replace("0", "1", 1))
    with pytest.raises(ArtifactError, match=rf"{relative}: does not match the run's manifest"):
        predict(run_dir, str(trips_dir / "trips"), tmp_path / "scores", runtime=runtime)
    assert not (tmp_path / "scores").exists()


class ListenerSnapshot(xgb.callback.TrainingCallback):
    """At round 3, rank 0 lists every listening socket of the driver and of each worker."""

    def __init__(self, pids, out):
        super().__init__()
        self.pids, self.out = pids, str(out)

    def after_iteration(self, model, epoch, evals_log):
        if model.num_boosted_rounds() == 3 and xgb.collective.get_rank() == 0:
            seen = {}
            for role, pid in self.pids.items():
                seen[role] = [
                    (c.laddr.ip, c.laddr.port)
                    for c in psutil.Process(pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN
                ]
            with open(self.out, "w") as f:
                json.dump(seen, f)
        return False


def test_global_xgboost_collective_binds_where_the_cluster_binds(trips_dir, runtime, tmp_path):
    """The tracker (in the scheduler, i.e. the driver here) listens on loopback only.

    XGBoost's own worker-side peer listener binds every interface (no option exists up
    to XGBoost 3.2; see the README's Security section): at most one such socket per
    worker is tolerated, and nothing else.
    """
    config = load_config(default_config_path(), [*FAST, f"output.runs_dir={tmp_path / 'runs'}"], base_dir=trips_dir)
    result = etl(config, runtime=runtime)
    client = runtime.client
    pids = {
        "driver": os.getpid(),
        **{f"worker {w}": pid for w, pid in client.run(os.getpid).items()},
        **{f"nanny {w}": pid for w, pid in client.run(os.getpid, nanny=True).items()},
    }
    out = tmp_path / "listening.json"
    train(config, runtime, result.run_dir, xgboost_callbacks=[ListenerSnapshot(pids, out)])
    seen = json.loads(out.read_text())
    assert set(seen) == set(pids)
    for role, sockets in seen.items():
        exposed = [(ip, port) for ip, port in sockets if not ipaddress.ip_address(ip).is_loopback]
        if role.startswith("worker"):
            assert len(exposed) <= 1 and all(ip in ("0.0.0.0", "::") for ip, _ in exposed), (role, sockets)
        else:
            assert exposed == [], (role, sockets)


def test_mlp_process_group_binds_where_the_cluster_binds(trips_dir, runtime, tmp_path):
    """The MLP's rendezvous store and gloo sockets listen on the workers' Dask interface
    (loopback for a local cluster), never on every interface; the store closes with the
    training (torch keeps one gloo listener per process for later groups: a second
    training opens nothing new that stays)."""
    import threading

    from shardflow.pipelines.setup.train_config import MLPConfig
    from shardflow.pipelines.training import load_training_data, train_data_parallel_mlp

    config = load_config(default_config_path(), [f"output.runs_dir={tmp_path / 'runs'}"], base_dir=trips_dir)
    result = etl(config, runtime=runtime)
    data = load_training_data(runtime, result.run_dir / "etl", seed=0)
    pids = runtime.client.run(os.getpid)

    def listening() -> set:
        found = set()
        for pid in pids.values():
            for conn in psutil.Process(pid).net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((pid, conn.laddr.ip, conn.laddr.port))
        return found

    before = listening()
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(listening())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        cfg = MLPConfig(hidden=[16], epochs=3, batch_size=64, sync="gradients", early_stopping_patience=None)
        train_data_parallel_mlp(runtime, data, cfg, seed=0)
    finally:
        done.set()
        watcher.join()
    opened = seen - before
    assert opened, "no socket of the process group was seen"
    assert all(ipaddress.ip_address(ip).is_loopback for _, ip, _ in opened), opened
    after_one = listening()
    train_data_parallel_mlp(runtime, data, cfg, seed=1)
    assert listening() == after_one


def test_config_yaml_builds_no_python_objects_and_no_alias_bomb(tmp_path):
    """A config is data: a Python tag constructs nothing, and a few lines of aliases that expand
    exponentially (a "billion laughs") are refused at once, not copied and hashed for minutes."""
    base = default_config_path().read_text()
    marker = tmp_path / "ran"
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text(base + f"storage_options: {{x: !!python/object/apply:os.system ['touch {marker}']}}\n")
    with pytest.raises(
        ConfigError,
        match=r"tagged.yaml: not valid YAML: could not determine a constructor for the "
        r"tag 'tag:yaml.org,2002:python/object/apply",
    ):
        load_config(tagged)
    assert not marker.exists()
    levels = ['    l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'] + [
        f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(base + "storage_options:\n  config_kwargs:\n" + "\n".join(levels) + "\n")
    started = time.perf_counter()
    with pytest.raises(
        ConfigError,
        match=r"bomb.yaml: the YAML expands to more than 100,000 values \(through its "
        r"aliases",
    ):
        load_config(bomb)
    assert time.perf_counter() - started < 5
    with pytest.raises(ConfigError, match=r"override 'storage_options': the YAML expands"):
        load_config(
            default_config_path(),
            [
                "storage_options={a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,"
                "*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,"
                "*c,*c,*c,*c,*c,*c], e: [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]}"
            ],
        )


@pytest.mark.parametrize(
    "uri, what",
    [
        ("http://user:s3cret@127.0.0.1:5000", "user name or password"),
        ("http://127.0.0.1:5000/?token=s3cret", "the parameter 'token'"),
    ],
)
def test_a_tracking_uri_with_credentials_is_refused_before_anything_is_written(tmp_path, uri, what):
    """A password in ``tracking.mlflow.tracking_uri`` would be copied into the run's config.yaml:
    every command that loads the config refuses it in one line, and no file holds it."""
    import subprocess
    import sys

    rows = ["id,x,y"] + [f"{i},{i * 0.5},{i % 2}" for i in range(200)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "input": {"path": "t.csv"},
                "target": {"column": "y"},
                "features": {"numeric": ["x"]},
                "output": {"runs_dir": "work/runs"},
                "tracking": {"mlflow": {"tracking_uri": uri}},
            }
        )
    )
    for command in ("etl", "run", "plan"):
        proc = subprocess.run(
            [sys.executable, "-m", "shardflow", command, "-c", str(tmp_path / "job.yaml"), "--n-workers", "1"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("shardflow: error:"), (command, proc.stderr[-2000:])
        assert "config key 'tracking.mlflow.tracking_uri'" in lines[0] and what in lines[0], lines[0]
        assert "s3cret" not in proc.stderr + proc.stdout
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("job.yaml", "t.csv")]
    assert not [p for p in written if b"s3cret" in p.read_bytes()], written
    assert not (tmp_path / "work").exists()


#: The issue's storage options, each weakening transport or access (top level and nested where s3fs reads them).
STORAGE_PAYLOADS = [
    ("use_ssl", {"use_ssl": False}),
    ("verify", {"verify": False}),
    *((("acl", {"acl": acl})) for acl in ("public-read", "public-read-write", "authenticated-read")),
    ("profile", {"profile": "other-account"}),
    ("proxies_config", {"proxies_config": {"proxy_use_forwarding_for_https": True}}),
    ("client_kwargs.use_ssl", {"client_kwargs": {"use_ssl": False}}),
    ("client_kwargs.verify", {"client_kwargs": {"verify": False}}),
    ("s3_additional_kwargs.ACL", {"s3_additional_kwargs": {"ACL": "public-read"}}),
    ("config_kwargs.proxies", {"config_kwargs": {"proxies": {"https": "http://127.0.0.1:3128"}}}),
    ("config_kwargs.proxies_config", {"config_kwargs": {"proxies_config": {"proxy_ca_bundle": "/tmp/ca.pem"}}}),
]


def test_storage_options_that_weaken_transport_or_access_are_refused(runtime, tmp_path, monkeypatch):
    """A config's ``storage_options`` is an allow-list: TLS off, public ACLs, a profile or a proxy are
    refused in one line that points to the environment, and the store (an endpoint the environment
    allows, a plain listening socket here) is never reached: nothing read, written or sent."""
    import socket
    import threading

    # The store's endpoint: a socket that records each connection and closes it at once (a request
    # that got through fails fast instead of waiting for an answer).
    listener, connections, done = socket.socket(), [], threading.Event()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)

    def record():
        while not done.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            connections.append(peer)
            conn.close()

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("SHARDFLOW_STORAGE_ENDPOINTS", f"{endpoint},http://127.0.0.1:3128")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "shardflow-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    quick = {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 0}}  # allowed: fails fast if reached
    base = yaml.safe_load(default_config_path().read_text())
    try:
        for key, payload in STORAGE_PAYLOADS:
            options = {"endpoint_url": endpoint, **payload}
            options["config_kwargs"] = {**quick, **payload.get("config_kwargs", {})}
            job = tmp_path / "job.yaml"
            job.write_text(
                yaml.safe_dump(
                    {
                        **base,
                        "input": {**base["input"], "path": "s3://lake/trips"},
                        "joins": [],
                        "output": {"runs_dir": "s3://lake/runs"},
                        "storage_options": options,
                    }
                )
            )
            with pytest.raises(ConfigError) as err:
                etl(load_config(job), runtime=runtime)  # only reached if the config were accepted
            message = str(err.value)
            assert len(message.splitlines()) == 1, message
            assert f"config key 'storage_options.{key}': not an option a config may set" in message, message
            assert "set it in the environment instead" in message, message
    finally:
        done.set()
        recorder.join()
        listener.close()
    assert connections == []  # the store was never reached: nothing read, written or sent
    # The harmless options stay a config's to choose (an endpoint: only one the environment allows).
    allowed = {
        "anon": False,
        "requester_pays": True,
        "default_block_size": 8 << 20,
        "default_cache_type": "readahead",
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": "eu-west-1"},
        "config_kwargs": {
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 5,
            "s3": {"addressing_style": "path"},
        },
        "s3_additional_kwargs": {"ServerSideEncryption": "AES256"},
    }
    config = load_config(default_config_path(), [f"storage_options={json.dumps(allowed)}"])
    assert config.storage_options == allowed
    for options, problem in [
        ({"default_block_size": 1 << 40}, "must be between"),
        ({"anon": "yes"}, "expected true or false"),
        ({"requester_pays": "billing-project"}, "expected true or false"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            load_config(default_config_path(), [f"storage_options={json.dumps(options)}"])


def _tiny_onnx_export(directory, external: str | None = None, files: dict | None = None):
    """An export directory (``model.onnx`` computing ``y = x + W``, ``metadata.json``); with
    ``external``, ``W``'s 8 bytes are read from that location. ``metadata.json`` records the
    model's SHA-256 (whoever tampers with a model can rewrite its hash too) and ``files``'."""
    import hashlib

    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones(2, np.float32), "W")
    if external is not None:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "8")):
            entry = weights.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(model)
    hashes = {"model.onnx": hashlib.sha256(model).hexdigest(), **(files or {})}
    (directory / "metadata.json").write_text(json.dumps({"inputs": [], "files": hashes}))
    return model


def test_a_tampered_onnx_export_reads_no_file_outside_it(tmp_path, monkeypatch):
    """A tensor whose external data points out of the export directory (``..``, an absolute path,
    a link), or a model/metadata file that is a link out of it, is refused in one line naming the
    file, before ONNX Runtime is given anything; the secret is never opened."""
    import hashlib
    import sys

    import onnxruntime

    from shardflow.tasks.exported import ExportedModel, load_exported

    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret!!")  # 8 bytes: W's size, as in ../../.aws/credentials
    given, opened = [], []
    real_session = onnxruntime.InferenceSession

    def recording_session(model, *args, **kwargs):  # the real session, recording what it is given
        given.append(model)
        return real_session(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    sys.addaudithook(
        lambda event, args: (
            opened.append(args[0]) if event == "open" and args and str(args[0]).endswith("secret") else None
        )
    )  # every open() of this process: the secret's name is watched
    exports = tmp_path / "exports"
    (exports / "linked").mkdir(parents=True)
    (exports / "linked" / "weights.bin").symlink_to(secret)
    digest = hashlib.sha256(b"s3cret!!").hexdigest()  # known: whoever planted the link recorded it
    for name, location, why in [
        ("tampered", "../../secret", "a path with '..'"),
        ("nested", "data/../../../secret", "a path with '..'"),
        ("absolute", str(secret), "an absolute path"),
        ("linked", "weights.bin", "outside the export directory"),
    ]:
        directory = exports / name
        _tiny_onnx_export(directory, location, files={location: digest})
        monkeypatch.chdir(directory)  # where ONNX Runtime would look for a model given as bytes
        with pytest.raises(ValueError) as err:
            load_exported(directory)
        message = str(err.value)
        assert len(message.splitlines()) == 1 and message.startswith(
            f"{directory / 'model.onnx'}: tensor 'W' reads its data from {location!r}, "
        ), message
        assert why in message, message
        assert "s3cret" not in message
    assert given == [] and opened == []  # ONNX Runtime was given nothing; the secret was never opened

    # model.onnx or metadata.json as a link out of the export directory, and a changed model.
    outside = tmp_path / "elsewhere"
    _tiny_onnx_export(outside)
    for link in ("model.onnx", "metadata.json"):
        directory = exports / f"link-{link}"
        _tiny_onnx_export(directory)
        (directory / link).unlink()
        (directory / link).symlink_to(outside / link)
        with pytest.raises(ValueError, match=rf"{link}: a link to {outside / link}, outside the export directory"):
            load_exported(directory)
    changed = exports / "changed"
    _tiny_onnx_export(changed)
    (changed / "model.onnx").write_bytes((changed / "model.onnx").read_bytes().replace(b"tiny", b"tinx"))
    with pytest.raises(ValueError, match=r"changed/model.onnx: its SHA-256 is not the one metadata.json records"):
        load_exported(changed)
    # Bytes that point to external data are refused too (given as bytes, the working directory would be read).
    with pytest.raises(ValueError, match=r"tensor 'W' keeps its data in another file \('../../secret'\)"):
        ExportedModel((exports / "tampered" / "model.onnx").read_bytes(), {})
    assert given == [] and opened == []

    # External data in the export directory, recorded in metadata.json, is read once verified and inlined.
    weights = np.array([40.0, 2.0], np.float32).tobytes()
    inside = exports / "inside"
    inside.mkdir()
    (inside / "weights.bin").write_bytes(weights)
    _tiny_onnx_export(inside, "weights.bin", files={"weights.bin": hashlib.sha256(weights).hexdigest()})
    model = load_exported(inside)
    np.testing.assert_array_equal(model.session.run(None, {"x": np.ones(2, np.float32)})[0], [41.0, 3.0])
    assert len(given) == 1 and b"weights.bin" not in given[0]  # given the data, not a path
    (inside / "weights.bin").write_bytes(weights[::-1])
    with pytest.raises(ValueError, match=r"inside/weights.bin: its SHA-256 is not the one metadata.json records"):
        load_exported(inside)


def _text_and_int_table(directory, fmt: str):
    """A small table with a text column ``cat``, an int column ``id``, an int category ``code``
    and a target ``y``, as CSV or Parquet (where ``id`` stays int64 as read)."""
    rng = np.random.default_rng(11)
    n = 300
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "cat": rng.choice(["a", "b", "c"], n),
            "code": rng.integers(0, 4, n),
            "x": rng.normal(size=n),
            "y": rng.integers(0, 2, n),
        }
    )
    path = directory / f"t.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    return path


#: The issue's payload: text times an integer repeats the text; every ``+ id`` multiplies it.
BLOWUP = "cat * (" + " + ".join(["id"] * 60) + ")"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_arithmetic_payload_is_refused_by_the_cli_before_any_worker_runs(tmp_path, fmt):
    """``cat * (id + id + ...)`` passed the whitelist and filled the workers' memory; it is one
    line naming the key, the operator and the column, in seconds, and nothing is written."""
    import subprocess
    import sys

    path = _text_and_int_table(tmp_path, fmt)
    (tmp_path / "job.yaml").write_text(
        yaml.safe_dump(
            {
                "input": {"path": path.name},
                "target": {"column": "y"},
                "features": {"numeric": ["x"], "categorical": ["cat"], "derived": {"blowup": BLOWUP}},
                "split": {"key": ["id"]},
                "output": {"runs_dir": "runs"},
                "cluster": {"spec": "local", "n_workers": 1},
            }
        )
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "shardflow", "etl", "-c", str(tmp_path / "job.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "shardflow: error: config key 'features.derived.blowup': '*' on text column 'cat'; "
        "arithmetic takes numbers (list the column under features.numeric, or compare it: cat == 'x')"
    ], proc.stderr[-2000:]
    assert "cluster" not in proc.stderr  # refused from the kinds, before a cluster (or a worker) started
    assert elapsed < 30, elapsed
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_arithmetic_on_text_is_refused_from_the_columns_kinds(tmp_path):
    """The parse-time check: text arithmetic is refused naming the operator and the column (or
    literal), text comparisons and numeric expressions are accepted, and the kinds are the ones
    the ETL gives the columns (from the schema, features and ``input.types``)."""
    from shardflow.core.errors import InputError
    from shardflow.pipelines.setup.plan import InputPlan
    from shardflow.tasks.expression_kinds import check_kinds
    from shardflow.tasks.expressions import ExpressionError

    kinds = {"cat": "text", "id": "number", "flag": "boolean", "when": "datetime", "tags": "nested"}
    refused = {
        BLOWUP: "'*' on text column 'cat'",
        "id + cat": "'+' on text column 'cat'",
        "cat % id": "'%' on text column 'cat'",
        "-cat": "'-' on text column 'cat'",
        "sqrt(cat)": "'sqrt' on text column 'cat'",
        "where(id > 1, cat, 0) * id": "'*' on text column 'cat'",
        "(cat if flag else 'z') ** id": "'**' on text column 'cat'",
        "(cat * id) == 'aaa'": "'*' on text column 'cat'",
        "fillna(id, 'n/a') * id": "'*' on the text 'n/a'",
        "tags * id": "'*' on nested column 'tags'",
    }
    for text, message in refused.items():
        with pytest.raises(ExpressionError) as err:
            check_kinds(parse_expression(text, "features.derived.d"), kinds, "features.derived.d")
        assert str(err.value).startswith(f"config key 'features.derived.d': {message}; arithmetic takes numbers"), text
        assert len(str(err.value).splitlines()) == 1
    accepted = {
        "cat == 'x'": "boolean",
        "cat != 'x' and cat in ['a', 'b']": "boolean",
        "not cat in ['a']": "boolean",
        "clip(cat, 'a', 'm') == 'b'": "boolean",
        "isnull(cat) or notnull(tags)": "boolean",
        "(cat == 'x') * id + flag": "number",
        "where(cat == 'x', id, -id) ** 2": "number",
        "id ** 10**9 + log1p(abs(id)) // 3 % 2": "number",
        "when - when": "datetime",
    }
    for text, kind in accepted.items():
        assert check_kinds(parse_expression(text), kinds) == kind, text

    # Numbers past float64 are inf, computed once on the client (no huge integers on a worker).
    frame = pd.DataFrame({"id": [1, 2]})
    started = time.perf_counter()
    for text in ("id + 1" + "0" * 500, "id * 2 ** 2 ** 64", "id * 9 ** 9 ** 9 ** 9"):
        assert np.isinf(evaluate(parse_expression(text), frame)).all(), text[:20]
    assert time.perf_counter() - started < 1

    # Through the table spec: the kinds come from the input's schema and the config.
    path = _text_and_int_table(tmp_path, "parquet")
    base = [
        f"input.path={path}",
        "target.column=y",
        "features.numeric=[x]",
        "features.categorical=[cat]",
        "features.datetime=[]",
        "features.derived={}",
        "output.keep_columns=[]",
        "split.key=[id]",
        "clean.valid_ranges={}",
        "joins=[]",
    ]
    for override, message in [
        ("target.expression='(cat * id) > 5'", "config key 'target.expression': '*' on text column 'cat'"),
        ("features.derived={blowup: 'code + cat'}", "config key 'features.derived.blowup': '+' on text column 'cat'"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            InputPlan(load_config(default_config_path(), [*base, override])).spec  # noqa: B018
    # An int category, a text comparison, and a text column read as a number are fine.
    plan = InputPlan(
        load_config(
            default_config_path(),
            [
                *base,
                "features.categorical=[code]",
                "input.types={cat: number}",
                "features.derived={twice: 'code * 2 + x', is_a: \"cat == 'a'\", n: 'cat * id'}",
            ],
        )
    )
    assert [name for name, _ in plan.spec.derived] == ["twice", "is_a", "n"]


def test_an_exported_models_derived_expression_is_checked_against_the_frame(tmp_path):
    """``metadata.json`` is untrusted: a forged derived input that multiplies text by an int
    column of the caller's frame is refused before it is computed."""
    from shardflow.tasks.exported import ExportedModel
    from shardflow.tasks.expressions import ExpressionError

    model = _tiny_onnx_export(tmp_path / "export")
    forged = ExportedModel(model, {"inputs": [{"name": "x", "type": "float"}], "derived": {"x": "cat * n"}})
    frame = pd.DataFrame({"cat": ["ab", "cd"], "n": [10**9, 3]})
    with pytest.raises(ExpressionError, match=r"'features.derived.x': '\*' on text column 'cat'"):
        forged.inputs(frame)
    fine = ExportedModel(model, {"inputs": [{"name": "x", "type": "float"}], "derived": {"x": "(cat == 'ab') * n"}})
    np.testing.assert_array_equal(fine.inputs(frame)["x"], [1e9, 0.0])
