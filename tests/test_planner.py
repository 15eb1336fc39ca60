"""Input partitioning: every worker thread busy on one big file, partitions balanced by rows,
the same rows whatever the partitioning, and files that must not be cut left whole."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.setup.plan import InputPlan


def trips(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "distance": rng.uniform(1, 50, n).round(3),
            "zone": rng.choice(["a", "b", "c"], n),
            "y": rng.integers(0, 2, n),
        }
    )


def job(directory, path, **input_options):
    spec = {
        "input": {"path": path, **input_options},
        "target": {"column": "y"},
        "features": {"numeric": ["distance"], "categorical": ["zone"]},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs"},
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(spec))
    return load_config(directory / "job.yaml")


def features(run_dir) -> pd.DataFrame:
    frame = pd.read_parquet(run_dir / "etl" / "features")
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def test_one_csv_worth_splitting_keeps_every_worker_thread_busy(runtime, tmp_path):
    table = trips(500_000)
    table.to_csv(tmp_path / "t.csv", index=False)
    assert (tmp_path / "t.csv").stat().st_size > 8 * 2**20
    config = job(tmp_path, "t.csv")
    assert len(InputPlan(config).source.pieces) == 1  # without a cluster: as configured (128MB blocks)
    result = etl(config, runtime=runtime)  # 2 workers × 1 thread
    assert result.partitions == runtime.threads == 2
    rows = pd.read_json(result.stage_dir / "summary.json", typ="series")["partition_rows"]
    # Equal byte ranges: rows balance up to the spread of line lengths (ids grow longer here).
    assert sum(rows) == len(table) and max(rows) / min(rows) < 1.05


def test_a_fixed_partition_count_gives_the_same_rows(runtime, tmp_path):
    table = trips(30_000, seed=1)
    table.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "one").mkdir()
    (tmp_path / "six").mkdir()
    one = etl(job(tmp_path / "one", str(tmp_path / "t.csv"), partitions=1), runtime=runtime)
    six = etl(job(tmp_path / "six", str(tmp_path / "t.csv"), partitions=6), runtime=runtime)
    assert (one.partitions, six.partitions) == (1, 6)
    rows = pd.read_json(six.stage_dir / "summary.json", typ="series")["partition_rows"]
    assert max(rows) / min(rows) < 1.10  # equal bytes; the first rows have shorter ids
    pd.testing.assert_frame_equal(features(one.run_dir), features(six.run_dir))


def test_one_parquet_file_is_split_between_its_row_groups_by_rows(tmp_path):
    table = pa.Table.from_pandas(trips(120_000, seed=2), preserve_index=False)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10_000)  # 12 row groups
    config = job(tmp_path, "t.parquet")
    plan = InputPlan(config, threads=2)
    assert [len(p.row_groups) for p in plan.source.pieces] == [6, 6]
    plan = InputPlan(job(tmp_path, "t.parquet", partitions=5), threads=2)
    groups = [len(p.row_groups) for p in plan.source.pieces]
    assert sum(groups) == 12 and max(groups) - min(groups) <= 1 and len(groups) in (4, 5, 6)
    small = InputPlan(job(tmp_path, "t.parquet", max_partition_rows=1_000_000), threads=1)
    assert [p.row_groups for p in small.source.pieces] == [None]  # one thread: read whole


def test_many_small_files_are_read_one_partition_each(tmp_path):
    for i in range(10):
        trips(1_000, seed=i).assign(id=lambda f, i=i: f.id + i * 1_000).to_csv(tmp_path / f"p{i}.csv", index=False)
    plan = InputPlan(job(tmp_path, "p*.csv"), threads=4)
    assert len(plan.source.pieces) == 10 and all(p.end is None for p in plan.source.pieces)


def test_a_csv_with_quotes_is_not_cut_into_byte_ranges(tmp_path):
    table = trips(20_000, seed=3)
    table["zone"] = np.where(table.index % 1000 == 0, "two\nlines", table.zone)  # quoted newlines
    table.to_csv(tmp_path / "t.csv", index=False)
    plan = InputPlan(job(tmp_path, "t.csv", partitions=4), threads=2)
    assert len(plan.source.pieces) == 1 and plan.source.pieces[0].end is None


def test_input_partitions_is_checked(tmp_path):
    import pytest

    from shardflow.pipelines.setup.config import ConfigError

    for value in (0, "many", -2):
        with pytest.raises(ConfigError, match="'input.partitions': expected auto or a whole number of at least 1"):
            job(tmp_path, "t.csv", partitions=value)


def test_plan_command_explains_the_job_and_runs_nothing(tmp_path):
    import subprocess
    import sys

    trips(2_000).to_csv(tmp_path / "t.csv", index=False)
    job(tmp_path, "t.csv")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shardflow",
            "plan",
            "-c",
            str(tmp_path / "job.yaml"),
            "--cluster",
            "local",
            "--n-workers",
            "2",
            "--threads-per-worker",
            "1",
            "--memory-limit",
            "1GB",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "input       csv, 1 file(s)" in out and "cluster     2 workers, 2 threads" in out
    assert "partitions  1 (auto)" in out  # 2,000 rows are not worth splitting
    assert "warning     1 partition(s) for 2 worker threads: some will idle" in out
    # The default families include per-partition ones: on one partition each is one model, said up front.
    assert (
        "warning     1 partition(s): xgboost_partitions, mlp_partitions will train one model on all training "
        "rows (nothing to combine; with the same options as its global family"
    ) in out
    assert not (tmp_path / "runs").exists()


def test_the_plan_is_kept_in_the_manifest_and_the_report(runtime, tmp_path):
    from shardflow.pipelines.interface.report import build_report

    trips(20_000).to_csv(tmp_path / "t.csv", index=False)
    result = etl(job(tmp_path, "t.csv", partitions=3), runtime=runtime)
    plan = json.loads((result.run_dir / "manifest.json").read_text())["plan"]
    assert plan["partitions"]["count"] == 3 and plan["cluster"]["threads"] == 2 and plan["warnings"] == []
    assert 6_000 <= plan["partitions"]["rows_median"] <= 7_400  # estimated from line lengths
    page = build_report(result.run_dir).read_text()
    assert "partitions  3 (3)" in page and "per-partition models assume partitions alike" in page
    # Classification: each partition's class shares, from the rows it holds.
    differences = json.loads((result.run_dir / "etl" / "summary.json").read_text())["partition_differences"]
    written = [
        pd.read_parquet(f).y.astype(int).mean() for f in sorted((result.run_dir / "etl" / "features").glob("*.parquet"))
    ]
    np.testing.assert_allclose([e["class_shares"][1] for e in differences["partitions"]], written, atol=1e-6)


def sorted_prices(n: int = 12_000, seed: int = 4) -> pd.DataFrame:
    """A regression table written sorted by its target, as exports by price often are."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.normal(size=n)
    price = 100 + 30 * a + 20 * np.sin(b * 2) + rng.normal(scale=5, size=n)
    return (
        pd.DataFrame({"id": np.arange(n), "a": a.round(4), "b": b.round(4), "price": price.round(2)})
        .sort_values("price")
        .reset_index(drop=True)
    )


