"""Explanations (issue 25, item 2): exact TreeSHAP contributions of the XGBoost models, computed
on the cluster and per row by ``predict --explain``, against XGBoost in this process; and
permutation importance for the other models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.job import run
from shardflow.pipelines.setup.config import load_config


def table(rows=8_000, seed=3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 3.0, rows)
    fare = 3 + 2.5 * distance + rng.normal(0, 2, rows)
    when = pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 90 * 24 * 60, rows), unit="min")
    city = rng.choice(["north", "south", "east", "west"], rows)
    noise = rng.normal(0, 1, rows)  # no signal: its importance must be the smallest
    logit = 0.6 * (distance - 6) + np.where(city == "north", 1.5, 0.0) + 0.8 * np.isin(when.hour, [7, 8, 17])
    late = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "id": np.arange(rows),
            "distance": distance,
            "fare": fare,
            "pickup": when,
            "city": city,
            "noise": noise,
            "late": np.where(late, "late", "on time"),
        }  # fmt: skip
    )


@pytest.fixture(scope="module")
def explained_run(runtime, tmp_path_factory):
    directory = tmp_path_factory.mktemp("explain")
    table().to_csv(directory / "trips.csv", index=False)
    spec = {
        "input": {"path": "trips.csv", "partitions": 2},
        "target": {"column": "late", "task": "classification", "classes": ["on time", "late"]},
        "features": {
            "numeric": ["distance", "noise"],
            "categorical": ["city"],
            "datetime": ["pickup"],
            "datetime_parts": ["hour"],
            "derived": {"fare_per_km": "fare / (distance + 0.1)"},
        },
        "split": {"key": ["id"]},
        "train": {"models": ["linear", "xgboost", "xgboost_partitions", "mlp"], "xgboost": {"num_boost_round": 40}},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(spec))
    return directory, run(load_config(directory / "job.yaml"), runtime=runtime)


def test_the_evaluation_explains_every_model_in_the_users_feature_names(explained_run):
    from shardflow.pipelines.records import trained_models
    from shardflow.tasks.explain import EXPLAIN_BUDGET, EXPLAIN_ROWS, MIN_EXPLAIN_ROWS, treeshap_row_cost

    _, result = explained_run
    explained = json.loads((result.run_dir / "evaluate" / "explanations.json").read_text())
    assert set(explained) == {"linear", "xgboost", "xgboost_partitions", "mlp"}
    features = set(explained["xgboost"]["mean_abs"])
    assert {"distance", "noise", "city", "pickup_hour", "fare_per_km"} <= features
    for name in ("xgboost", "xgboost_partitions"):
        found = explained[name]
        # Exact contributions of a seeded sample, as many rows as the model's TreeSHAP cost affords
        # (an ensemble's: its members' together), between the floor and the ceiling, split across
        # the 2 partitions (1,600 validation rows: each has enough).
        loaded = trained_models.load_model(result.run_dir, name)
        cost = sum(treeshap_row_cost(m) for m in ([loaded["model"]] if "model" in loaded else loaded["models"]))
        total = min(EXPLAIN_ROWS, max(MIN_EXPLAIN_ROWS, EXPLAIN_BUDGET // cost))
        assert found["kind"] == "contributions" and total <= found["rows"] <= total + 1, (found["rows"], cost)
        assert max(found["mean_abs"], key=found["mean_abs"].get) == "distance", found["mean_abs"]
        assert min(found["mean_abs"], key=found["mean_abs"].get) in ("noise", "fare_per_km")
        assert len(found["sample"]["distance"]["value"]) == len(found["sample"]["distance"]["contribution"]) > 0
    for name in ("linear", "mlp"):
        found = explained[name]
        assert found["kind"] == "permutation" and found["metric"] == "auc"
        assert found["importance"]["distance"] > 0.05 > abs(found["importance"]["noise"]), found["importance"]
    # The report shows them: a row per feature (most important first), a column per model.
    page = (result.run_dir / "report.html").read_text()
    section = page.split('id="explanations"', 1)[1].split("<h2", 1)[0]
    assert "<td>distance</td>" in section and "metric drop" in section and "|contribution|" in section
    assert section.index("<td>distance</td>") < section.index("<td>noise</td>") if "<td>noise</td>" in section else True


def test_predict_explain_adds_exact_contributions_that_sum_to_the_margin(explained_run, runtime):
    import xgboost as xgb

    from shardflow.pipelines.records import trained_models
    from shardflow.pipelines.serving.model import load_model
    from shardflow.pipelines.serving.predict import predict
    from shardflow.tasks.encode import Preprocessor

    directory, result = explained_run
    rows = table().drop(columns="late").head(500)
    rows.to_csv(directory / "new.csv", index=False)
    out = predict(result.run_dir, directory / "new.csv", directory / "scores", model="xgboost", explain=True,
                  runtime=runtime)  # fmt: skip
    scored = pd.read_parquet(out.output)
    scored["id"] = scored["id"].astype(int)  # a CSV's kept columns are kept as its text
    scored = scored.sort_values("id").reset_index(drop=True)
    in_memory = load_model(result.run_dir, "xgboost").predict(rows, explain=True)
    in_memory = in_memory.assign(id=in_memory["id"].astype(int)).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(scored, in_memory, check_dtype=False, rtol=1e-6)

    # The same rows as the ETL wrote them, scored by XGBoost in this process.
    preprocessor = Preprocessor.from_json((result.run_dir / "etl" / "preprocessor.json").read_text())
    features = pd.read_parquet(result.run_dir / "etl" / "features")
    features = features.set_index(features["id"].astype(int)).loc[scored["id"]]
    x = features[preprocessor.feature_names].to_numpy(np.float32)
    booster = xgb.Booster()
    booster.load_model(bytearray(trained_models.load_model(result.run_dir, "xgboost")["model"]))
    matrix = xgb.DMatrix(x, feature_names=booster.feature_names, feature_types=booster.feature_types,
                         enable_categorical=True)  # fmt: skip
    reference = booster.predict(matrix, pred_contribs=True)
    columns = [f"contribution_{name}" for name in preprocessor.feature_names] + ["contribution_bias"]
    ours = scored[columns].to_numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
    margin = booster.predict(matrix, output_margin=True)
    np.testing.assert_allclose(ours.sum(axis=1), margin, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), scored["prediction"], rtol=1e-5)

    with pytest.raises(Exception, match="--explain: exact contributions are for the XGBoost models"):
        predict(result.run_dir, directory / "new.csv", directory / "mlp-scores", model="mlp", explain=True,
                runtime=runtime)  # fmt: skip
    assert not (directory / "mlp-scores").exists()


def test_results_show_as_tables_in_a_notebook(explained_run):
    """``RunResult`` and ``TrainedModel`` render as HTML tables (Jupyter's ``_repr_html_``)."""
    from shardflow.pipelines.families.specs import label
    from shardflow.pipelines.serving.model import load_model
    from shardflow.tasks.metrics import best_model

    _, result = explained_run
    page = result._repr_html_()
    assert page.startswith("<p><b>shardflow run") and result.task in page
    best = best_model(result.metrics, result.task)
    assert f'<tr class="best"><td>{label(best)} ★</td>' in page and page.count("★") == 1
    assert f"<td>{result.metrics[best]['auc']:.4f}</td>" in page
    assert f"<td>{result.metrics[best]['rows']:,}</td>" in page  # a count, as an integer
    model = load_model(result.run_dir, "xgboost")._repr_html_()
    assert "<tr><th>classes</th><td>on time, late</td></tr>" in model
