"""Families of one's own, registered from Python: they train beside the built-in ones and
appear in the comparison, the report, predict and load_model (issue 24, item 1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

from shardflow.core.constraints import ConfigError
from shardflow.pipelines.families.registry import FAMILIES, register_family
from shardflow.pipelines.families.specs import SPECS
from shardflow.pipelines.setup.config import load_config


def logistic_to_bytes(model) -> bytes:
    """A scikit-learn LogisticRegression as JSON (what a user writes instead of a pickle)."""
    return json.dumps({"coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
                       "classes": model.classes_.tolist()}).encode()  # fmt: skip


def logistic_from_bytes(data: bytes):
    from sklearn.linear_model import LogisticRegression

    state = json.loads(data)
    model = LogisticRegression()
    model.coef_, model.intercept_ = np.array(state["coef"]), np.array(state["intercept"])
    model.classes_ = np.array(state["classes"])
    return model


def make_logistic():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000, tol=1e-10)


def make_booster():
    from xgboost import XGBClassifier

    return XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1, random_state=0)


def make_net():
    import torch

    return torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


@pytest.fixture
def registered():
    from shardflow.pipelines.families.custom import estimator_family, torch_module_family

    families = [
        estimator_family(
            "own_logistic", make_logistic, label="my logistic", save=logistic_to_bytes, load=logistic_from_bytes
        ),
        estimator_family("own_boosters", make_booster, label="my boosters per partition", per_partition=True),
        torch_module_family("own_net", make_net, label="my net", max_steps=300),
    ]
    for family in families:
        register_family(family)
    yield families
    for family in families:  # the registry is the process's: leave it as it was
        FAMILIES.pop(family.name)
        SPECS.pop(family.name)


def table(rows=9_000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    distance = rng.uniform(0, 10, rows)
    city = rng.choice(["north", "south", "east"], rows)
    logit = 0.8 * (distance - 5) + np.where(city == "north", 1.0, -0.5)
    return pd.DataFrame(
        {
            "id": np.arange(rows),
            "distance": distance.round(3),
            "city": city,
            "late": np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no"),
        }
    )


def job(tmp_path, models) -> str:
    table().to_csv(tmp_path / "trips.csv", index=False)
    spec = {
        "input": {"path": "trips.csv", "partitions": 3},
        "target": {"column": "late", "task": "classification", "classes": ["no", "yes"]},
        "features": {"numeric": ["distance"], "categorical": ["city"]},
        "split": {"key": ["id"]},
        "train": {"models": models, "xgboost": {"num_boost_round": 20}},
        "output": {"runs_dir": "runs"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "job.yaml")


def test_families_of_ones_own_train_score_and_report_like_the_built_in_ones(registered, runtime, tmp_path):
    from sklearn.metrics import roc_auc_score

    from shardflow.pipelines.job import run
    from shardflow.pipelines.records import trained_models
    from shardflow.pipelines.serving.model import load_model
    from shardflow.pipelines.serving.predict import predict

    result = run(load_config(job(tmp_path, ["xgboost", "own_logistic", "own_boosters", "own_net"])), runtime=runtime)
    assert set(result.metrics) == {"xgboost", "own_logistic", "own_boosters", "own_net"}
    for name in ("own_logistic", "own_boosters", "own_net"):
        assert result.metrics[name]["auc"] > 0.75, (name, result.metrics[name])
    assert "my logistic" in result.table and "my boosters per partition" in result.table
    assert "my net" in (result.run_dir / "report.html").read_text()
    assert len(result.partition_metrics["own_boosters"]) >= 2  # one model per partition, each scored

    # The global estimator equals scikit-learn fitted here on the same rows of the run's features.
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    x, y, valid = group["X"][:], group["y"][:], group["is_validation"][:]
    reference = make_logistic().fit(x[~valid], y[~valid].astype(int))
    model = load_model(result.run_dir, "own_logistic")
    frame = table().drop(columns="late")
    scored = model.predict(frame)
    fitted = trained_models.load_model(result.run_dir, "own_logistic")["estimator"]
    np.testing.assert_allclose(fitted.coef_, reference.coef_, rtol=1e-6, atol=1e-8)
    reference_auc = roc_auc_score(y[valid], reference.predict_proba(x[valid])[:, 1])
    assert result.metrics["own_logistic"]["auc"] == pytest.approx(reference_auc, abs=2e-3)  # binned AUC

    # Batch predict writes what load_model returns.
    frame.to_csv(tmp_path / "new.csv", index=False)
    out = predict(result.run_dir, tmp_path / "new.csv", tmp_path / "scores", model="own_net", runtime=runtime)
    written = pd.read_parquet(out.output)
    in_memory = load_model(result.run_dir, "own_net").predict(frame)
    np.testing.assert_allclose(np.sort(written["prediction"]), np.sort(in_memory["prediction"]), rtol=1e-5)
    assert set(scored["predicted_label"]) <= {"no", "yes"}


def test_a_config_names_only_registered_families_and_registration_is_checked(tmp_path):
    from shardflow.pipelines.families.custom import estimator_family

    with pytest.raises(ConfigError, match=r"'train.models'.*'not_registered' is not one of"):
        load_config(job(tmp_path, ["xgboost", "not_registered"]))
    with pytest.raises(ValueError, match=r"no save_model/load_model; pass save= and load="):
        estimator_family("no_saving", make_logistic)
    with pytest.raises(ValueError, match="is built in"):
        register_family(estimator_family("xgboost", make_booster))
    with pytest.raises(ValueError, match="a Python identifier"):
        register_family(estimator_family("not a name", make_booster))