def test_the_shuffle_keeps_every_row_and_its_order_does_not_depend_on_the_partition_count(runtime, tmp_path):
    sorted_prices().to_csv(tmp_path / "t.csv", index=False)
    results = {}
    for count in (2, 5):
        (tmp_path / str(count)).mkdir()
        spec = {
            "input": {"path": str(tmp_path / "t.csv"), "partitions": count},
            "target": {"column": "price", "task": "regression"},
            "features": {"numeric": ["a", "b"]},
            "split": {"key": ["id"]},
            "output": {"runs_dir": "runs", "keep_columns": ["id"]},
            "train": {"models": ["xgboost", "xgboost_partitions"]},
        }
        (tmp_path / str(count) / "job.yaml").write_text(yaml.safe_dump(spec))
        results[count] = etl(load_config(tmp_path / str(count) / "job.yaml"), runtime=runtime)
    frames = {
        c: pd.concat(
            [pd.read_parquet(p) for p in sorted((r.stage_dir / "features").glob("*.parquet"))], ignore_index=True
        )
        for c, r in results.items()
    }
    assert sorted(frames[2].id.astype(int)) == list(range(12_000))  # the same rows, each once
    pd.testing.assert_frame_equal(frames[2], frames[5])  # in the same order, whatever the count
    first = pd.read_parquet(sorted((results[5].stage_dir / "features").glob("*.parquet"))[0])
    assert first.id.astype(int).max() > 10_000  # the first partition is no longer the cheapest rows


