"""The linear baseline: logistic, multinomial and least-squares fits by Newton reductions on
the cluster, each compared with scikit-learn fit in this process on the ETL's own feature
matrix with the same penalty; its predictions through evaluation, ``load_model``,
``shardflow predict`` and the ONNX export agree."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
import zarr
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, mean_absolute_error, r2_score, roc_auc_score

from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.families.specs import default_families, family_names
from shardflow.pipelines.job import run
from shardflow.pipelines.records import trained_models
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.serving.export import export
from shardflow.pipelines.serving.model import load_model
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import load_config
from shardflow.pipelines.training import linear as linear_training
from shardflow.pipelines.training import load_training_data
from shardflow.tasks.encode import FIRST_CODE, Preprocessor
from shardflow.tasks.exported import load_exported
from shardflow.tasks.linear import MAX_CODES, MAX_COEFFICIENTS, LinearLayout, multinomial_terms

NAME = "linear"
CITIES = ["north", "south", "east", "west"]


def table(task: str, n: int = 4000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2, x3 = rng.normal(size=n), rng.normal(size=n), rng.uniform(0, 10, n)
    city = rng.choice(CITIES, n, p=[0.4, 0.3, 0.2, 0.1])
    score = 1.2 * x1 - 0.8 * x2 + 0.1 * x3 + 0.9 * (city == "north") - 0.5 * (city == "west")
    frame = pd.DataFrame({"id": np.arange(n), "x1": x1.round(4), "x2": x2.round(4), "x3": x3.round(3), "city": city})
    frame.loc[rng.uniform(size=n) < 0.03, "x2"] = np.nan  # imputed with the mean by the ETL
    if task == "binary":
        frame["y"] = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-score)), "yes", "no")
        frame["w"] = rng.choice([0.5, 1.0, 4.0], n)
    elif task == "multiclass":
        frame["y"] = np.select([score < -0.8, score < 0.5, score < 1.6], ["basic", "plus", "pro"], "enterprise")
        frame.loc[rng.uniform(size=n) < 0.15, "y"] = "plus"  # noise: no class is separable
    else:
        frame["y"] = np.exp(5 + 0.4 * score + rng.normal(scale=0.3, size=n)).round(2)
    return frame


def job(directory, task: str):
    target = {
        "binary": {"column": "y", "weight": "w"},
        "multiclass": {"column": "y"},
        "regression": {"column": "y", "task": "regression", "transform": "log1p"},
    }[task]
    sections = {
        "input": {"path": "in/*.csv"},
        "target": target,
        "features": {"numeric": ["x1", "x2", "x3"], "categorical": ["city"]},
        "split": {"key": ["id"]},
        "encode": {"min_frequency": 1},
        "output": {"runs_dir": "runs", "keep_columns": ["id"]},
        "train": {"models": [NAME]},
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))
    return load_config(directory / "job.yaml")


@pytest.fixture(scope="module", params=["binary", "multiclass", "regression"])
def fitted(request, runtime, tmp_path_factory):
    """One run per task, the fit by one reduction per Newton pass (as on data too large for one task)."""
    task = request.param
    directory = tmp_path_factory.mktemp(f"linear-{task}")
    frame = table(task)
    (directory / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_csv(directory / "in" / f"part{i}.csv", index=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(linear_training, "ONE_TASK_BYTES", 0)
        result = run(job(directory, task), runtime=runtime)
    return SimpleNamespace(task=task, directory=directory, frame=frame, result=result, run_dir=result.run_dir)


def features(run_dir):
    """The ETL's feature matrix and what the reference needs of the run."""
    group = zarr.open_group(str(RunDir(run_dir).zarr), mode="r")
    x, y, valid = group["X"][:], group["y"][:].astype(np.float64), group["is_validation"][:]
    w = group["w"][:].astype(np.float64) if "w" in group else np.ones(len(y))
    pre = Preprocessor.from_json(RunDir(run_dir).preprocessor.read_text())
    return x, y, w, valid, pre


def one_hot(x, pre) -> np.ndarray:
    """Numerics as the ETL wrote them, every code of each categorical a column of its own."""
    columns = [x[:, : len(pre.numeric)].astype(np.float64)]
    for j, col in enumerate(pre.categorical):
        codes = x[:, len(pre.numeric) + j].astype(int)
        columns.append((codes[:, None] == np.arange(pre.cardinalities[col])[None, :]).astype(np.float64))
    return np.hstack(columns)


