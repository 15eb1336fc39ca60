"""Targets as users have them: string and boolean labels, multi-class, weights, regression
in the thousands and ``target.transform``. Every distributed figure is compared with a
single-process reference computed in the test (scikit-learn, xgboost.train, a torch loop)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
import yaml
import zarr
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from shardflow.core.errors import InputError
from shardflow.pipelines.etl.stage import etl
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.job import evaluate_run, run, train
from shardflow.pipelines.records import trained_models
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import ConfigError, load_config
from shardflow.tasks.labels import label_keys

FAST = {
    "xgboost": {"num_boost_round": 60},
    "partitions": {"xgboost_rounds": 30, "mlp_epochs": 3},
    "mlp": {"epochs": 4, "batch_size": 256, "sync_every": 8},
}


def write_job(directory, **sections):
    sections.setdefault("output", {"runs_dir": "runs"})
    sections.setdefault("split", {"key": ["id"]})
    sections.setdefault("encode", {"min_frequency": 1})
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return load_config(path)


def gathered_predictions(run_dir):
    """Every family's validation predictions, made in this process from the saved models,
    partition by partition as the evaluation does (the stacked family out of fold)."""
    group = zarr.open_group(str(run_dir / "etl" / "features.zarr"), mode="r")
    x, y, valid = group["X"][:], group["y"][:], group["is_validation"][:]
    w = group["w"][:] if "w" in group else np.ones(len(y), np.float32)
    offsets, rows = group.attrs["partition_offsets"], group.attrs["partition_rows"]
    names = trained_models.available_models(run_dir)
    out = {}
    for name in names:
        payload = trained_models.load_model(run_dir, name)
        family = FAMILIES[name]
        predictor = family.validation_predict or family.predict
        pieces = []
        for off, n in zip(offsets, rows):
            mask = valid[off : off + n]
            pieces.append(predictor(payload, x[off : off + n][mask], 1, {}))
        out[name] = np.concatenate(pieces)
    order = np.concatenate([np.arange(off, off + n)[valid[off : off + n]] for off, n in zip(offsets, rows)])
    return out, y[order], w[order]


# ----------------------------------------------------------------------------- labels


def test_label_keys_unify_the_spellings_of_one_label():
    assert label_keys(pd.Series(["1", "1.0", " 1 ", None, "x"], dtype=object)).tolist() == ["1", "1", "1", pd.NA, "x"]
    assert label_keys(pd.Series([1, 0], dtype="int64")).tolist() == ["1", "0"]
    assert label_keys(pd.Series(["True", "false"], dtype=object)).tolist() == ["true", "false"]
    # Codes stay codes: padded or grouped digits and not-a-number words are text.
    assert label_keys(pd.Series(["007", "7", "1_000", "nan"], dtype=object)).tolist() == ["007", "7", "1_000", "nan"]
    from shardflow.tasks.labels import decode_labels, label_type

    assert label_type(["007", "7"]) == "string"
    assert decode_labels(np.array([1]), ["1", "18446744073709551617"], "number").tolist() == [18446744073709551617]


def test_multinomial_combiner_terms_are_the_gradient_and_hessian_of_its_loss():
    from shardflow.tasks.combiners import MultinomialCombiner

    rng = np.random.default_rng(0)
    combiner = MultinomialCombiner()
    design = combiner.inputs([rng.dirichlet(np.ones(4), 60) for _ in range(3)])
    y, w, coef = rng.integers(0, 4, 60), rng.uniform(0.5, 2, 60), rng.normal(size=7) * 0.3

    def loss(c):
        return -(w * np.log(combiner.predict(c, design)[np.arange(60), y])).sum()

    terms = combiner.terms(design, y, w, coef)
    steps = np.eye(7) * 1e-6
    gradient = np.array([(loss(coef + e) - loss(coef - e)) / 2e-6 for e in steps])
    hessian = np.array(
        [
            (combiner.terms(design, y, w, coef + e)["grad"] - combiner.terms(design, y, w, coef - e)["grad"]) / 2e-6
            for e in steps
        ]
    )
    np.testing.assert_allclose(terms["grad"], gradient, atol=1e-6)
    np.testing.assert_allclose(terms["hess"], hessian, atol=1e-6)


def test_runs_from_before_fitted_labels_still_predict_0_1():
    from shardflow.tasks.encode import Preprocessor

    old = (
        '{"numeric": [], "lower": [], "upper": [], "mean": [], "std": [], "categorical": [], '
        '"vocabularies": {}, "target": "y", "task": "classification", "keep_columns": []}'
    )
    assert Preprocessor.from_json(old).classes == ["0", "1"]


def four_class_table(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["north", "south", "east"], n)
    score = x1 + 0.6 * x2 + 0.8 * (city == "north") + rng.normal(scale=0.3, size=n)
    plan = np.select([score < -0.8, score < 0.3, score < 1.2], ["basic", "plus", "pro"], "enterprise")
    return pd.DataFrame({"id": np.arange(n), "x1": x1.round(4), "x2": x2.round(4), "city": city, "plan": plan})


@pytest.fixture(scope="module")
def multiclass_run(runtime, tmp_path_factory):
    """Four string classes in three CSV files; the first file has no 'enterprise' rows."""
    directory = tmp_path_factory.mktemp("multiclass")
    table = four_class_table()
    (directory / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(table)), 3)):
        part = table.iloc[rows]
        if i == 0:
            part = part[part.plan != "enterprise"]
        part.to_csv(directory / "in" / f"part{i}.csv", index=False)
    # exchangeable: the partitions stay as written, so one of them really lacks a class
    config = write_job(
        directory,
        input={"path": "in/*.csv", "exchangeable": True},
        target={"column": "plan", "task": "classification"},
        features={"numeric": ["x1", "x2"], "categorical": ["city"]},
        train={
            **FAST,
            "models": list(FAMILIES),
            "groups": {"partition_by": ["city"], "min_rows": 50, "xgboost_rounds": 30},
        },
    )
    result = etl(config, runtime=runtime)
    trained = train(config, runtime, result.run_dir)
    evaluated = evaluate_run(runtime, result.run_dir, trained.data)
    return directory, config, result, trained, evaluated


def test_multiclass_string_labels_every_family_matches_scikit_learn(multiclass_run):
    directory, config, result, trained, evaluated = multiclass_run
    assert result.preprocessor.task == "multiclass"
    assert result.preprocessor.classes == ["basic", "enterprise", "plus", "pro"]
    predictions, y, w = gathered_predictions(result.run_dir)
    assert set(predictions) == set(FAMILIES)
    labels = list(range(4))
    for name, p in predictions.items():
        assert p.shape == (len(y), 4), name
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
        ours = evaluated["metrics"][name]
        assert ours["rows"] == len(y)
        normalised = p / p.sum(axis=1, keepdims=True)  # float32 members: sums 1 within 1e-6
        assert ours["logloss"] == pytest.approx(log_loss(y, normalised, labels=labels), rel=1e-6), name
        assert ours["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)), abs=1e-9), name
        assert ours["macro_f1"] == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"), abs=1e-9), name
        # AUC from 4096-bin histograms: equal to the exact one up to ties within a bin.
        exact = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels)
        assert ours["macro_auc"] == pytest.approx(exact, abs=2e-3), name
        confusion = (
            pd.crosstab(pd.Series(y.astype(int)), pd.Series(p.argmax(axis=1)))
            .reindex(index=labels, columns=labels, fill_value=0)
            .to_numpy()
        )
        np.testing.assert_array_equal(np.asarray(ours["confusion"]), confusion)
    # The per-partition models all have the four outputs, the one that never saw a class too.
    members = trained.results["xgboost_partitions"]["partition_metrics"]
    assert len(members) == 3
    # ... and the ensemble is as good as one model over all rows (about 0.77 here: the labels are noisy).
    accuracy = {name: m["accuracy"] for name, m in evaluated["metrics"].items()}
    assert accuracy["xgboost_partitions"] >= accuracy["xgboost"] - 0.03 and accuracy["xgboost_partitions"] > 0.7


def test_multiclass_global_xgboost_matches_single_process_softprob(multiclass_run):
    directory, config, result, trained, evaluated = multiclass_run
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    x, y, valid = group["X"][:], group["y"][:], group["is_validation"][:]
    params = {**trained.results["xgboost"]["params"], "nthread": 2}
    assert params["objective"] == "multi:softprob" and params["num_class"] == 4
    names, types = trained.data.feature_names, trained.data.feature_types(True)
    dtrain = xgb.QuantileDMatrix(
        x[~valid], y[~valid], feature_names=names, feature_types=types, enable_categorical=True
    )
    dvalid = xgb.DMatrix(x[valid], y[valid], feature_names=names, feature_types=types, enable_categorical=True)
    reference = xgb.train(
        params, dtrain, num_boost_round=60, evals=[(dvalid, "validation")], early_stopping_rounds=20, verbose_eval=False
    )
    ref = reference.predict(dvalid, iteration_range=(0, reference.best_iteration + 1))
    ref_accuracy = accuracy_score(y[valid], ref.argmax(axis=1))
    assert abs(evaluated["metrics"]["xgboost"]["accuracy"] - ref_accuracy) <= 0.005


def test_multiclass_predict_writes_labels_and_class_probabilities(multiclass_run, runtime):
    directory, config, result, trained, evaluated = multiclass_run
    new = four_class_table(500, seed=5).drop(columns=["plan"])
    new.to_csv(directory / "new.csv", index=False)
    for model in ("xgboost", "stacked", "mlp"):
        out = predict(
            result.run_dir, directory / "new.csv", directory / f"scores-{model}", model=model, runtime=runtime
        )
        scores = pd.read_parquet(out.output)
        columns = [f"probability_{c}" for c in ("basic", "enterprise", "plus", "pro")]
        assert list(scores.columns) == ["predicted_label", *columns]
        assert len(scores) == 500
        np.testing.assert_allclose(scores[columns].sum(axis=1), 1.0, atol=1e-6)
        best = np.array(["basic", "enterprise", "plus", "pro"])[scores[columns].to_numpy().argmax(axis=1)]
        assert (scores["predicted_label"].to_numpy() == best).all()


def test_report_shows_the_confusion_matrix_and_per_class_metrics(multiclass_run):
    from shardflow.pipelines.interface.report import build_report

    directory, config, result, trained, evaluated = multiclass_run
    page = build_report(result.run_dir).read_text()
    assert "Confusion matrix of the best model" in page
    assert "Per class: global XGBoost" in page and "enterprise" in page


# ----------------------------------------------------------------------------- binary labels and weights


def binary_table(n=5000, seed=1):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    p = 1 / (1 + np.exp(-(1.5 * x1 - x2)))
    churned = np.where(rng.uniform(size=n) < p, "yes", "no")
    weight = rng.choice([0.5, 1.0, 4.0], n)
    return pd.DataFrame({"id": np.arange(n), "x1": x1.round(4), "x2": x2.round(4), "churned": churned, "w": weight})


def test_weighted_yes_no_target_every_family_matches_scikit_learn(runtime, tmp_path):
    table = binary_table()
    (tmp_path / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(table)), 3)):
        table.iloc[rows].to_csv(tmp_path / "in" / f"part{i}.csv", index=False)
    config = write_job(
        tmp_path,
        input={"path": "in/*.csv"},
        target={"column": "churned", "weight": "w"},
        features={"numeric": ["x1", "x2"]},
        train=FAST,
    )
    result = run(config, runtime=runtime)
    pre = trained_models.load_model(result.run_dir, "xgboost")["task"]
    assert pre == "classification"
    predictions, y, w = gathered_predictions(result.run_dir)
    assert sorted(np.unique(w).tolist()) == [0.5, 1.0, 4.0]
    for name, p in predictions.items():
        ours = result.metrics[name]
        assert ours["logloss"] == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-6), name
        assert ours["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5, sample_weight=w), abs=1e-9), name
        assert ours["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-4), name
    # The global model is trained with the weights: it equals single-process xgboost.train with them.
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    x, yy, ww, valid = group["X"][:], group["y"][:], group["w"][:], group["is_validation"][:]
    meta = trained_models.load_model(result.run_dir, "xgboost")
    params = json.loads((result.run_dir / "train" / "xgboost.json").read_text())["params"]
    dtrain = xgb.QuantileDMatrix(x[~valid], yy[~valid], weight=ww[~valid])
    dvalid = xgb.DMatrix(x[valid], yy[valid], weight=ww[valid])
    reference = xgb.train(
        {**params, "nthread": 2},
        dtrain,
        num_boost_round=60,
        evals=[(dvalid, "v")],
        early_stopping_rounds=20,
        verbose_eval=False,
    )
    ref = reference.predict(dvalid, iteration_range=(0, reference.best_iteration + 1))
    booster = xgb.Booster()
    booster.load_model(bytearray(meta["model"]))
    assert (
        abs(
            roc_auc_score(yy[valid], booster.inplace_predict(x[valid]), sample_weight=ww[valid])
            - roc_auc_score(yy[valid], ref, sample_weight=ww[valid])
        )
        < 0.005
    )
    # Labels come back as written.
    scored = predict(result.run_dir, tmp_path / "in" / "part1.csv", tmp_path / "scores", runtime=runtime)
    labels = pd.read_parquet(scored.output)["predicted_label"]
    assert set(labels) <= {"yes", "no"} and labels.dtype != np.int64


def test_a_partition_whose_rows_all_weigh_zero_trains_and_scores(runtime, tmp_path):
    table = binary_table(3000, seed=7)
    (tmp_path / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(table)), 3)):
        part = table.iloc[rows].copy()
        if i == 1:
            part["w"] = 0.0  # e.g. a file of zero-exposure rows
        part.to_csv(tmp_path / "in" / f"part{i}.csv", index=False)
    config = write_job(
        tmp_path,
        input={"path": "in/*.csv", "exchangeable": True},  # keep the weightless file whole
        target={"column": "churned", "weight": "w"},
        features={"numeric": ["x1", "x2"]},
        train=FAST,
    )
    result = run(config, runtime=runtime)
    meta = json.loads((result.run_dir / "train" / "xgboost_partitions.json").read_text())
    assert meta["groups"] == [[0], [2]]  # the weightless partition trains no member
    predictions, y, w = gathered_predictions(result.run_dir)
    for name, p in predictions.items():
        assert result.metrics[name]["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-4), name
    assert all(m.keys() == {"partition", "rows"} for m in result.partition_metrics["xgboost"] if m["partition"] == 1)


def test_weights_change_the_model(runtime, tmp_path):
    """Up-weighting the positives shifts every family's predicted positive rate up."""
    table = binary_table(3000, seed=2)
    table["w"] = np.where(table.churned == "yes", 5.0, 1.0)
    table.to_csv(tmp_path / "t.csv", index=False)
    rates = {}
    for weighted in (False, True):
        target = {"column": "churned", **({"weight": "w"} if weighted else {})}
        config = write_job(
            tmp_path,
            input={"path": "t.csv"},
            target=target,
            features={"numeric": ["x1", "x2"]},
            train={**FAST, "models": ["xgboost", "mlp"]},
            output={"runs_dir": f"runs-{weighted}"},
        )
        result = run(config, runtime=runtime)
        predictions, y, w = gathered_predictions(result.run_dir)
        rates[weighted] = {name: float((p >= 0.5).mean()) for name, p in predictions.items()}
    for name in rates[True]:
        assert rates[True][name] > rates[False][name] + 0.05, (name, rates)