def test_per_partition_models_on_a_table_sorted_by_its_target(runtime, tmp_path):
    sorted_prices(20_000).to_csv(tmp_path / "t.csv", index=False)
    r2, differences = {}, {}
    for exchangeable in (True, False):
        directory = tmp_path / str(exchangeable)
        directory.mkdir()
        spec = {
            "input": {"path": str(tmp_path / "t.csv"), "partitions": 4, "exchangeable": exchangeable},
            "target": {"column": "price", "task": "regression"},
            "features": {"numeric": ["a", "b"]},
            "split": {"key": ["id"]},
            "output": {"runs_dir": "runs"},
            "train": {
                "models": ["xgboost", "xgboost_partitions"],
                "xgboost": {"num_boost_round": 100},
                "partitions": {"xgboost_rounds": 100},
            },
        }
        (directory / "job.yaml").write_text(yaml.safe_dump(spec))
        from shardflow.pipelines.job import run

        result = run(load_config(directory / "job.yaml"), runtime=runtime)
        metrics = result.metrics
        r2[exchangeable] = (metrics["xgboost"]["r2"], metrics["xgboost_partitions"]["r2"])
        differences[exchangeable] = json.loads((result.run_dir / "etl" / "summary.json").read_text())[
            "partition_differences"
        ]
        # The profile's per-partition target means are those of the rows each partition wrote.
        written = [
            pd.read_parquet(f).price.mean() for f in sorted((result.run_dir / "etl" / "features").glob("*.parquet"))
        ]
        np.testing.assert_allclose(
            [e["target_mean"] for e in differences[exchangeable]["partitions"]], written, rtol=1e-6
        )  # the files hold float32
    (global_as_read, partitions_as_read), (global_shuffled, partitions_shuffled) = r2[True], r2[False]
    assert partitions_as_read < global_as_read - 0.05  # each model saw one slice of the prices
    assert abs(partitions_shuffled - global_shuffled) <= 0.01, r2
    # The profile tells the two apart: the partitions as read differ by more than a std in
    # their target mean (and in the feature that drives it), the shuffled ones hardly at all.
    assert differences[True]["target_gap"] > 1.0 and differences[True]["numeric_gap"]["a"] > 1.0
    assert differences[False]["target_gap"] < 0.1 and differences[False]["numeric_gap"]["a"] < 0.1


def stores(n: int = 9_000, seed: int = 7) -> pd.DataFrame:
    """Sales of stores whose prices follow different slopes; one store is tiny and some rows
    have no store."""
    rng = np.random.default_rng(seed)
    store = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1]).astype(object)
    store[:25] = "kiosk"  # too small for a model of its own
    store[25:60] = None  # no key: the global model
    a, b = rng.uniform(0, 10, n).round(2), rng.normal(size=n).round(3)
    slope = pd.Series(store).map({"north": 1.0, "south": -2.0, "east": 4.0, "west": 0.5, "kiosk": 3.0}).fillna(0)
    y = 50 + slope.to_numpy() * a**1.5 + 5 * b + rng.normal(scale=0.5, size=n)
    return pd.DataFrame({"id": np.arange(n), "store": store, "a": a, "b": b, "sales": y.round(3)})


