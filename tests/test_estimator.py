"""``shardflow.Estimator`` as scikit-learn users expect it: hyperparameters as constructor
arguments over the config, ``get_params``/``set_params``/``clone``, ``GridSearchCV`` on the
test cluster, ``score``, ``classes_``, ``feature_importances_``, and ``predict``/``predict_proba``
as NumPy arrays, each compared with an independent reference (scikit-learn's metrics, the
booster file read by XGBoost itself, the config as ``load_config`` reads it)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from shardflow.core.constraints import ConfigError
from shardflow.core.errors import ShardflowError
from shardflow.pipelines.interface.estimator import Estimator
from shardflow.pipelines.interface.hyperparameters import HYPERPARAMETERS, job_config
from shardflow.pipelines.setup.config import load_config


def table(n: int = 3000, seed: int = 0):
    """Rows with an id, two numbers and a zone; a score mostly of ``a``, then ``b`` and the zone."""
    rng = np.random.default_rng(seed)
    a, b, zone = rng.normal(size=n), rng.uniform(0, 10, n), rng.choice(["n", "s", "e"], n)
    score = 2 * a + 0.3 * b + (zone == "e") + 0.3 * rng.normal(size=n)
    X = pd.DataFrame({"id": np.arange(n), "a": a.round(4), "b": b.round(4), "zone": zone})
    return X, score


def write_job(directory, task: str = "classification", models=("xgboost",), xgboost=None) -> str:
    spec = {
        "input": {"path": "unused.csv"},  # fit replaces it with the frame's files
        "target": {"column": "label", "task": task},
        "features": {"numeric": ["a", "b"], "categorical": ["zone"]},
        "clean": {"valid_ranges": {"b": [0, 10]}},
        "split": {"key": ["id"]},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
        "train": {"models": list(models), "xgboost": {"num_boost_round": 20, **(xgboost or {})}},
    }
    path = directory / f"job-{task}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def depth(node: dict) -> int:
    """The depth of a tree of XGBoost's JSON dump (a stump: 1)."""
    return 1 + max((depth(child) for child in node["children"]), default=-1) if "children" in node else 0


