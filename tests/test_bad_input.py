"""Bad input: one clear error naming the file, column or key, and no output written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.pipelines.config import ConfigError, default_config_path, load_config
from shardflow.pipelines.etl import etl
from shardflow.tasks.errors import InputError, ShardflowError


def run_etl(data_dir, runtime, runs, *overrides):
    config = load_config(default_config_path(), [f"output.runs_dir={runs}", *overrides], base_dir=data_dir)
    return etl(config, runtime=runtime)


def assert_no_output(runs):
    assert not runs.exists() or [p.name for p in runs.iterdir()] == []


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


def test_missing_input_path(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"input.path 'nope': no such file or directory.*'input.path'"):
        run_etl(trips_dir, runtime, runs, "input.path=nope")
    assert_no_output(runs)


def test_truncated_parquet_file_is_named(trips_copy, runtime, runs):
    victim = trips_copy / "trips" / "part-00003.parquet"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"part-00003.parquet: not a readable Parquet file.*truncated"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_corrupt_data_pages_are_reported_from_the_worker(trips_copy, runtime, runs):
    """The footer is intact, so only the worker reading the pages can notice."""
    victim = trips_copy / "trips" / "part-00005.parquet"
    data = bytearray(victim.read_bytes())
    data[4:len(data) // 2] = os.urandom(len(data) // 2 - 4)
    victim.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"part-00005.parquet: cannot read this parquet file"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_missing_column(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"column 'trip_km' \(config key 'features.numeric'\) is not in the input"):
        run_etl(trips_dir, runtime, runs, "features.numeric=[trip_km]")
    assert_no_output(runs)


def test_wrong_column_type(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"column 'vendor' \(config key 'features.numeric'\) has type string"
                                         r".*list it under features.categorical"):
        run_etl(trips_dir, runtime, runs, "features.numeric=[vendor]", "features.categorical=[payment_type]")
    assert_no_output(runs)


def test_column_type_changes_between_files(trips_copy, runtime, runs):
    victim = trips_copy / "trips" / "part-00002.parquet"
    table = pq.read_table(victim)
    index = table.schema.get_field_index("trip_distance")
    table = table.set_column(index, "trip_distance", table.column("trip_distance").cast(pa.string()))
    pq.write_table(table, victim)
    with pytest.raises(InputError, match=r"part-00002.parquet: column 'trip_distance' has type string"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_empty_dataset(trips_copy, runtime, runs):
    trips = trips_copy / "trips"
    schema = pq.read_schema(trips / "part-00000.parquet")
    for f in trips.iterdir():
        f.unlink()
    pq.write_table(schema.empty_table(), trips / "part-00000.parquet")
    with pytest.raises(InputError, match="the dataset has no rows"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_all_null_target(trips_copy, runtime, runs):
    for f in (trips_copy / "trips").iterdir():
        table = pq.read_table(f)
        index = table.schema.get_field_index("is_delayed")
        pq.write_table(table.set_column(index, "is_delayed", pa.nulls(len(table), pa.bool_())), f)
    with pytest.raises(InputError, match=r"target 'is_delayed' is null in every row.*'target.column'"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_join_key_missing_from_dimension_table(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"joins\[0\].right_on: key column 'zone_id' is not in .*zones.parquet"):
        run_etl(trips_dir, runtime, runs, "joins=[{path: zones.parquet, on: [pickup_zone], right_on: [zone_id]}]",
                "features.numeric=[trip_distance]", "features.categorical=[vendor]")
    assert_no_output(runs)


def test_duplicate_dimension_keys(trips_copy, runtime, runs):
    zones = pq.read_table(trips_copy / "zones.parquet")
    pq.write_table(pa.concat_tables([zones, zones.slice(0, 1)]), trips_copy / "zones.parquet")
    with pytest.raises(InputError, match=r"zones.parquet: key \['Z0000'\] appears more than once"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_bad_expression(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"features.derived"):
        run_etl(trips_dir, runtime, runs, "features.derived={bad: fare_amount / vendor}")
    assert_no_output(runs)


@pytest.mark.parametrize("override, message", [
    ("features.numerc=[a]", r"'features.numerc' is not a known option \(did you mean 'features.numeric'\?\)"),
    ("target.task=clustering", r"'target.task': 'clustering' is not one of classification, regression"),
    ("encode.min_frequency=often", r"'encode.min_frequency': expected an integer"),
    ("split.validation_fraction=1.5", r"'split.validation_fraction': must be between 0 and 1"),
    ("cluster.spec=yarn", r"'cluster.spec': 'yarn' is not one of"),
    ("train.models=[xgboost, xgboost_groups]", r"'train.models': 'xgboost_groups' needs train.groups.partition_by"),
    ("train.groups.partition_by=[vendor]", r"'train.groups.partition_by' is set but 'xgboost_groups' is not in"),
    ("train.models=[xgboost_groups]", r"'xgboost_groups' is built on the 'xgboost' models; add 'xgboost'"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(default_config_path(), [override])


@pytest.mark.parametrize("partition_by, message", [
    ("[trip_distance]", r"'trip_distance' is not a categorical feature; list it under features.categorical"),
    ("[vendor, vendor]", r"a column is named twice"),
])
def test_partition_by_names_categorical_features(partition_by, message):
    with pytest.raises(ConfigError, match=message):
        load_config(default_config_path(), ["train.models=[xgboost, xgboost_groups]",
                                            f"train.groups.partition_by={partition_by}"])


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(textwrap.dedent("""
        input: {path: missing/*.parquet}
        target: {column: y}
        features: {numeric: [x]}
    """))
    proc = subprocess.run([sys.executable, "-m", "shardflow", "etl", "-c", str(config), "--runs-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardflow: error: input.path 'missing/*.parquet': no file matches")
    assert not (tmp_path / "runs").exists()


def test_urls_outside_the_object_stores_and_credentials_in_configs_are_refused(tmp_path, monkeypatch):
    """A config is untrusted: it names object stores only (no http, ssh or chained fsspec
    protocols that would reach other hosts or files), and never carries credentials."""
    for key, url, message in [
        ("input.path", "http://example.com/trips.csv", r"'input.path': 'http://example.com/trips.csv': http:// URLs "
                                                      r"are not read; give a local path or one of s3://"),
        ("joins", "[{path: 'ssh://host/zones.csv', on: [zone]}]", r"'joins\[0\].path': 'ssh://host/zones.csv': ssh://"),
        ("output.runs_dir", "simplecache::s3://b/runs", r"'output.runs_dir': 'simplecache::s3://b/runs': chained://"),
        ("input.path", "s3:/b/trips", r"not a URL of the form s3://bucket/key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(default_config_path(), [f"{key}={url}"])
    with pytest.raises(ConfigError, match=r"'storage_options.client_kwargs.aws_secret_access_key': credentials are "
                                          r"not read from a config .* set them in the environment"):
        load_config(default_config_path(), ["storage_options={client_kwargs: {aws_secret_access_key: x}}"])
    with pytest.raises(ConfigError, match=r"'storage_options.s3_additional_kwargs.SSECustomerKey': credentials"):
        load_config(default_config_path(), ["storage_options={s3_additional_kwargs: {SSECustomerKey: x}}"])
    # An endpoint receives the environment's credentials: only one the environment allows.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("SHARDFLOW_STORAGE_ENDPOINTS", raising=False)
    for options in ["{endpoint_url: 'http://attacker.example'}", "{client_kwargs: {endpoint_url: 'http://a.example'}}"]:
        with pytest.raises(ConfigError, match=r"would receive the environment's credentials, and a config does not "
                                              r"choose where they go; allow it in the environment "
                                              r"\(SHARDFLOW_STORAGE_ENDPOINTS="):
            load_config(default_config_path(), [f"storage_options={options}"])
    monkeypatch.setenv("SHARDFLOW_STORAGE_ENDPOINTS", "http://127.0.0.1:9,https://minio.internal")
    config = load_config(default_config_path(), [f"input.path=file://{tmp_path}/trips", "output.runs_dir=s3://b/runs",
                                                 "storage_options={endpoint_url: 'http://127.0.0.1:9'}"])
    assert config.resolve(config.input.path) == f"{tmp_path}/trips"
    assert str(config.runs_dir) == "s3://b/runs" and config.runs_dir.storage_options == {"endpoint_url": "http://127.0.0.1:9"}

    # A URL that a Path has folded to one slash, and the command line's --runs-dir, say the same.
    from shardflow.pipelines.predict import predict

    with pytest.raises(ShardflowError, match=r"--input 's3:/b/new': not a URL of the form s3://bucket/key"):
        predict(tmp_path, Path("s3://b/new"), tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "shardflow", "etl", "-c", str(default_config_path()), "--runs-dir",
                           "ftp://b/runs"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "--runs-dir 'ftp://b/runs': ftp:// URLs are not read" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())

    # An output is a prefix, never a whole bucket (an overwrite would empty it).
    from shardflow.pipelines.rundir import new_output_dir

    with pytest.raises(ShardflowError, match=r"--output s3://lake: a whole bucket; give a prefix in it"):
        new_output_dir("s3://lake", "--output", overwrite=True)

    # No other protocol is opened from Python either (a config file, a run to load).
    from shardflow.pipelines.model import load_model

    with pytest.raises(ConfigError, match=r"http:// URLs are not read"):
        load_config("http://example.com/job.yaml")
    with pytest.raises(ValueError, match=r"http:// URLs are not read"):
        load_model("http://example.com/runs/x")
