"""The run report people share: what its page says of a binary, a multi-class and a regression
run, in which formats, and that Chromium draws it.

The page is parsed (not grepped) and compared with the run's own files (metrics, records,
summary); the precision-recall, calibration and residual-quantile figures the report derives
from the evaluation's sums are compared with scikit-learn and NumPy on the same predictions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml

from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.report import build_report
from shardflow.pipelines.job import run
from shardflow.pipelines.setup.config import load_config
from shardflow.tasks.metrics import best_model

FAST = {
    "xgboost": {"num_boost_round": 40},
    "partitions": {"xgboost_rounds": 20, "mlp_epochs": 2},
    "mlp": {"epochs": 3, "batch_size": 256, "sync_every": 8},
}
INTEGER = re.compile(r"^\d{1,3}(,\d{3})*$")


def table(n=4000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["north", "south", "east"], n)
    score = x1 + 0.6 * x2 + 0.8 * (city == "north") + rng.normal(scale=0.3, size=n)
    plan = np.select([score < -0.8, score < 0.3, score < 1.2], ["basic", "plus", "pro"], "enterprise")
    churned = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-(1.5 * x1 - x2 - 1.0))), "yes", "no")
    area, rooms = rng.uniform(30, 250, n), rng.integers(1, 7, n)
    price = np.exp(7.0 + 0.012 * area + 0.08 * rooms + rng.normal(scale=0.15, size=n))
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x1": x1.round(4),
            "x2": x2.round(4),
            "city": city,
            "plan": plan,
            "churned": churned,
            "area": area.round(1),
            "rooms": rooms,
            "price": price.round(2),
        }
    )


JOBS = {
    "binary": ({"column": "churned"}, ["x1", "x2"]),
    "multiclass": ({"column": "plan", "task": "classification"}, ["x1", "x2"]),
    "regression": ({"column": "price", "task": "regression", "transform": "log1p"}, ["area", "rooms"]),
}


@pytest.fixture(scope="module")
def runs(runtime, tmp_path_factory):
    """``{name: (run directory, table)}`` of the three jobs, every family trained."""
    directory = tmp_path_factory.mktemp("report")
    frame = table()
    (directory / "in").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_csv(directory / "in" / f"part{i}.csv", index=False)
    out = {}
    for name, (target, numeric) in JOBS.items():
        home = directory / name
        home.mkdir()
        config = {
            "input": {"path": str(directory / "in" / "*.csv")},
            "target": target,
            "features": {"numeric": numeric, "categorical": ["city"]},
            "split": {"key": ["id"]},
            "encode": {"min_frequency": 1},
            "train": {
                **FAST,
                "models": list(FAMILIES),
                "groups": {"partition_by": ["city"], "min_rows": 50, "xgboost_rounds": 20},
            },
            "output": {"runs_dir": "runs"},
        }
        (home / "job.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        out[name] = (run(load_config(home / "job.yaml"), runtime=runtime).run_dir, frame)
    return out


class Page(HTMLParser):
    """The pieces of a report page the tests read: title, header cards, tables (under their
    ``<h3>``/``<h2>``), figures' captions."""

    def __init__(self, text: str):
        super().__init__()
        self.h1, self.cards, self.tables, self.captions, self.images = "", {}, [], [], 0
        self._stack, self._text, self._heading, self._card, self._row, self._table = [], [], "", None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        css = attrs.get("class", "")
        self._stack.append((tag, css))
        if tag in ("td", "th", "h1", "h2", "h3", "figcaption", "div"):
            self._text = []
        if tag == "img":
            self.images += 1
            self._stack.pop()
        elif tag == "div" and css == "fact":
            self._card = {}
        elif tag == "table":
            self._table = {"heading": self._heading, "kv": css == "kv", "header": [], "rows": []}
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, css = self._stack.pop()
            if open_tag == tag:
                break
        text = "".join(self._text).strip()
        if tag == "h1":
            self.h1 = text
        elif tag in ("h2", "h3"):
            self._heading = text
        elif tag == "div" and self._card is not None and css in ("k", "v", "n"):
            self._card[css] = text
            if css in ("v", "n") and "k" in self._card:
                self.cards[self._card["k"]] = self._card
        elif tag == "div" and css == "fact":
            self._card = None
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(text)
        elif tag == "tr" and self._table is not None:
            first_row = not self._table["header"] and not self._table["rows"] and not self._table["kv"]
            (self._table["header"] if first_row else self._table["rows"]).append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self._table["header"] = self._table["header"][0] if self._table["header"] else []
            self.tables.append(self._table)
            self._table = None
        elif tag == "figcaption":
            self.captions.append(text)

    def handle_data(self, data):
        self._text.append(data)

    def table(self, heading: str | None = None, first_header: str | None = None) -> dict:
        for t in self.tables:
            if (heading is None or t["heading"] == heading) and (
                first_header is None or t["header"][:1] == [first_header]
            ):
                return t
        raise AssertionError(
            f"no table under {heading!r} starting {first_header!r}: {[t['heading'] for t in self.tables]}"
        )

    def column(self, t: dict, name: str) -> list:
        i = t["header"].index(name)
        return [row[i] for row in t["rows"]]

    def kv(self, heading: str) -> dict:
        return {k: v for t in self.tables if t["heading"] == heading and t["kv"] for k, v in t["rows"]}