def test_hyperparameters_set_their_config_keys_checked_as_the_config_checks_them(tmp_path):
    path = write_job(tmp_path, xgboost={"params": {"learning_rate": 0.05, "max_depth": 3}})
    models = ["linear", "xgboost"]
    estimator = Estimator(
        path, models=models, n_estimators=7, eta=0.2, mlp_hidden=(8,), random_state=np.int64(3), subsample=None
    )
    # The reference: the file as load_config reads it, with the same keys set by hand.
    expected = load_config(path)
    expected.train.models, expected.train.xgboost.num_boost_round = ["linear", "xgboost"], 7
    expected.train.xgboost.params = {"max_depth": 3, "eta": 0.2}  # the file's alias learning_rate is replaced
    expected.train.mlp.hidden, expected.train.seed = [8], 3
    hyperparameters = {k: v for k, v in estimator.get_params().items() if k in HYPERPARAMETERS}
    assert job_config(path, hyperparameters) == expected
    given = load_config(path)
    assert job_config(given, {"max_depth": 5}).train.xgboost.params["max_depth"] == 5
    assert given == load_config(path)  # a Config given is not changed
    # Every keyword names a key the config has (an XGBoost parameter: a key of train.xgboost.params).
    raw = load_config(path).to_dict()
    for name, key in HYPERPARAMETERS.items():
        node = raw
        for part in key.split(".")[:-1]:
            node = node[part]
        assert key.startswith("train.xgboost.params.") or key.split(".")[-1] in node, name

    # sklearn's contract: arguments stored unchanged, get_params/set_params/clone/repr over them.
    params = estimator.get_params()
    assert params["config"] == path and params["runtime"] is None and params["models"] is models
    assert list(params) == [
        "config",
        "runtime",
        "models",
        "n_estimators",
        "eta",
        "mlp_hidden",
        "random_state",
        "subsample",
    ]
    copied = clone(estimator)
    assert copied is not estimator and copied.get_params() == estimator.get_params()
    assert estimator.set_params(learning_rate=0.3, max_depth=2) is estimator
    assert "eta" not in estimator.get_params() and estimator.get_params()["learning_rate"] == 0.3  # one parameter
    assert (
        repr(Estimator(path, models=["xgboost"], max_depth=6))
        == f"Estimator({path!r}, models=['xgboost'], max_depth=6)"
    )
    assert repr(Estimator()) == "Estimator()"
    assert is_classifier(Estimator(path)) and is_regressor(Estimator(write_job(tmp_path, task="regression")))

    # Unknown names and two spellings of one parameter: one line, naming the argument and the accepted ones.
    with pytest.raises(
        TypeError, match=r"no parameter 'max_dept' \(did you mean 'max_depth'\?\); it takes .*n_estimators"
    ) as err:
        Estimator(path, max_dept=3)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"'eta' and 'learning_rate' are one parameter \(train.xgboost.params.eta\)"):
        Estimator(path, eta=0.1, learning_rate=0.2)
    with pytest.raises(ValueError, match=r"no parameter 'depth'"):
        Estimator(path).set_params(depth=3)
    # Values: checked when fit builds the job, before it writes or runs anything.
    X, score = table(200)
    with pytest.raises(ConfigError, match=r"Estimator\(n_estimators=0\): config key 'train.xgboost.num_boost_round'"):
        Estimator(path, n_estimators=0).fit(X, score > 0)
    assert not (tmp_path / "runs").exists()
    for bad, words in [
        (
            {"max_depth": -1},
            r"Estimator\(max_depth=-1\): config key 'train.xgboost.params.max_depth': must be at least 0",
        ),
        ({"max_depth": 2.5}, r"'train.xgboost.params.max_depth': expected an integer, got 2.5"),
        ({"subsample": 0}, r"'train.xgboost.params.subsample': must be between 0 and 1 \(excluding 0\)"),
        ({"mlp_lr": "fast"}, r"Estimator\(mlp_lr='fast'\): config key 'train.mlp.lr': expected a number"),
        ({"mlp_hidden": [0]}, r"'train.mlp.hidden': item 0 must be between 1"),
        ({"models": ["boosted"]}, r"'train.models': 'boosted' is not one of"),
        ({"grow_policy": "wide"}, r"'wide' is not one of depthwise, lossguide"),
    ]:
        with pytest.raises(ConfigError, match=words):
            job_config(path, bad)


