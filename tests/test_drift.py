"""Drift at scoring: the ETL keeps each feature's training distribution, ``predict`` measures
new rows against it on the cluster (PSI, unseen categories, missing values), warns, and with
``--fail-on-drift`` refuses to write anything. The distributed figures are checked against a
single-process NumPy computation from the raw rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.job import run
from shardflow.pipelines.records.artifacts import sha256
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.serving.drift import PSI_EPSILON, DriftError
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import load_config
from shardflow.tasks.drift import DRIFT_BINS

NUMERIC = ["x", "size", "level"]
CITIES = ["north", "south", "east", "west", "centre"]


def table(n: int = 20_000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    size = rng.lognormal(1.0, 0.8, n)
    size[rng.random(n) < 0.03] = np.nan  # 3% missing
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": rng.normal(10.0, 2.0, n),
            "size": size,
            "level": rng.integers(0, 6, n).astype(float),  # few distinct values: fewer bins
            "city": rng.choice(CITIES, n, p=[0.4, 0.3, 0.15, 0.1, 0.05]),
        }
    )
    logit = 0.8 * (frame["x"] - 10) / 2 + np.where(frame["city"] == "north", 0.5, -0.3)
    frame["y"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


@pytest.fixture(scope="module")
def trained(runtime, tmp_path_factory):
    """A run on 20,000 rows in 4 files (the linear baseline only), the raw table, and its
    training and validation rows."""
    root = tmp_path_factory.mktemp("drift")
    frame = table()
    (root / "data").mkdir()
    for i in range(4):
        frame.iloc[i * 5_000 : (i + 1) * 5_000].to_parquet(root / "data" / f"part-{i}.parquet", index=False)
    job = {
        "input": {"path": "data"},
        "target": {"column": "y"},
        "features": {"numeric": NUMERIC, "categorical": ["city"]},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
        "train": {"models": ["linear"]},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    result = run(load_config(root / "job.yaml"), runtime=runtime)
    split = pd.read_parquet(result.run_dir / "etl" / "features", columns=["id", "_is_validation"])
    validation = frame[frame["id"].isin(split.loc[split["_is_validation"], "id"])].reset_index(drop=True)
    training = frame[frame["id"].isin(split.loc[~split["_is_validation"], "id"])].reset_index(drop=True)
    return result.run_dir, root, training, validation


def reference(run_dir) -> dict:
    return json.loads(RunDir(run_dir).summary.read_text())["drift_reference"]


def numpy_psi(ref: dict, values: np.ndarray) -> float:
    """The PSI of ``values`` against a numeric feature's stored reference, in one process."""
    missing = np.isnan(values)
    actual = np.append(
        np.bincount(np.searchsorted(ref["edges"], values[~missing]), minlength=len(ref["edges"]) + 1), missing.sum()
    )
    expected = np.array([*ref["counts"], ref["missing"]], dtype=float)
    e = np.maximum(expected / expected.sum(), PSI_EPSILON)
    a = np.maximum(actual / actual.sum(), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def score(runtime, run_dir, frame, path, **options):
    frame.to_parquet(path.with_suffix(".parquet"), index=False)
    return predict(run_dir, path.with_suffix(".parquet"), path, runtime=runtime, **options)


def test_the_reference_holds_the_training_rows_in_quantile_bins(trained):
    run_dir, _, training, _ = trained
    ref = reference(run_dir)
    assert ref["rows"] == len(training)
    for col in NUMERIC:
        stored = ref["numeric"][col]
        values = training[col].to_numpy()
        counts = np.bincount(
            np.searchsorted(stored["edges"], values[~np.isnan(values)]), minlength=len(stored["edges"]) + 1
        )
        assert stored["counts"] == counts.tolist() and stored["missing"] == int(np.isnan(values).sum()), col
    # Continuous features: deciles of the training rows (edges from the sketch, shares near 1/10).
    for col in ("x", "size"):
        shares = np.array(ref["numeric"][col]["counts"]) / sum(ref["numeric"][col]["counts"])
        assert len(shares) == DRIFT_BINS and np.abs(shares - 1 / DRIFT_BINS).max() < 0.01, (col, shares)
    assert ref["numeric"]["level"]["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # its distinct values
    city = ref["categorical"]["city"]
    assert city["categories"] == CITIES and city["complete"]
    assert city["counts"] == [int((training["city"] == c).sum()) for c in CITIES]


def test_a_copy_of_the_validation_split_does_not_drift(runtime, trained, tmp_path, caplog):
    run_dir, _, _, validation = trained
    with caplog.at_level("WARNING", logger="shardflow"):
        out = score(runtime, run_dir, validation, tmp_path / "scores")
    report = out.drift
    psi = {col: f["psi"] for col, f in report["features"].items()}
    print("validation copy PSI:", psi)
    assert set(psi) == {*NUMERIC, "city"} and max(psi.values()) < 0.02
    assert report["drifted"] == {} and not [r for r in caplog.records if "drift" in r.getMessage()]
    for col in NUMERIC:  # the cluster's reduced sums give NumPy's figure on the raw rows
        assert psi[col] == pytest.approx(
            numpy_psi(reference(run_dir)["numeric"][col], validation[col].to_numpy()), abs=1e-6
        )
    assert report["features"]["size"]["missing_share"] == pytest.approx(validation["size"].isna().mean(), abs=1e-6)
    assert report["features"]["city"]["unseen_share"] == 0.0
    written = json.loads((out.output / "_drift.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert len(pd.read_parquet(out.output)) == len(validation)  # the report does not disturb Parquet readers


def test_a_shifted_feature_is_flagged_alone(runtime, trained, tmp_path, caplog):
    run_dir, _, training, validation = trained
    shifted = validation.assign(x=validation["x"] + training["x"].std())
    with caplog.at_level("WARNING", logger="shardflow"):
        report = score(runtime, run_dir, shifted, tmp_path / "scores").drift
    psi = {col: f["psi"] for col, f in report["features"].items()}
    print("x shifted by one std, PSI:", psi)
    assert list(report["drifted"]) == ["x"] and psi["x"] > 0.5
    assert psi["x"] == pytest.approx(numpy_psi(reference(run_dir)["numeric"]["x"], shifted["x"].to_numpy()), abs=1e-6)
    assert all(p < 0.02 for col, p in psi.items() if col != "x")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "drift" in r.getMessage()]
    assert len(warnings) == 1 and "'x'" in warnings[0] and "PSI" in warnings[0]


def test_new_categories_report_their_share(runtime, trained, tmp_path):
    run_dir, _, _, validation = trained
    rng = np.random.default_rng(0)
    new = validation.copy()
    unseen = rng.random(len(new)) < 0.08
    new.loc[unseen, "city"] = rng.choice(["harbour", "airport"], unseen.sum())
    new.loc[rng.random(len(new)) < 0.05, "city"] = None
    report = score(runtime, run_dir, new, tmp_path / "scores").drift
    city = report["features"]["city"]
    print("city with new categories:", city)
    expected_unseen = float((~new["city"].isin(CITIES) & new["city"].notna()).mean())
    assert city["unseen_share"] == pytest.approx(expected_unseen, abs=1e-6)
    assert city["missing_share"] == pytest.approx(new["city"].isna().mean(), abs=1e-6)
    assert city["reference_missing_share"] == 0.0
    assert list(report["drifted"]) == ["city"] and any("unseen categories" in why for why in report["drifted"]["city"])


def test_fail_on_drift_raises_one_line_and_writes_nothing(runtime, trained, tmp_path):
    run_dir, _, training, validation = trained
    shifted = validation.assign(x=validation["x"] + training["x"].std())
    with pytest.raises(DriftError) as err:
        score(runtime, run_dir, shifted, tmp_path / "scores", fail_on_drift=True)
    message = str(err.value)
    print(message)
    assert len(message.splitlines()) == 1 and "'x'" in message and "'size'" not in message
    assert not (tmp_path / "scores").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]  # no temporary directory left
    # Undrifted rows pass the same check.
    assert score(runtime, run_dir, validation, tmp_path / "fine", fail_on_drift=True).drift["drifted"] == {}


def test_the_cli_flag_fails_on_drift(trained, tmp_path):
    run_dir, _, training, validation = trained
    validation.assign(x=validation["x"] + training["x"].std()).to_parquet(tmp_path / "new.parquet", index=False)
    cmd = [sys.executable, "-m", "shardflow", "predict", str(run_dir), "--input", "new.parquet", "--output", "out"]
    proc = subprocess.run([*cmd, "--fail-on-drift"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("shardflow: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert "--fail-on-drift" in errors[0] and "'x'" in errors[0]
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([*cmd, "--psi-threshold", "5"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "_drift.json").read_text())["drifted"] == {}


def test_a_run_without_a_reference_is_scored_unchecked(runtime, trained, tmp_path, caplog):
    """A run made before the ETL kept a reference: predict says so once and skips the check."""
    import shutil

    run_dir, _, _, validation = trained
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    summary = RunDir(old).summary
    data = json.loads(summary.read_text())
    del data["drift_reference"]
    summary.write_text(json.dumps(data))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["artifacts"][RunDir(old).relative(summary)] = sha256(summary)
    (old / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("INFO", logger="shardflow"):
        out = score(runtime, old, validation, tmp_path / "scores", fail_on_drift=True)
    said = [r.getMessage() for r in caplog.records if "drift reference" in r.getMessage()]
    assert out.drift is None and len(said) == 1 and not (out.output / "_drift.json").exists()
    assert out.rows == len(validation)


def test_counts_and_sketches_on_edge_partitions():
    """Empty partitions, all-null columns, skewed partitions merged in any order, a column with
    more categories than the reference keeps (its unseen share is then not measured)."""
    from shardflow.pipelines.serving.drift import drift_report
    from shardflow.tasks.drift import QuantileSketch, bin_counts, layout_of, reference_layout, reference_of

    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 50_000), rng.normal(5, 1, 200), np.full(100, np.nan)])
    pieces = [values[:10], values[10:60_000], values[60_000:], np.zeros(0)]  # skewed, one empty
    left = QuantileSketch.of(pieces[0])
    for piece in pieces[1:]:
        left = left.merge(QuantileSketch.of(piece, seed=7))
    right = QuantileSketch.of(pieces[3]).merge(QuantileSketch.of(pieces[2]).merge(QuantileSketch.of(pieces[1])))
    right = right.merge(QuantileSketch.of(pieces[0]))
    truth = np.nanquantile(values, np.arange(1, 10) / 10)
    for sketch in (left, right):  # the edges, however merged, are within 1% of rank of the deciles
        assert float(sketch.weights.sum()) == pytest.approx(np.isfinite(values).sum())
        ranks = np.searchsorted(np.sort(values[np.isfinite(values)]), sketch.quantiles(np.arange(1, 10) / 10))
        assert np.abs(ranks / np.isfinite(values).sum() - np.arange(1, 10) / 10).max() < 0.01, (ranks, truth)

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "empty": [np.nan] * 4, "c": ["a", "b", "c", None]})
    frame["none"] = pd.Series([None] * 4, dtype=object)
    sketches = {col: QuantileSketch.of(frame[col].to_numpy()) for col in ("x", "empty")}
    counts = {"c": frame["c"].value_counts(), "none": frame["none"].value_counts()}
    layout = reference_layout(sketches, counts, kept=2)
    assert layout["numeric"]["empty"] == [] and layout["categorical"]["c"] == {
        "categories": ["a", "b"],
        "complete": False,
    }
    reference = reference_of(layout, bin_counts(frame, layout))
    assert reference["categorical"]["c"]["other"] == 1 and reference["numeric"]["empty"]["missing"] == 4
    assert bin_counts(frame.iloc[:0], layout).rows == 0  # an empty partition counts nothing
    new = pd.DataFrame({"x": [9.0, 9.0], "empty": [np.nan, 1.0], "c": ["zz", "a"], "none": ["q", None]})
    report = drift_report(reference, bin_counts(new, layout_of(reference)))
    assert report["features"]["c"]["unseen_share"] is None  # 'zz' may be one of the categories not kept
    assert report["features"]["none"]["unseen_share"] == 0.5 and "none" in report["drifted"]
    assert report["features"]["empty"]["missing_share"] == 0.5 and report["features"]["empty"]["psi"] > 0.2