def read(run_dir):
    text = build_report(run_dir).read_text()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    return text, Page(text), metrics


def common_checks(text, page, metrics, run_dir, frame):
    """What every kind of run's page holds, in the formats of its quantities."""
    assert "<th></th>" not in text  # no empty header rows
    # The header: rows as a count, the best model and its metric.
    assert page.cards["rows"]["v"] == f"{len(frame):,}"
    best = best_model(metrics["metrics"], metrics["task"])
    assert page.cards["best model"]["v"].startswith(label(best) + ":")
    # Comparison table: one row per model, train seconds to a tenth.
    comparison = page.table("Model comparison (validation split)")
    assert page.column(comparison, "model") == [label(n) for n in metrics["metrics"]]
    assert all(re.fullmatch(r"\d+\.\d|<0\.1", s) for s in page.column(comparison, "train seconds"))
    # Per-partition models: counts as integers, one row per group of partitions (not the family repeated).
    members = page.table("Per-partition models on their own validation rows")
    assert len(members["rows"]) == 3
    assert all(INTEGER.match(c) for c in page.column(members, "train rows") + page.column(members, "validation rows"))
    # Timings: every stage's total, to a tenth of a second.
    timings = page.table("Timings")
    assert [r[0] for r in timings["rows"] if r[0] in ("etl", "train", "evaluate", "whole run")] == [
        "etl",
        "train",
        "evaluate",
        "whole run",
    ]
    assert all(re.fullmatch(r"[\d,]+\.\d|<0\.1", s) for s in page.column(timings, "seconds"))
    # Cluster: humanised memory limits, no empty resources, no raw byte counts.
    cluster = page.kv("Cluster")
    assert re.fullmatch(r"[\d.]+ [KMG]iB", cluster["memory limit per worker"]), cluster
    assert "resources" not in cluster and "2000000000" not in text
    # Hyperparameters: the effective XGBoost parameters and the MLP's architecture from their records.
    record = json.loads((run_dir / "train" / "xgboost.json").read_text())["params"]
    xgb = page.kv(label("xgboost"))
    assert xgb["objective"] == record["objective"] and xgb["max_depth"] == str(record["max_depth"])
    assert xgb["eta"] == "0.1" and xgb["eval_metric"] == ", ".join(record["eval_metric"])
    assert page.kv(label("mlp"))["hidden"] == "128, 64"
    assert page.images >= 10
    return comparison


def test_binary_report(runs):
    run_dir, frame = runs["binary"]
    text, page, metrics = read(run_dir)
    comparison = common_checks(text, page, metrics, run_dir, frame)
    assert page.h1.startswith("churned") and "binary" in page.h1 and "'yes'" in page.h1
    rate = (frame.churned == "yes").mean()
    assert page.cards["class balance"]["v"] == f"{100 * rate:.1f}% 'yes'"
    assert page.cards["target"]["n"] == "classes: no, yes"
    assert page.column(comparison, "AUC") == [f"{m['auc']:.4f}" for m in metrics["metrics"].values()]
    assert any(c.startswith("Precision against recall") for c in page.captions)
    assert any(c.startswith("Share of positives against the mean predicted probability") for c in page.captions)
    # Training and validation curves together, so over-fitting shows.
    assert any(
        c.startswith(f"{label('xgboost')}: metrics per boosting round") and "train split dashed" in c
        for c in page.captions
    )


def test_multiclass_report(runs):
    run_dir, frame = runs["multiclass"]
    text, page, metrics = read(run_dir)
    common_checks(text, page, metrics, run_dir, frame)
    assert page.h1.startswith("plan") and "4 classes" in page.h1
    counts = frame.plan.value_counts()
    assert page.cards["class balance"]["n"] == "rows: " + " · ".join(
        f"{c} {counts[c]:,}" for c in ["basic", "enterprise", "plus", "pro"]
    )
    best = best_model(metrics["metrics"], metrics["task"])
    per_class = page.table(f"Per class: {label(best)}")
    support = page.column(per_class, "support (rows)")
    assert all(INTEGER.match(s) for s in support)  # not 48.0000
    assert [int(s.replace(",", "")) for s in support] == [
        round(v) for v in metrics["metrics"][best]["per_class"]["support"]
    ]
    xgb = page.kv(label("xgboost"))
    assert xgb["objective"] == "multi:softprob" and xgb["num_class"] == "4"


