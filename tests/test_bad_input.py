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

from shardflow.core.errors import InputError, ShardflowError
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import ConfigError, default_config_path, load_config


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
    data[4 : len(data) // 2] = os.urandom(len(data) // 2 - 4)
    victim.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"part-00005.parquet: cannot read this parquet file"):
        run_etl(trips_copy, runtime, runs)
    assert_no_output(runs)


def test_missing_column(trips_dir, runtime, runs):
    with pytest.raises(InputError, match=r"column 'trip_km' \(config key 'features.numeric'\) is not in the input"):
        run_etl(trips_dir, runtime, runs, "features.numeric=[trip_km]")
    assert_no_output(runs)


def test_wrong_column_type(trips_dir, runtime, runs):
    with pytest.raises(
        InputError,
        match=r"column 'vendor' \(config key 'features.numeric'\) has type string"
        r".*list it under features.categorical",
    ):
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
        run_etl(
            trips_dir,
            runtime,
            runs,
            "joins=[{path: zones.parquet, on: [pickup_zone], right_on: [zone_id]}]",
            "features.numeric=[trip_distance]",
            "features.categorical=[vendor]",
        )
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("features.numerc=[a]", r"'features.numerc' is not a known option \(did you mean 'features.numeric'\?\)"),
        ("target.task=clustering", r"'target.task': 'clustering' is not one of classification, regression"),
        ("encode.min_frequency=often", r"'encode.min_frequency': expected an integer"),
        ("split.validation_fraction=1.5", r"'split.validation_fraction': must be between 0 and 1"),
        ("cluster.spec=yarn", r"'cluster.spec': 'yarn' is not one of"),
        ("train.models=[xgboost, xgboost_groups]", r"'train.models': 'xgboost_groups' needs train.groups.partition_by"),
        ("train.groups.partition_by=[vendor]", r"'train.groups.partition_by' is set but 'xgboost_groups' is not in"),
        ("train.models=[xgboost_groups]", r"'xgboost_groups' is built on the 'xgboost' models; add 'xgboost'"),
        # Non-finite and absurd numbers (issue 31, item 14).
        (
            "clean.valid_ranges={trip_distance: [.nan, 5]}",
            r"'clean.valid_ranges': holds nan \(at \['trip_distance'\]\[0\]\)",
        ),
        ("split.seed=4294967296", r"'split.seed': must be between 0 and 4,294,967,295, got 4294967296"),
        ("train.seed=1e20", r"'train.seed': must be between 0 and 4,294,967,295"),
        ("train.mlp.hidden=[64, 1e11]", r"'train.mlp.hidden': item 1 must be between 1 and 16,384, got 100000000000"),
        ("input.partitions=1e20", r"'input.partitions': 100,000,000,000,000,000,000 partitions, at most 100,000"),
        ("train.mlp.lr=1e400", r"'train.mlp.lr': must be a finite number, got inf"),
        ("target.classes=[.nan, 1]", r"'target.classes': holds nan"),
        # Checkpoints by training time (issue 30, item 3): the old round count names its replacement.
        (
            "train.xgboost.checkpoint_every=25",
            r"config key 'train.xgboost.checkpoint_every' was replaced by "
            r"'train.checkpoint_seconds' \(seconds of training between checkpoints, "
            r"not rounds\): set that instead$",
        ),
        ("train.checkpoint_seconds=-1", r"'train.checkpoint_seconds': must be between 0 and"),
        ("train.mlp.max_steps=0", r"'train.mlp.max_steps': must be between 1 and"),
    ],
)
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(default_config_path(), [override])


@pytest.mark.parametrize("key", ["true", "false", "3"])
def test_a_yaml_key_that_is_not_a_string_is_named(tmp_path, key):
    """YAML reads an unquoted true/false or number as a bool or an int: one line naming the key."""
    path = tmp_path / "job.yaml"
    path.write_text(f"input: {{path: trips.csv}}\ntrain:\n  {key}: 3\n")
    with pytest.raises(
        ConfigError, match=r"config key 'train\.(True|False|3)' is a (bool|int), not a name .*quote the key"
    ):
        load_config(path)