def test_grid_search_over_max_depth_on_the_cluster(runtime, tmp_path):
    """GridSearchCV clones the estimator, sets ``max_depth`` and runs a job per fold on the
    session's cluster; the fitted estimator predicts labels as the target wrote them."""
    import dask.dataframe as dd
    import xgboost

    X, score = table(3000)
    y = np.select([score < 0.5, score < 3], ["low", "mid"], "high")
    path = write_job(tmp_path)
    search = GridSearchCV(Estimator(path, runtime=runtime, n_estimators=20), {"max_depth": [1, 4]}, cv=2)
    search.fit(X, y)
    results = search.cv_results_
    assert [p["max_depth"] for p in results["params"]] == [1, 4]
    assert np.all(results["mean_test_score"] > 0.6), results["mean_test_score"]
    # The reference for one fold: the same split, fitted by hand, scored by scikit-learn.
    train, test = list(StratifiedKFold(n_splits=2).split(X, y))[1]
    by_hand = Estimator(path, runtime=runtime, n_estimators=20, max_depth=4).fit(X.iloc[train], y[train])
    assert accuracy_score(y[test], by_hand.predict(X.iloc[test])) == pytest.approx(results["split1_test_score"][1])

    best = search.best_estimator_
    assert best.get_params()["max_depth"] == search.best_params_["max_depth"]
    booster = xgboost.Booster(model_file=str(best.run_dir_ / "train" / "xgboost.ubj"))  # the refit's model
    depths = [depth(json.loads(tree)) for tree in booster.get_dump(dump_format="json")]
    assert max(depths) == search.best_params_["max_depth"]  # the hyperparameter reached XGBoost
    assert best.classes_.tolist() == sorted(set(y))
    predicted = best.predict(X)
    assert isinstance(predicted, np.ndarray) and predicted.shape == (len(X),)
    assert set(predicted) <= set(best.classes_)
    proba = best.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (best.classes_[proba.argmax(axis=1)] == predicted).all()
    assert best.score(X, y) == pytest.approx(accuracy_score(y, predicted))
    assert best.score(X.assign(label=y)) == pytest.approx(accuracy_score(y, predicted))  # y from X's target column
    # Arrays: fit's columns in fit's order. A Dask DataFrame: a Dask array.
    assert best.n_features_in_ == 4 and best.feature_names_in_.tolist() == ["id", "a", "b", "zone"]
    np.testing.assert_array_equal(best.predict(X.to_numpy()), predicted)
    with pytest.raises(ShardflowError, match=r"an array needs 4 columns, in the order of fit's X \(id, a, b, zone\)"):
        best.predict(X[["a", "b"]].to_numpy())
    frame = dd.from_pandas(X, npartitions=3)
    np.testing.assert_array_equal(best.predict(frame).compute(), predicted)
    np.testing.assert_allclose(best.predict_proba(frame).compute(), proba)
    # Gain importances: XGBoost's own, from the model file, normalised; ``a`` matters most.
    gain = booster.get_score(importance_type="gain")
    reference = np.array([gain.get(name, 0.0) for name in best.feature_names_])
    np.testing.assert_allclose(best.feature_importances_, reference / reference.sum())
    assert best.feature_names_ == ["a", "b", "zone"] and best.feature_importances_.argmax() == 0
    assert clone(best).get_params() == best.get_params() and not hasattr(clone(best), "model_")


def test_a_regressor_scores_r2_and_has_no_classes_nor_importances(runtime, tmp_path):
    X, score = table(2000, seed=1)
    y = 10 * score
    estimator = Estimator(write_job(tmp_path, task="regression", models=["linear"]), runtime=runtime).fit(X, y)
    predicted = estimator.predict(X)
    assert predicted.dtype == np.float64 and predicted.shape == (len(X),)
    assert estimator.score(X, y) == pytest.approx(r2_score(y, predicted))
    assert estimator.score(X, y) > 0.9
    weights = np.linspace(0.5, 2, len(X))
    assert estimator.score(X, y, sample_weight=weights) == pytest.approx(r2_score(y, predicted, sample_weight=weights))
    assert not hasattr(estimator, "classes_")
    with pytest.raises(AttributeError, match=r"the fitted model is 'linear', which has no feature importances"):
        estimator.feature_importances_  # noqa: B018
    with pytest.raises(ShardflowError, match=r"predicts a number .* use predict"):
        estimator.predict_proba(X)
    # A row the ETL would quarantine (b outside clean.valid_ranges) has no prediction; score leaves it out.
    rows = X.head(100).copy()
    rows.loc[0, "b"] = 50.0
    partial = estimator.predict(rows)
    assert np.isnan(partial[0]) and not np.isnan(partial[1:]).any()
    assert estimator.score(rows, y[:100]) == pytest.approx(r2_score(y[1:100], partial[1:]))


def test_a_binary_classifier_gives_back_boolean_labels(runtime, tmp_path):
    X, score = table(2000, seed=2)
    y = score > 2
    estimator = Estimator(write_job(tmp_path, models=["linear"]), runtime=runtime).fit(X, y)
    assert estimator.classes_.tolist() == [False, True] and estimator.classes_.dtype == bool
    predicted, proba = estimator.predict(X), estimator.predict_proba(X)
    assert predicted.dtype == bool and proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (estimator.classes_[proba.argmax(axis=1)] == predicted).all()
    assert estimator.score(X, y) == pytest.approx(accuracy_score(y, predicted)) and estimator.score(X, y) > 0.8