def test_regression_report(runs):
    run_dir, frame = runs["regression"]
    text, page, metrics = read(run_dir)
    comparison = common_checks(text, page, metrics, run_dir, frame)
    assert page.h1.startswith("price") and "trained on log(1 + price)" in page.h1
    # RMSE in the target's units: whole numbers (its std is in the thousands), one format down the column.
    rmse = page.column(comparison, "RMSE (price)")
    assert all(INTEGER.match(v) for v in rmse), rmse
    assert rmse == [f"{m['rmse']:,.0f}" for m in metrics["metrics"].values()]
    assert page.column(comparison, "R²") == [f"{m['r2']:.4f}" for m in metrics["metrics"].values()]
    quantiles = page.table(first_header="model", heading="Quality on the validation split")
    assert quantiles["header"][1] == "median residual (price)"
    assert page.cards["price (kept rows)"]["v"] == f"mean {frame.price.mean():,.0f}"
    assert any("Residuals of the best model" in c for c in page.captions)
    assert any("RMSE of log(1 + price)" in c for c in page.captions)  # the MLP's loss, on the scale it trained
    # What the models rely on: a permutation's RMSE drop in price like the RMSE itself (not 10108.5644),
    # TreeSHAP contributions on the log scale the trees predict, to four places.
    relied = page.table("What the models rely on", first_header="feature")
    explained = json.loads((run_dir / "evaluate" / "explanations.json").read_text())
    for name, found in explained.items():
        kind = "metric drop" if found["kind"] == "permutation" else "|contribution|"
        cells = page.column(relied, f"{label(name)} ({kind})")
        values = found["importance"] if found["kind"] == "permutation" else found["mean_abs"]
        expected = [values[feature] for feature in page.column(relied, "feature")]
        if found["kind"] == "permutation":
            assert cells == [f"{v:,.0f}" for v in expected], (name, cells)
        else:
            assert cells == [f"{v:.4f}" for v in expected], (name, cells)


# ----------------------------------------------------------------------------- the figures derived from the sums


def test_precision_recall_and_calibration_from_the_roc_points_match_scikit_learn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score

    from shardflow.pipelines.interface.report_quality import calibration, precision_recall
    from shardflow.tasks.metrics import curves, finish_metrics, partial_metrics

    rng = np.random.default_rng(3)
    p = rng.beta(2, 3, 20_000)
    y = (rng.uniform(size=p.size) < np.clip(p * 1.2, 0, 1)).astype(float)  # under-confident: calibration bends
    kind = "classification"
    total = partial_metrics(y, p, kind)
    rate = finish_metrics(total, kind)["positive_rate"]
    roc = curves(total, kind)
    _, _, ap = precision_recall(roc["fpr"], roc["tpr"], rate)
    assert ap == pytest.approx(average_precision_score(y, p), abs=0.01)
    mean, positives, rows = calibration(roc["fpr"], roc["tpr"], rate)
    true, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = rows > 0
    np.testing.assert_allclose(positives[filled], true, atol=0.02)
    np.testing.assert_allclose(mean[filled], predicted, atol=0.01)
    assert rows.sum() == pytest.approx(1.0)


def test_residual_quantiles_from_the_histogram_are_within_one_bin():
    from shardflow.pipelines.interface.report_regression import histogram_quantile
    from shardflow.tasks.metric_sums import Scoring
    from shardflow.tasks.metrics import curves, partial_metrics

    rng = np.random.default_rng(4)
    y = rng.lognormal(8, 0.6, 30_000)
    p = y + rng.normal(0, 0.1 * y.std(), y.size)
    scoring = Scoring("regression", residual_range=4 * y.std(), value_range=(y.min(), y.max()))
    c = curves(partial_metrics(y, p, scoring), scoring)
    width = c["residual_edges"][1] - c["residual_edges"][0]
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert abs(histogram_quantile(c["residual_edges"], c["residual_counts"], q) - np.quantile(p - y, q)) <= width


# ----------------------------------------------------------------------------- drawn by a browser


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium): page not drawn")
@pytest.mark.parametrize("name", list(JOBS))
def test_chromium_draws_the_page(runs, name, tmp_path):
    from PIL import Image

    page = build_report(runs[name][0])
    png = tmp_path / f"{name}.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={png}",
            "--window-size=1280,4000",
            page.resolve().as_uri(),
        ],
        check=True,
        timeout=180,
        capture_output=True,
    )
    assert png.exists() and png.stat().st_size > 10_000
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (4000, 1280)
    colours = np.unique(image.reshape(-1, 3)[::97], axis=0)
    assert len(colours) > 20  # text, tables and figures, not a blank page
    # The top of the page (the header's title and cards) is drawn, not white.
    assert (image[:400] < 200).any()