# ----------------------------------------------------------------------------- regression


def prices_table(n=8000, seed=3):
    """A price in the thousands, skewed, from two numerics."""
    rng = np.random.default_rng(seed)
    area, rooms = rng.uniform(30, 250, n), rng.integers(1, 7, n)
    price = np.exp(7.0 + 0.012 * area + 0.08 * rooms + rng.normal(scale=0.15, size=n))
    return pd.DataFrame({"id": np.arange(n), "area": area.round(1), "rooms": rooms, "price": price.round(2)})


def reference_mlp_r2(x_train, y_train, x_valid, y_valid, *, hidden, epochs, batch, lr, seed):
    """A plain single-process torch loop on the standardised target (the reference)."""
    torch.manual_seed(seed)
    mean, std = y_train.mean(), y_train.std()
    layers, width = [], x_train.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(((y_train - mean) / std).astype(np.float32))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(xt))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss = ((net(xt[idx]).squeeze(1) - yt[idx]) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        p = net(torch.from_numpy(x_valid)).squeeze(1).numpy() * std + mean
    return r2_score(y_valid, p)


def test_regression_mlp_on_a_target_in_the_thousands_matches_a_torch_loop(runtime, tmp_path):
    prices_table().to_csv(tmp_path / "prices.csv", index=False)
    mlp = {
        "epochs": 8,
        "batch_size": 256,
        "sync": "gradients",
        "lr": 0.003,
        "lr_schedule": "constant",
        "hidden": [64, 32],
        "early_stopping_patience": None,
    }
    config = write_job(
        tmp_path,
        input={"path": "prices.csv"},
        target={"column": "price", "task": "regression"},
        features={"numeric": ["area", "rooms"]},
        train={"models": ["xgboost", "mlp"], "xgboost": FAST["xgboost"], "mlp": mlp},
    )
    result = run(config, runtime=runtime)
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    x, y, valid = group["X"][:], group["y"][:], group["is_validation"][:]
    assert y.max() > 1000  # the ETL keeps the target in its units; only the MLP standardises it
    ours = result.metrics["mlp"]["r2"]
    reference = reference_mlp_r2(
        x[~valid], y[~valid], x[valid], y[valid], hidden=[64, 32], epochs=8, batch=256, lr=0.003, seed=0
    )
    assert reference > 0.8
    assert abs(ours - reference) <= 0.02, (ours, reference)
    assert ours >= 0.9 * result.metrics["xgboost"]["r2"]
    predictions, yy, w = gathered_predictions(result.run_dir)
    for name, p in predictions.items():
        assert result.metrics[name]["r2"] == pytest.approx(r2_score(yy, p), abs=1e-6), name
        assert result.metrics[name]["rmse"] == pytest.approx(math.sqrt(mean_squared_error(yy, p)), rel=1e-6)


def test_log1p_transform_with_weights_predicts_in_the_target_units(runtime, tmp_path):
    table = prices_table(4000, seed=4)
    table["w"] = np.random.default_rng(0).uniform(0.2, 3.0, len(table)).round(2)
    table.to_csv(tmp_path / "prices.csv", index=False)
    config = write_job(
        tmp_path,
        input={"path": "prices.csv"},
        target={"column": "price", "task": "regression", "transform": "log1p", "weight": "w"},
        features={"numeric": ["area", "rooms"]},
        train={"models": ["xgboost", "xgboost_partitions", "stacked"], **FAST},
    )
    result = run(config, runtime=runtime)
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    # One CSV file, one partition in file order: the models' target is log1p(price).
    np.testing.assert_allclose(np.expm1(group["y"][:].astype(np.float64)), table.price, rtol=1e-5)
    predictions, yy, w = gathered_predictions(result.run_dir)
    truth = np.expm1(yy.astype(np.float64))
    for name, p in predictions.items():  # models predict log1p(price); metrics are in price units
        value = np.expm1(p)
        assert result.metrics[name]["mae"] == pytest.approx(
            mean_absolute_error(truth, value, sample_weight=w), rel=1e-5
        ), name
        assert result.metrics[name]["r2"] == pytest.approx(r2_score(truth, value, sample_weight=w), abs=1e-6), name
    assert result.metrics["xgboost"]["r2"] > 0.8
    scored = predict(result.run_dir, tmp_path / "prices.csv", tmp_path / "scores", model="xgboost", runtime=runtime)
    prices = pd.read_parquet(scored.output)["prediction"]
    assert prices.median() > 1000 and abs(np.log(prices.median() / table.price.median())) < 0.2


def test_quantile_objective_is_passed_through(runtime, tmp_path):
    prices_table(3000).to_csv(tmp_path / "prices.csv", index=False)
    params = {"objective": "reg:quantileerror", "quantile_alpha": 0.9}
    config = write_job(
        tmp_path,
        input={"path": "prices.csv"},
        target={"column": "price", "task": "regression"},
        features={"numeric": ["area", "rooms"]},
        train={"models": ["xgboost"], "xgboost": {**FAST["xgboost"], "params": params}},
    )
    result = run(config, runtime=runtime)
    predictions, y, w = gathered_predictions(result.run_dir)
    covered = float((y <= predictions["xgboost"]).mean())
    assert 0.8 < covered < 0.97  # a 90% quantile, not a mean (≈50%)


# ----------------------------------------------------------------------------- targets that do not fit the task


def test_string_target_under_regression_says_what_it_found(runtime, tmp_path):
    table = four_class_table(300)
    table.to_csv(tmp_path / "t.csv", index=False)
    config = write_job(
        tmp_path, input={"path": "t.csv"}, target={"column": "plan", "task": "regression"}, features={"numeric": ["x1"]}
    )
    with pytest.raises(
        InputError,
        match=r"target 'plan' holds strings such as '\w+', .* but target.task is "
        r"regression, which needs numbers; set target.task: classification",
    ):
        etl(config, runtime=runtime)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_fractional_target_under_classification_is_refused(runtime, tmp_path):
    table = four_class_table(300)
    table["y"] = np.random.default_rng(0).choice([0.5, 1.5, 2.5], len(table))
    table.to_csv(tmp_path / "t.csv", index=False)
    config = write_job(tmp_path, input={"path": "t.csv"}, target={"column": "y"}, features={"numeric": ["x1"]})
    with pytest.raises(
        InputError,
        match=r"target 'y' holds fractional numbers such as 0.5, .* set target.task: "
        "regression",
    ):
        etl(config, runtime=runtime)


def test_target_options_that_do_not_fit_the_task_are_refused(tmp_path):
    cases = [
        ({"column": "y", "task": "classification", "transform": "log1p"}, "'target.transform'"),
        ({"column": "y", "task": "regression", "classes": ["a", "b"]}, "'target.classes'"),
        ({"column": "y", "classes": ["a"]}, "at least two labels"),
        ({"column": "y", "weight": "x1"}, "'target.weight': 'x1' is also the target or a feature"),
        ({"column": "y", "transform": "sqrt", "task": "regression"}, "'target.transform'"),
        ({"column": "y", "classes": ["a", ""]}, "at least two labels"),
    ]
    for target, message in cases:
        with pytest.raises(ConfigError, match=message):
            write_job(tmp_path, input={"path": "t.csv"}, target=target, features={"numeric": ["x1"]})
    with pytest.raises(ConfigError, match="'train.xgboost.params.quantile_alpha': one quantile per job"):
        write_job(
            tmp_path,
            input={"path": "t.csv"},
            target={"column": "y", "task": "regression"},
            features={"numeric": ["x1"]},
            train={"xgboost": {"params": {"quantile_alpha": [0.1, 0.9]}}},
        )


def test_configured_classes_fix_the_order_and_quarantine_other_labels(runtime, tmp_path):
    table = binary_table(1200)
    table.loc[:9, "churned"] = "maybe"
    table.to_csv(tmp_path / "t.csv", index=False)
    config = write_job(
        tmp_path,
        input={"path": "t.csv"},
        target={"column": "churned", "classes": ["yes", "no"]},
        features={"numeric": ["x1", "x2"]},
    )
    result = etl(config, runtime=runtime)
    assert result.preprocessor.classes == ["yes", "no"]  # "no" is the positive class now
    assert result.quarantined == {"churned: label not in target.classes": 10}
    y = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")["y"][:]
    assert abs(float(y.mean()) - float((table.churned[10:] == "no").mean())) < 0.05


def test_boolean_parquet_target_predicts_booleans(runtime, tmp_path):
    table = binary_table(2000, seed=6)
    table["churned"] = table.churned == "yes"  # a boolean column
    table.to_parquet(tmp_path / "t.parquet", index=False)
    config = write_job(
        tmp_path,
        input={"path": "t.parquet"},
        target={"column": "churned"},
        features={"numeric": ["x1", "x2"]},
        train={"models": ["xgboost"], "xgboost": FAST["xgboost"]},
    )
    result = run(config, runtime=runtime)
    pre = json.loads((result.run_dir / "etl" / "preprocessor.json").read_text())
    assert (pre["classes"], pre["label_type"], pre["task"]) == (["false", "true"], "boolean", "classification")
    scored = pd.read_parquet(
        predict(result.run_dir, tmp_path / "t.parquet", tmp_path / "scores", runtime=runtime).output
    )
    assert scored["predicted_label"].dtype == bool
    assert ((scored["prediction"] >= 0.5) == scored["predicted_label"]).all()
    assert accuracy_score(table.churned, scored["predicted_label"]) > 0.7


# ----------------------------------------------------------------------------- the stacked combiner


def many_classes_table(n: int = 8000, classes: int = 16, seed: int = 3) -> pd.DataFrame:
    """A 16-class label that the features nearly determine, in files that each hold
    mostly a few of the classes (as a file per carrier or per region does)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    x1 = label + rng.normal(scale=0.35, size=n)
    x2 = (label % 4) + rng.normal(scale=0.35, size=n)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "carrier": np.array([f"C{k:02d}" for k in range(classes)])[label],
        }
    )


def test_stacked_combiner_on_sixteen_classes_is_no_worse_than_its_members(runtime, tmp_path):
    """The multinomial combiner's Newton fit once diverged on many classes (log loss 17 where
    its members scored 0.1): it is damped now, starts from the members' average and is
    compared with each member on the validation rows."""
    table = many_classes_table()
    (tmp_path / "in").mkdir()
    ordered = table.sort_values("x1").reset_index(drop=True)
    for i, rows in enumerate(np.array_split(np.arange(len(ordered)), 4)):
        ordered.iloc[rows].to_csv(tmp_path / "in" / f"part{i}.csv", index=False)  # files sorted by the label's signal
    config = write_job(
        tmp_path,
        input={"path": "in/*.csv"},
        target={"column": "carrier"},
        features={"numeric": ["x1", "x2"]},
        train={"models": ["xgboost_partitions", "stacked"], "partitions": {"xgboost_rounds": 30}},
    )
    result = run(config, runtime=runtime)
    predictions, y, w = gathered_predictions(result.run_dir)
    labels = np.arange(16)
    ours = result.metrics["stacked"]["logloss"]
    assert ours == pytest.approx(log_loss(y, predictions["stacked"], sample_weight=w, labels=labels), rel=1e-6)
    # Independent reference: each member and their average, scored here from the saved models.
    payload = trained_models.load_model(result.run_dir, "xgboost_partitions")
    group = zarr.open_group(str(result.run_dir / "etl" / "features.zarr"), mode="r")
    x = group["X"][:][group["is_validation"][:]].astype(np.float32)
    members = [xgb.Booster(model_file=bytearray(m)).inplace_predict(x) for m in payload["models"]]
    clipped = [np.clip(p, 1e-9, 1) for p in members]  # as the combiner reads them
    member_losses = [log_loss(y, p / p.sum(axis=1, keepdims=True), sample_weight=w, labels=labels) for p in clipped]
    average = log_loss(y, predictions["xgboost_partitions"], sample_weight=w, labels=labels)
    assert math.isfinite(ours) and ours <= max(1.05 * average, average + 0.02), (ours, average, member_losses)
    fitted = json.loads((result.run_dir / "train" / "stacked.json").read_text())
    assert fitted["converged"] and fitted["best_member_loss"] == pytest.approx(min(member_losses), rel=1e-3)


def test_stacked_fit_in_one_task_equals_the_fit_by_reductions(runtime, tmp_path):
    """Small validation splits fit the combiner in one task (one round trip, not one per Newton
    pass): the same algorithm on the same sums, so the same coefficients and quality."""
    from shardflow.pipelines.training import load_training_data
    from shardflow.pipelines.training.stacking import fit_stacker

    table = many_classes_table(4000, classes=6)
    (tmp_path / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(table)), 3)):
        table.iloc[rows].to_csv(tmp_path / "in" / f"part{i}.csv", index=False)
    config = write_job(
        tmp_path,
        input={"path": "in/*.csv"},
        target={"column": "carrier"},
        features={"numeric": ["x1", "x2"]},
        train={"models": ["xgboost_partitions", "stacked"], "partitions": {"xgboost_rounds": 10}},
    )
    result = run(config, runtime=runtime)
    payload = trained_models.load_model(result.run_dir, "xgboost_partitions")
    data = load_training_data(runtime, result.run_dir / "etl", seed=0)
    members = [bytearray(m) for m in payload["models"]]
    by_reductions = fit_stacker(runtime, data, members, in_one_task=False)
    in_one_task = fit_stacker(runtime, data, members, in_one_task=True)
    assert in_one_task["one_task"] and not by_reductions["one_task"]
    assert len(in_one_task["newton_steps"]) == len(by_reductions["newton_steps"])
    np.testing.assert_allclose(in_one_task["coef"], by_reductions["coef"], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(in_one_task["coef_even"], by_reductions["coef_even"], rtol=1e-7, atol=1e-9)
    assert in_one_task["out_of_fold_loss"] == pytest.approx(by_reductions["out_of_fold_loss"], rel=1e-9)
    fitted = json.loads((result.run_dir / "train" / "stacked.json").read_text())
    assert fitted["one_task"]  # the default for a split this small
    np.testing.assert_allclose(fitted["coef"], in_one_task["coef"], rtol=1e-7, atol=1e-9)
