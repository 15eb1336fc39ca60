"""The ONNX export joins inside its graph: a serving process sends raw fact rows only.

A sales table joined with a product table (an integer key, a price, a text category, a
launch date) and a store table (a key of two text columns): derived features that mix fact
and dimension columns are compiled into the graph, those of one dimension table computed per
dimension row, and the export scores raw fact rows (unmatched, missing and malformed keys
included) as shardflow's own model does. The expressions' ONNX form is checked against the
ETL's own evaluation on rows with missing values, zeros and text.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.job import run
from shardflow.pipelines.serving.export import export
from shardflow.pipelines.serving.model import load_model
from shardflow.pipelines.serving.predict import predict
from shardflow.pipelines.setup.config import load_config
from shardflow.tasks.exported import load_exported
from shardflow.tasks.expressions import evaluate, parse_expression
from shardflow.tasks.onnx_graph import Graph
from shardflow.tasks.onnx_inputs import NotCompiled, compile_expression
from shardflow.tasks.prepare import as_float

DERIVED = {
    "list_price": "quantity * base_price",
    "net_price": "quantity * base_price * (1 - discount) if category == 'toys' else quantity * base_price",
    "premium": "base_price > 40",  # one dimension table's columns: computed per product
    "crowding": "(quantity * size_sqm) // 7 % 5",
    "unknown_price": "isnull(base_price) or discount >= 0.3",
}


def sales(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "order_id": np.arange(n) + seed * 1_000_000,
            "product_id": rng.integers(1, 45, n),  # products 41..44 are not in the product table
            "store": rng.choice(["s1", "s2", "s3"], n),
            "country": rng.choice(["fr", "de"], n),
            "quantity": rng.integers(1, 9, n).astype(float),
            "discount": rng.choice([0.0, 0.1, 0.3, 0.5], n),
            "day": (pd.Timestamp("2025-03-01") + pd.to_timedelta(rng.integers(0, 40, n), unit="D")).strftime(
                "%Y-%m-%d"
            ),
        }
    )
    price = 5.0 + (frame.product_id % 40) * 1.7
    frame["revenue"] = (frame.quantity * price * (1 - frame.discount) + rng.normal(0, 2, n)).round(2)
    return frame


def write_tables(directory) -> None:
    products = pd.DataFrame({"product_id": np.arange(1, 41)})
    products["base_price"] = 5.0 + (products.product_id % 40) * 1.7
    products.loc[products.product_id == 7, "base_price"] = np.nan
    products["category"] = np.where(
        products.product_id % 3 == 0, "toys", np.where(products.product_id % 3, "food", None)
    )
    products["launched"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(products.product_id * 9, unit="D")
    products.to_csv(directory / "products.csv", index=False)
    stores = pd.DataFrame(
        {
            "store": ["s1", "s1", "s2", "s3"],
            "country": ["fr", "de", "fr", "de"],
            "region": ["north", "east", "south", "east"],
            "size_sqm": [120.0, 400.0, 90.0, 250.0],
        }
    )
    stores.to_parquet(directory / "stores.parquet", index=False)
    days = pd.date_range("2025-03-01", periods=30, freq="D", tz="UTC")  # days 31..40 are not in it
    pd.DataFrame({"day": days.strftime("%Y-%m-%dT%H:%M:%SZ"), "holiday": (days.day_of_week >= 5).astype(float)}).to_csv(
        directory / "calendar.csv", index=False
    )


@pytest.fixture(scope="module")
def joined_run(runtime, tmp_path_factory):
    directory = tmp_path_factory.mktemp("export-joins")
    write_tables(directory)
    sales(4000, seed=0).to_csv(directory / "sales.csv", index=False)
    job = {
        "input": {"path": "sales.csv"},
        "joins": [
            {"path": "products.csv", "on": ["product_id"], "min_match_rate": 0.5},
            {"path": "stores.parquet", "on": ["store", "country"], "min_match_rate": 0.5},
            {"path": "calendar.csv", "on": ["day"], "min_match_rate": 0.5},  # datetime keys: ISO text
        ],
        "target": {"column": "revenue", "task": "regression"},
        "features": {
            "numeric": ["quantity", "discount", "base_price", "size_sqm", "holiday"],
            "categorical": ["category", "region", "store", "product_id"],  # product_id: also an integer key
            "datetime": ["launched"],
            "datetime_parts": ["month", "dayofweek"],
            "derived": DERIVED,
        },
        "split": {"key": ["order_id"]},
        "encode": {"min_frequency": 1},
        "output": {"runs_dir": "runs"},
        "train": {"models": ["xgboost", "linear"], "xgboost": {"num_boost_round": 40}},
    }
    (directory / "job.yaml").write_text(yaml.safe_dump(job))
    result = run(load_config(directory / "job.yaml"), runtime=runtime)
    return directory, result.run_dir


def new_sales() -> pd.DataFrame:
    """Fact rows only: unmatched products, a missing key, a key given as text with a '.0'."""
    frame = sales(300, seed=5).drop(columns=["revenue"])
    frame["product_id"] = frame.product_id.astype(str).astype(object)  # as a service receives it: text
    frame.loc[0:4, "product_id"] = None
    frame.loc[5:9, "product_id"] = "12.0"
    frame.loc[10:14, "store"] = "s9"  # no such store
    frame.loc[15:19, "quantity"] = np.nan
    frame.loc[20:24, "day"] = "2025-03-02T00:00:00+00:00"  # the same instant, spelled otherwise
    return frame


@pytest.mark.parametrize("model", ["xgboost", "linear"])
def test_the_export_joins_its_dimension_tables_and_scores_fact_rows(joined_run, model, tmp_path):
    directory, run_dir = joined_run
    exported = export(run_dir, tmp_path / model, model=model)
    metadata = json.loads((exported.path / "metadata.json").read_text())
    inputs = {i["name"]: i for i in metadata["inputs"]}
    # Only the fact table's columns: no joined attribute, no derived feature.
    assert set(inputs) == {"quantity", "discount", "store", "country", "product_id", "product_id:int64", "day"}
    assert inputs["day"]["key"] == "datetime" and inputs["day"]["type"] == "int64"
    # A category (text) and an integer key: one column, two inputs.
    assert inputs["product_id"]["type"] == "string" and "key" not in inputs["product_id"]
    key = {"name": "product_id:int64", "type": "int64", "key": "integer", "column": "product_id"}
    assert inputs["product_id:int64"] == key
    assert inputs["store"]["type"] == "string" and inputs["store"]["key"] == "string"
    assert [j["in_graph"] for j in metadata["joins"]] == [True, True, True]
    assert [j["rows"] for j in metadata["joins"]] == [40, 4, 30]
    assert exported.metadata["check"]["max_abs_difference"] <= 1e-6

    rows = new_sales()
    ours = load_model(run_dir, model).predict(rows)
    theirs = load_exported(exported.path).predict(rows)
    scale = float(np.abs(ours["prediction"]).max())  # ONNX Runtime sums the trees in float32
    np.testing.assert_allclose(theirs["prediction"], ours["prediction"], rtol=0, atol=1e-5 * scale)
    # The rows a join misses are scored as the ETL scores them (not as missing rows).
    assert np.isfinite(theirs["prediction"]).all()


def test_predict_with_the_onnxruntime_engine_joins_in_the_graph(joined_run, runtime, tmp_path):
    """``predict --engine onnxruntime`` on the cluster: the graph reads each partition's fact
    columns (keys included) and scores as the default engine does."""
    directory, run_dir = joined_run
    new_sales().to_csv(tmp_path / "new.csv", index=False)
    outputs = [
        pd.read_parquet(
            predict(
                run_dir, tmp_path / "new.csv", tmp_path / engine, model="linear", engine=engine, runtime=runtime
            ).output
        )
        for engine in ("shardflow", "onnxruntime")
    ]
    assert len(outputs[0]) == len(outputs[1]) == 300
    np.testing.assert_allclose(outputs[1]["prediction"], outputs[0]["prediction"], rtol=1e-6)


def test_expressions_compile_to_the_values_the_etl_computes():
    rng = np.random.default_rng(0)
    n = 300
    a = rng.normal(size=n) * 10
    a[::7], a[3], a[5] = np.nan, 0.0, -0.0
    b = rng.integers(-3, 4, n).astype(float)
    b[::11] = np.nan
    t = rng.choice(np.array(["x", "y", "zz"], dtype=object), n)
    t[::9] = None
    frame = pd.DataFrame({"a": a, "b": b, "t": t})
    kinds = {"a": "number", "b": "number", "t": "text"}
    compiled = [
        "a + b - 2",
        "a / b",
        "a // b",
        "a % b",
        "-a % 3",
        "b ** 2",
        "abs(a) + sqrt(a) + log(abs(a))",
        "log1p(abs(a)) + log10(abs(a) + 1)",
        "floor(a) + ceil(a)",
        "clip(a, -3, 5)",
        "clip(a, None, 2)",
        "where(a > 0, a, b)",
        "a if t == 'x' else b",
        "isnull(a) * 2 + notnull(t)",
        "fillna(a, 7) + fillna(b, a)",
        "t in ['x', 'zz']",
        "t not in ['x']",
        "b in [1, 2]",
        "(a > 1) & (b < 2)",
        "a > 1 or b",
        "not a",
        "not t",
        "(a > 1) * 3 + b",
        "a != b",
        "t != 'y'",
        "1 < a <= 5",
        "a * 1e300 * 1e10",  # past float32: missing, as the ETL stores it
    ]
    for text in compiled:
        expression = parse_expression(text)
        with np.errstate(all="ignore"):  # the logarithm of 0, the root of a negative number
            expected = as_float(evaluate(expression, frame)).to_numpy()
            expected = np.where(np.abs(expected) <= np.finfo(np.float32).max, expected, np.nan)
        np.testing.assert_allclose(_run_compiled(expression, frame, kinds), expected, rtol=1e-12, err_msg=text)
    refused = [
        ("t < 'y'", "text ordered"),
        ("t * 2", "arithmetic on text"),
        ("t == ''", "empty string"),
        ("isnull(a) + isnull(b)", "two booleans"),  # NumPy adds booleans as 'or'
    ]
    for text, why in refused:
        with pytest.raises(NotCompiled, match=why):
            _run_compiled(parse_expression(text), frame, kinds)


def _run_compiled(expression, frame: pd.DataFrame, kinds: dict) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = Graph()

    def column(name):
        return g.input(name, "double" if kinds[name] == "number" else "string"), kinds[name]

    out = compile_expression(g, expression.tree, column)
    g.nodes.append(helper.make_node("Identity", [out], ["y"]))
    g.outputs.append(helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N"]))
    session = ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {
        i.name: frame[i.name].fillna("").to_numpy(dtype=object)
        if i.type == "tensor(string)"
        else frame[i.name].to_numpy(dtype=np.float64)
        for i in session.get_inputs()
    }
    return session.run(None, feeds)[0]