def reference(run_dir):
    """scikit-learn on the training rows with the family's objective,
    (1 / Σw) Σ w ℓ + (λ / 2) ‖β‖² (λ scaled by the target's variance for regression):
    LogisticRegression's C = 1 / (λ Σw), Ridge's alpha = λ s² Σw (its loss is twice ours)."""
    x, y, w, valid, pre = features(run_dir)
    design, train = one_hot(x, pre), ~valid
    total = w[train].sum()
    lam = linear_training.PENALTY
    if pre.task == "regression":
        model = Ridge(alpha=lam * pre.target_scale**2 * total, solver="cholesky")
        model.fit(design[train], y[train], sample_weight=w[train])
        return model, model.predict(design[valid]), np.concatenate([[model.intercept_], model.coef_])[:, None]
    model = LogisticRegression(C=1 / (lam * total), solver="newton-cholesky", tol=1e-12, max_iter=500)
    model.fit(design[train], y[train].astype(int), sample_weight=w[train])
    p = model.predict_proba(design[valid])
    coef = np.vstack([model.intercept_[None, :], model.coef_.T])
    if pre.task == "multiclass":
        coef[0] -= coef[0].mean()  # the intercepts are defined up to one number: both sides centred
        return model, p, coef
    return model, p[:, 1], coef


def evaluation_predictions(run_dir):
    """The family's validation predictions, partition by partition as the evaluation makes them."""
    x, _, _, valid, _ = features(run_dir)
    payload = trained_models.load_model(run_dir, NAME)
    return FAMILIES[NAME].predict(payload, x[valid], 1, {})


def test_the_distributed_fit_equals_scikit_learn(fitted):
    meta = json.loads(RunDir(fitted.run_dir).trained(f"{NAME}.json").read_text())
    assert meta["converged"] and not meta["one_task"]
    assert np.all(np.diff(meta["objective"]) <= 1e-12)  # damped Newton never goes up
    assert len(meta["objective"]) <= (3 if fitted.task == "regression" else 15)
    x, y, w, valid, pre = features(fitted.run_dir)
    assert meta["codes"] == [pre.cardinalities["city"]] == [FIRST_CODE + 4]
    assert meta["columns"][:5] == ["(intercept)", "x1", "x2", "x3", "city=(missing)"]
    _, expected, coef = reference(fitted.run_dir)
    ours = np.asarray(meta["coef"])
    assert ours.shape == coef.shape
    # Codes 0 (missing) and 1 (other) never occur: their coefficients are 0 on both sides.
    np.testing.assert_allclose(ours, coef, atol=1e-6 * max(1.0, np.abs(coef).max()))
    p = evaluation_predictions(fitted.run_dir)
    np.testing.assert_allclose(p, expected, rtol=1e-7, atol=1e-8)
    metrics = fitted.result.metrics[NAME]
    if fitted.task == "binary":
        assert metrics["logloss"] == pytest.approx(log_loss(y[valid], expected, sample_weight=w[valid]), rel=1e-6)
        assert metrics["auc"] == pytest.approx(roc_auc_score(y[valid], expected, sample_weight=w[valid]), abs=1e-3)
    elif fitted.task == "multiclass":
        assert metrics["logloss"] == pytest.approx(log_loss(y[valid], expected, labels=range(4)), rel=1e-6)
    else:  # the model learns log1p(y); metrics are in the target's units
        truth, value = np.expm1(y[valid]), np.expm1(expected)
        assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, value), rel=1e-6)
        assert metrics["r2"] == pytest.approx(r2_score(truth, value), abs=1e-6)
        assert metrics["r2"] > 0.5


def test_one_task_and_reductions_give_the_same_fit(fitted, runtime):
    if fitted.task != "multiclass":
        pytest.skip("one task is enough")
    data = load_training_data(runtime, RunDir(fitted.run_dir).stage(RunDir.ETL), seed=0)
    in_one = linear_training.fit_linear(runtime, data, name=NAME, in_one_task=True)
    by_reductions = linear_training.fit_linear(runtime, data, name=NAME, in_one_task=False)
    assert in_one["one_task"] and not by_reductions["one_task"]
    assert len(in_one["objective"]) == len(by_reductions["objective"])
    np.testing.assert_allclose(in_one["coef"], by_reductions["coef"], rtol=1e-9, atol=1e-12)


def new_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The input's rows without the target, with an unseen and a missing category."""
    rows = frame.drop(columns=["y", "w"], errors="ignore").copy()
    rows.loc[0:9, "city"] = "atlantis"
    rows.loc[10:19, "city"] = None
    return rows