def test_partition_by_predicts_each_row_with_its_own_groups_model(runtime, tmp_path, caplog):
    import logging

    import xgboost as xgb

    from shardflow.pipelines.job import run
    from shardflow.pipelines.serving.predict import predict

    frame = stores()
    frame.to_csv(tmp_path / "sales.csv", index=False)
    spec = {
        "input": {"path": "sales.csv", "partitions": 3},
        "target": {"column": "sales", "task": "regression"},
        "features": {"numeric": ["a", "b"], "categorical": ["store"]},
        "encode": {"min_frequency": 1},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
        "train": {
            "models": ["xgboost", "xgboost_groups"],
            "xgboost": {"num_boost_round": 30},
            "groups": {"partition_by": ["store"], "min_rows": 100, "xgboost_rounds": 20},
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    with caplog.at_level(logging.WARNING, logger="shardflow"):
        result = run(load_config(tmp_path / "job.yaml"), runtime=runtime)
    assert "2 of 6 groups use the global model" in caplog.text and "store='kiosk' (" in caplog.text
    meta = json.loads((result.run_dir / "train" / "xgboost_groups.json").read_text())
    assert sorted(meta["groups"]) == ["store='east'", "store='north'", "store='south'", "store='west'"]
    params = meta_params(result.run_dir)

    # The reference: one model per store, trained by xgboost.train on that store's training
    # rows of the ETL's output, in one process; the others scored by the run's global model.
    written = pd.concat(
        [pd.read_parquet(f) for f in sorted((result.run_dir / "etl" / "features").glob("*.parquet"))], ignore_index=True
    )
    out = predict(result.run_dir, tmp_path / "sales.csv", tmp_path / "scores", model="xgboost_groups", runtime=runtime)
    scored = pd.concat([pd.read_parquet(f) for f in sorted(out.output.glob("*.parquet"))], ignore_index=True)
    scored = scored.set_index(scored.id.astype(int)).prediction
    global_scores = predict(
        result.run_dir, tmp_path / "sales.csv", tmp_path / "global", model="xgboost", runtime=runtime
    ).output
    global_scored = pd.concat([pd.read_parquet(f) for f in sorted(global_scores.glob("*.parquet"))])
    global_scored = global_scored.set_index(global_scored.id.astype(int)).prediction
    written["store"] = frame.store.to_numpy()[written.id.astype(int).to_numpy()]  # as read (the files hold codes)
    for name, rows in written.groupby(written.store.fillna("<none>"), sort=True):
        ids = rows.id.astype(int).to_numpy()
        if name in ("kiosk", "<none>"):
            np.testing.assert_allclose(scored.loc[ids], global_scored.loc[ids], rtol=1e-6)
            continue
        training, validation = rows[~rows._is_validation], rows[rows._is_validation]
        dtrain = xgb.QuantileDMatrix(training[["a", "b"]].to_numpy(np.float32), training.sales.to_numpy(np.float32))
        dvalid = xgb.DMatrix(validation[["a", "b"]].to_numpy(np.float32), validation.sales.to_numpy(np.float32))
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=20,
            evals=[(dvalid, "validation")],
            early_stopping_rounds=20,
            verbose_eval=False,
        )  # as train.xgboost's, on its own rows
        booster = booster[: booster.best_iteration + 1]
        reference = booster.predict(xgb.DMatrix(rows[["a", "b"]].to_numpy(np.float32)))
        np.testing.assert_allclose(scored.loc[ids], reference, rtol=1e-4, atol=1e-3, err_msg=name)
    # Each store's own model beats the global one on its validation rows here (the slopes differ).
    assert result.metrics["xgboost_groups"]["r2"] >= result.metrics["xgboost"]["r2"] - 0.01


def meta_params(run_dir) -> dict:
    return json.loads((run_dir / "train" / "xgboost.json").read_text())["params"]


@pytest.mark.parametrize("n, max_branch", [(7, 64), (70, 64), (70, 4)])
def test_the_staged_shuffle_routes_every_row_to_its_key_range(n, max_branch):
    """One stage up to ``max_branch`` partitions, several beyond: partition j ends with the
    rows whose key falls in [j/n, (j+1)/n), in key order, each row once, whatever the stages."""
    import dask

    from shardflow.pipelines.graph import shuffled_partitions
    from shardflow.tasks.prepare import PreparedPartition, shuffle_keys

    rng = np.random.default_rng(n)
    sizes = rng.integers(0, 60, n)  # uneven, some empty
    frames = [pd.DataFrame({"v": rng.normal(size=k), "i": np.arange(k) + 1000 * p}) for p, k in enumerate(sizes)]
    parts = [dask.delayed(PreparedPartition)(f, f.iloc[:0], p) for p, f in enumerate(frames)]
    out = dask.compute(shuffled_partitions(parts, seed=3, name="t", token=n, max_branch=max_branch), scheduler="sync")[
        0
    ]
    table = pd.concat(frames, ignore_index=True)
    assert [p.missing_targets for p in out] == list(range(n))  # each keeps its own bookkeeping
    shuffled = pd.concat([p.features for p in out], ignore_index=True)
    assert sorted(shuffled.i) == sorted(table.i)  # every row once
    keys = shuffle_keys(shuffled, 3)
    assert (np.diff(keys) >= 0).all()  # in key order, across the partitions
    for j, part in enumerate(out):
        k = shuffle_keys(part.features, 3)
        assert ((k >= j / n) & (k < (j + 1) / n)).all()


def test_group_rows_of_a_partition_with_only_validation_rows_of_a_group_are_kept():
    from shardflow.tasks.groups import group_row_counts, split_by_group
    from shardflow.tasks.shards import Shard

    x_train = np.array([[0.1, 2.0], [0.2, 2.0]], np.float32)
    x_valid = np.array([[0.3, 2.0], [0.4, 3.0], [0.5, 3.0]], np.float32)  # group (3,) has no training row here
    shard = Shard(x_train, np.array([1.0, 2.0]), x_valid, np.array([3.0, 4.0, 5.0]))
    assert group_row_counts(shard, [1]) == {(2,): [2, 1], (3,): [0, 2]}
    pieces = split_by_group(shard, [1], {(2,): 0, (3,): 1}, 2)
    assert pieces[0][(2,)].y_train.tolist() == [1.0, 2.0] and pieces[0][(2,)].y_valid.tolist() == [3.0]
    assert pieces[1][(3,)].y_train.tolist() == [] and pieces[1][(3,)].y_valid.tolist() == [4.0, 5.0]


def test_partition_by_two_columns_with_a_group_of_one_class(runtime, tmp_path):
    """Binary labels, groups keyed by two columns, one group whose rows are all negative:
    each row scored by its own group's model, as ``xgboost.train`` on that group's rows
    (with early stopping on its own validation rows) gives it."""
    import xgboost as xgb
    import zarr

    from shardflow.pipelines.job import run
    from shardflow.pipelines.records import trained_models
    from shardflow.tasks.groups import predict_by_group

    rng = np.random.default_rng(3)
    n = 6_000
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "store": rng.choice(["a", "b"], n),
            "channel": rng.choice(["web", "shop"], n),
            "x": rng.normal(size=n).round(4),
        }
    )
    logit = np.where(frame.store == "a", 2 * frame.x, -2 * frame.x) + np.where(frame.channel == "web", 0.5, -0.5)
    frame["y"] = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame.loc[(frame.store == "b") & (frame.channel == "shop"), "y"] = "no"  # one group of one class
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = {
        "input": {"path": "t.csv", "partitions": 2},
        "target": {"column": "y"},
        "features": {"numeric": ["x"], "categorical": ["store", "channel"]},
        "encode": {"min_frequency": 1},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
        "train": {
            "models": ["xgboost", "xgboost_groups"],
            "xgboost": {"num_boost_round": 40, "early_stopping_rounds": 5},
            "groups": {"partition_by": ["store", "channel"], "min_rows": 100, "xgboost_rounds": 40},
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = run(load_config(tmp_path / "job.yaml"), runtime=runtime)
    meta = json.loads((result.run_dir / "train" / "xgboost_groups.json").read_text())
    assert len(meta["groups"]) == 4 and meta["fallback_groups"] == []
    payload = trained_models.load_model(result.run_dir, "xgboost_groups")
    written = pd.concat(
        [pd.read_parquet(f) for f in sorted((result.run_dir / "etl" / "features").glob("*.parquet"))], ignore_index=True
    )
    raw = frame.set_index("id").loc[written.id.astype(int)]
    x = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")["X"][:]
    scored = predict_by_group(payload, x)  # the run's own rows, in the ETL's order
    params = meta_params(result.run_dir)
    for (store, channel), rows in raw.reset_index().groupby(["store", "channel"]):
        index = rows.index.to_numpy()
        valid = written._is_validation.to_numpy()[index]
        label = (rows.y == "yes").to_numpy(np.float32)
        features = rows[["x"]].to_numpy(np.float32)
        booster = xgb.train(
            params,
            xgb.QuantileDMatrix(features[~valid], label[~valid]),
            num_boost_round=40,
            evals=[(xgb.DMatrix(features[valid], label[valid]), "validation")],
            early_stopping_rounds=5,
            verbose_eval=False,
        )
        reference = booster[: booster.best_iteration + 1].predict(xgb.DMatrix(features))
        np.testing.assert_allclose(scored[index], reference, atol=1e-5, err_msg=f"{store} {channel}")
    assert scored[((raw.store == "b") & (raw.channel == "shop")).to_numpy()].max() < 0.05