@pytest.mark.parametrize(
    "partition_by, message",
    [
        ("[trip_distance]", r"'trip_distance' is not a categorical feature; list it under features.categorical"),
        ("[vendor, vendor]", r"a column is named twice"),
    ],
)
def test_partition_by_names_categorical_features(partition_by, message):
    with pytest.raises(ConfigError, match=message):
        load_config(
            default_config_path(),
            ["train.models=[xgboost, xgboost_groups]", f"train.groups.partition_by={partition_by}"],
        )


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        textwrap.dedent("""
        input: {path: missing/*.parquet}
        target: {column: y}
        features: {numeric: [x]}
    """)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "shardflow", "etl", "-c", str(config), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("shardflow: error: input.path 'missing/*.parquet': no file matches")
    assert not (tmp_path / "runs").exists()


def test_urls_outside_the_object_stores_and_credentials_in_configs_are_refused(tmp_path, monkeypatch):
    """A config is untrusted: it names object stores only (no http, ssh or chained fsspec
    protocols that would reach other hosts or files), and never carries credentials."""
    for key, url, message in [
        (
            "input.path",
            "http://example.com/trips.csv",
            r"'input.path': 'http://example.com/trips.csv': http:// URLs "
            r"are not read; give a local path or one of s3://",
        ),
        ("joins", "[{path: 'ssh://host/zones.csv', on: [zone]}]", r"'joins\[0\].path': 'ssh://host/zones.csv': ssh://"),
        ("output.runs_dir", "simplecache::s3://b/runs", r"'output.runs_dir': 'simplecache::s3://b/runs': chained://"),
        ("input.path", "s3:/b/trips", r"not a URL of the form s3://bucket/key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(default_config_path(), [f"{key}={url}"])
    with pytest.raises(
        ConfigError,
        match=r"'storage_options.client_kwargs.aws_secret_access_key': credentials are "
        r"not read from a config .* set them in the environment",
    ):
        load_config(default_config_path(), ["storage_options={client_kwargs: {aws_secret_access_key: x}}"])
    with pytest.raises(ConfigError, match=r"'storage_options.s3_additional_kwargs.SSECustomerKey': credentials"):
        load_config(default_config_path(), ["storage_options={s3_additional_kwargs: {SSECustomerKey: x}}"])
    # An endpoint receives the environment's credentials: only one the environment allows.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("SHARDFLOW_STORAGE_ENDPOINTS", raising=False)
    for options in ["{endpoint_url: 'http://attacker.example'}", "{client_kwargs: {endpoint_url: 'http://a.example'}}"]:
        with pytest.raises(
            ConfigError,
            match=r"would receive the environment's credentials, and a config does not "
            r"choose where they go; allow it in the environment "
            r"\(SHARDFLOW_STORAGE_ENDPOINTS=",
        ):
            load_config(default_config_path(), [f"storage_options={options}"])
    monkeypatch.setenv("SHARDFLOW_STORAGE_ENDPOINTS", "http://127.0.0.1:9,https://minio.internal")
    config = load_config(
        default_config_path(),
        [
            f"input.path=file://{tmp_path}/trips",
            "output.runs_dir=s3://b/runs",
            "storage_options={endpoint_url: 'http://127.0.0.1:9'}",
        ],
    )
    assert config.resolve(config.input.path) == f"{tmp_path}/trips"
    assert str(config.runs_dir) == "s3://b/runs" and config.runs_dir.storage_options == {
        "endpoint_url": "http://127.0.0.1:9"
    }

    # A URL that a Path has folded to one slash, and the command line's --runs-dir, say the same.
    from shardflow.pipelines.serving.predict import predict

    with pytest.raises(ShardflowError, match=r"--input 's3:/b/new': not a URL of the form s3://bucket/key"):
        predict(tmp_path, Path("s3://b/new"), tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "shardflow", "etl", "-c", str(default_config_path()), "--runs-dir", "ftp://b/runs"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "--runs-dir 'ftp://b/runs': ftp:// URLs are not read" in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())

    # An output is a prefix, never a whole bucket (an overwrite would empty it).
    from shardflow.pipelines.records.ownership import new_output_dir

    with pytest.raises(ShardflowError, match=r"--output s3://lake: a whole bucket; give a prefix in it"):
        new_output_dir("s3://lake", "--output", overwrite=True)

    # No other protocol is opened from Python either (a config file, a run to load).
    from shardflow.pipelines.serving.model import load_model

    with pytest.raises(ConfigError, match=r"http:// URLs are not read"):
        load_config("http://example.com/job.yaml")
    with pytest.raises(ValueError, match=r"http:// URLs are not read"):
        load_model("http://example.com/runs/x")


# ----------------------------------------------------------------------------- numbers: finite, sensible


def config_options(cls=None, prefix=""):
    """``(dotted key, type hint)`` of every config option, sections walked (lists of sections: not)."""
    import dataclasses
    import typing

    from shardflow.pipelines.setup.config import Config

    cls = cls or Config
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if typing.get_origin(hint) in (list, dict):
            yield f"{prefix}{f.name}", typing.get_origin(hint)
        elif dataclasses.is_dataclass(inner[0]):
            yield from config_options(inner[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", inner[0]


def test_every_number_option_refuses_non_finite_and_absurd_values():
    """NaN passes every comparison: each float option refuses .nan and .inf, each integer
    option a value past 64 bits, in one line naming the key (a generic check, not a list)."""
    floats = [key for key, hint in config_options() if hint is float]
    integers = [key for key, hint in config_options() if hint is int]
    assert "clean.clip_sigma" in floats and "train.mlp.lr" in floats and "split.seed" in integers
    for key in floats:
        for value, shown in ((".nan", "nan"), ("-.inf", "-inf")):
            with pytest.raises(ConfigError, match=rf"config key '{key}': must be a finite number, got {shown}$"):
                load_config(default_config_path(), [f"{key}={value}"])
    for key in integers:
        with pytest.raises(ConfigError, match=rf"config key '{key}': must be .*, got 100000000000000000000$"):
            load_config(default_config_path(), [f"{key}=1e20"])
    with pytest.raises(ConfigError, match=r"config key 'joins\[0\].min_match_rate': must be a finite number"):
        load_config(default_config_path(), ["joins=[{path: zones.parquet, on: [pickup_zone], min_match_rate: .nan}]"])


def test_sensible_numbers_still_pass():
    config = load_config(
        default_config_path(),
        [
            "train.mlp.lr=1e-3",
            "train.seed=4294967295",
            "input.partitions=1e3",
            "train.xgboost.params={missing: .nan}",
            "clean.clip_sigma=null",
        ],
    )
    assert config.train.mlp.lr == 0.001 and config.input.partitions == 1000 and config.clean.clip_sigma is None


def regression_job(directory, data, runs, **input_options):
    """A regression job on ``data`` (columns id, x, y and the weight w) in ``directory/job.yaml``."""
    import yaml

    job = {
        "input": {"path": str(data), **input_options},
        "target": {"column": "y", "task": "regression", "weight": "w"},
        "features": {"numeric": ["x"]},
        "split": {"key": ["id"]},
        "output": {"runs_dir": str(runs), "keep_columns": ["id"]},
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(job))
    return load_config(directory / "job.yaml")


def regression_csv(path, rows=3_000, **columns):
    """A CSV regression table (id, x, y, w = 1) with ``columns`` overriding whole columns."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    x = rng.normal(size=rows).round(4)
    table = pd.DataFrame(
        {"id": np.arange(rows), "x": x, "y": (2 * x + rng.normal(size=rows)).round(3), "w": 1.0}
    ).astype(object)
    for name, values in columns.items():
        table[name] = values
    table.to_csv(path, index=False)
    return table


def test_input_partitions_is_bounded_by_the_data(runtime, tmp_path, runs):
    """20,000 partitions of a 20,000-row file would hold one row each (and make no progress for
    minutes): the plan bounds them by the data and says so."""
    from shardflow.pipelines.setup.plan import InputPlan, format_plan

    table = regression_csv(tmp_path / "t.csv", rows=20_000)
    table.astype({"id": int, "x": float, "y": float, "w": float}).to_parquet(tmp_path / "t.parquet", row_group_size=500)
    for name in ("t.csv", "t.parquet"):
        plan = InputPlan(regression_job(tmp_path, tmp_path / name, runs, partitions=20_000))
        assert 8 <= len(plan.source.pieces) <= 10, name  # at least 2,000 rows each (estimated for CSV)
        text = format_plan(plan.with_threads(runtime.threads).describe(runtime))
        assert f"partitions  {len(plan.source.pieces)} (20000)" in text
        assert (
            "warning     input.partitions: 20,000 would make partitions of about 1 rows; bounded by the data to"
            f" {len(plan.source.pieces)} partition(s) of at least 2,000 rows" in text
        ), text


def test_non_finite_targets_and_weights_are_quarantined_with_a_reason(runtime, tmp_path, runs):
    y = [str(v) for v in range(3_000)]
    w = ["1.0"] * 3_000
    y[:4] = ["inf", "1e400", "-inf", "1e300"]  # 1e400 reads as inf; 1e300 is infinite as float32
    w[10:15] = ["-1", "inf", "1e-45", "1e39", ""]
    w[20] = "0"  # a weight of 0 is a weight: the row is kept
    x = ["0.5"] * 3_000
    x[30] = "1e300"  # a feature past float32's range is missing, as inf is: the row is kept
    regression_csv(tmp_path / "t.csv", x=x, y=y, w=w)
    result = etl(regression_job(tmp_path, tmp_path / "t.csv", runs), runtime=runtime)
    assert result.quarantined == {
        "y: target not a finite number within ±3.4e+38": 4,
        "w: sample weight not a finite number ≥ 0": 2,
        "w: sample weight outside float32's range (0, or 1.2e-38 to 3.4e+38)": 2,
        "w: missing sample weight": 1,
    }
    assert result.rows == 3_000 - 9
    quarantine = pd_concat(result.stage_dir / "quarantine")
    assert sorted(quarantine.id.astype(int)) == [0, 1, 2, 3, 10, 11, 12, 13, 14]
    features = pd_concat(result.stage_dir / "features").set_index("id")
    assert "30" in features.index and (features.x == 0).all()  # missing: the mean, standardized


def pd_concat(directory):
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in sorted(directory.rglob("*.parquet"))], ignore_index=True)


def test_weights_that_sum_to_zero_are_one_clear_error(runtime, tmp_path, runs):
    for weights, message in [
        ("0", r"target.weight 'w': the [\d,]+ training rows kept weigh 0 in total, so no model can learn from them"),
        ("1e-45", r"every row of .* was quarantined: w: sample weight outside float32's range"),  # a denormal
    ]:
        regression_csv(tmp_path / "t.csv", w=weights)
        with pytest.raises(InputError, match=message):
            etl(regression_job(tmp_path, tmp_path / "t.csv", runs), runtime=runtime)
        assert_no_output(runs)


# ----------------------------------------------------------------------------- messages


def test_an_empty_csv_file_is_named_as_empty(runtime, tmp_path, runs):
    """A 0-byte file (or one whose first line is blank) has no header: said so, not that the
    join's key column is missing from it."""
    from shardflow.pipelines.setup.config import JoinConfig

    (tmp_path / "dims.csv").write_text("id,extra\n1,2\n")
    config = regression_job(tmp_path, tmp_path / "t.csv", runs)
    config.joins = [JoinConfig(path=str(tmp_path / "dims.csv"), on=["id"])]
    for content, what in [(b"", r"the file is empty \(0 bytes\)"), (b"\n1,2,3,1\n", "its first line is empty")]:
        (tmp_path / "t.csv").write_bytes(content)
        with pytest.raises(
            InputError,
            match=rf"t.csv: {what}; a CSV file starts with a header line naming its "
            r"columns",
        ):
            etl(config, runtime=runtime)
        assert_no_output(runs)
    regression_csv(tmp_path / "t.csv")
    (tmp_path / "dims.csv").write_bytes(b"")  # a dimension table too
    with pytest.raises(InputError, match=r"dims.csv: the file is empty \(0 bytes\)"):
        etl(config, runtime=runtime)
    assert_no_output(runs)


def test_xgboost_multi_line_warning_reaches_the_terminal_whole(tmp_path):
    """XGBoost writes ``WARNING: .../learner.cc:782:`` and the text on the next line: the
    command shows both, in one line."""
    regression_csv(tmp_path / "t.csv", rows=1_000)
    regression_job(tmp_path, tmp_path / "t.csv", tmp_path / "runs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow",
            "run",
            "-c",
            str(tmp_path / "job.yaml"),
            "--set",
            "train.models=[xgboost]",
            "--set",
            "train.xgboost.num_boost_round=5",
            "--set",
            "train.xgboost.params={max_dept: 3}",
            "--cluster",
            "local",
            "--n-workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "max_dept" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].endswith('xgboost: WARNING: Parameters: { "max_dept" } are not used. (learner.cc:782)'), lines