def test_predict_load_model_and_onnx_agree_with_the_evaluation(fitted, runtime):
    frame, run_dir, directory = fitted.frame, fitted.run_dir, fitted.directory
    rows = new_rows(frame)
    model = load_model(run_dir, NAME)
    scored = model.predict(rows).astype({"id": "int64"}).set_index("id")
    # The validation rows, in the evaluation's order.
    etl_rows = pd.concat(
        pd.read_parquet(f, columns=["id", "_is_validation"]) for f in sorted(RunDir(run_dir).features.glob("*.parquet"))
    )
    etl_rows["id"] = etl_rows.id.astype(np.int64)  # kept as the CSV's text
    valid_ids = etl_rows.id[etl_rows._is_validation.to_numpy()].to_numpy()
    valid_ids = valid_ids[valid_ids >= 20]  # the rows changed above are not the run's
    x, _, _, valid, pre = features(run_dir)
    ids = etl_rows.id.to_numpy()[valid]
    expected = pd.DataFrame(np.asarray(evaluation_predictions(run_dir)).reshape(len(ids), -1), index=ids)
    if fitted.task == "multiclass":
        columns = [f"probability_{c}" for c in pre.classes]
        np.testing.assert_allclose(scored.loc[valid_ids, columns], expected.loc[valid_ids], rtol=1e-9, atol=1e-12)
    else:
        value = expected.loc[valid_ids, 0].to_numpy()
        value = np.expm1(value) if fitted.task == "regression" else value
        np.testing.assert_allclose(scored.loc[valid_ids, "prediction"], value, rtol=1e-9, atol=1e-12)
    # shardflow predict on the cluster: the same.
    rows.to_csv(directory / "new.csv", index=False)
    out = predict(run_dir, directory / "new.csv", directory / "scores", model=NAME, runtime=runtime, overwrite=True)
    batch = pd.read_parquet(out.output).astype({"id": "int64"}).set_index("id").loc[scored.index]
    pd.testing.assert_frame_equal(batch, scored, check_dtype=False, check_exact=False, rtol=1e-9, atol=1e-12)
    # The ONNX export: MatMul, Gather, Sigmoid/Softmax, checked by the export itself and here.
    exported = export(run_dir, directory / "onnx", model=NAME, overwrite=True)
    assert exported.metadata["check"]["max_abs_difference"] <= 1e-9
    ops = {node.op_type for node in onnx.load(str(exported.path / "model.onnx")).graph.node}
    assert {"MatMul", "Gather"} <= ops
    assert {"binary": "Sigmoid", "multiclass": "Softmax", "regression": "Exp"}[fitted.task] in ops
    theirs = load_exported(exported.path).predict(rows)
    theirs.index = rows.id
    for column in scored.columns:
        if scored[column].dtype.kind == "f":
            scale = max(1.0, float(scored[column].abs().max()))
            np.testing.assert_allclose(theirs[column], scored[column], rtol=1e-9, atol=1e-12 * scale)
        else:
            assert (theirs[column].to_numpy() == scored[column].to_numpy()).all(), column
    # Unseen and missing cities score as their own codes (other, missing), alike everywhere.
    assert scored.loc[0:19].notna().all().all()


def test_the_report_shows_the_newton_fit(fitted):
    if fitted.task != "binary":
        pytest.skip("one task is enough")
    page = RunDir(fitted.run_dir).report.read_text()
    assert f"{FAMILIES[NAME].label}: its damped Newton fit" in page and "largest coefficients" in page


# ----------------------------------------------------------------------------- without a cluster


def test_it_is_a_default_family_and_the_baseline_row():
    assert NAME in default_families() and family_names()[0] == NAME
    assert FAMILIES[NAME].kind == "global" and not FAMILIES[NAME].assumes_exchangeable_partitions


def test_wide_categoricals_are_narrowed_and_too_many_coefficients_refused():
    def pre(task, numeric, cardinalities, classes=()):
        return SimpleNamespace(
            task=task,
            classes=list(classes),
            numeric=[f"n{i}" for i in range(numeric)],
            categorical=[f"c{i}" for i in range(len(cardinalities))],
            cardinalities={f"c{i}": c for i, c in enumerate(cardinalities)},
        )

    assert LinearLayout.of(pre("regression", 3, [5, 500])).codes == (5, MAX_CODES)
    narrowed = LinearLayout.of(pre("multiclass", 10, [300, 300, 4], classes="abcdefghijklmnop"))
    assert narrowed.width * 16 <= MAX_COEFFICIENTS and narrowed.codes[2] == 4 and narrowed.codes[0] < MAX_CODES
    with pytest.raises(ValueError, match=r"more than the \d+ coefficients"):
        LinearLayout.of(pre("multiclass", 400, [4], classes="abcdefgh"))


def test_multinomial_terms_are_the_gradient_and_hessian_of_its_loss():
    rng = np.random.default_rng(0)
    layout = LinearLayout("multiclass", numeric=2, codes=(3,), outputs=3)
    x = np.column_stack([rng.normal(size=(50, 2)), rng.integers(0, 3, 50)])
    y, w = rng.integers(0, 3, 50), rng.uniform(0.5, 2, 50)
    design, theta = layout.design(x), rng.normal(size=layout.size) * 0.3
    terms = multinomial_terms(design, y, w, layout.full(theta))
    step = 1e-6
    for i in range(layout.size):
        e = np.eye(layout.size)[i] * step
        up = multinomial_terms(design, y, w, layout.full(theta + e))
        down = multinomial_terms(design, y, w, layout.full(theta - e))
        assert (up["loss"] - down["loss"]) / (2 * step) == pytest.approx(terms["grad"][i], rel=1e-5, abs=1e-7)
        np.testing.assert_allclose((up["grad"] - down["grad"]) / (2 * step), terms["hess"][i], rtol=1e-5, atol=1e-7)
