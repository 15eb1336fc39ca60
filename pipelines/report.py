"""The run report (``report.html``, readable offline) and the list of past runs.

Everything comes from the files a run already wrote (manifest, config, stage summaries,
model metadata, evaluation); the report can be rebuilt at any time with
``shardflow report RUN``. Plots are PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import threading
from pathlib import Path

from shardflow.pipelines.families import FAMILIES, label
from shardflow.pipelines.figures import subplots
from shardflow.pipelines.plan import format_plan
from shardflow.pipelines.rundir import ManifestError, RunDir, read_manifest, write_text_atomic
from shardflow.tasks.metrics import best_model, primary_metric
from shardflow.tasks.storage import location
from shardflow.tasks.targets import TASK_TYPES, target_kind

logger = logging.getLogger("shardflow.report")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}img{max-width:100%}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}.muted{color:#777}
"""


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="{src}"><figcaption class="muted">{html.escape(alt)}'
        "</figcaption></figure>"
    )


def _table(rows: list, header: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


class ReportDrawing:
    """:func:`build_report` in a background thread, so that a job's last steps (closing the
    cluster, printing the results) do not wait for the drawing; :meth:`result` waits for it
    and raises what it raised.

    Examples
    --------
    >>> drawing = ReportDrawing("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> drawing.result()  # doctest: +SKIP
    PosixPath('shardflow-work/runs/20261122-101500-ab12cd/report.html')
    """

    def __init__(self, run_dir):
        self._path = self._error = None
        self._thread = threading.Thread(target=self._draw, args=(run_dir,), name="shardflow-report", daemon=True)
        self._thread.start()

    def _draw(self, run_dir) -> None:
        try:
            self._path = build_report(run_dir)
        except BaseException as err:
            self._error = err

    def result(self) -> Path:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._path


def build_report(run_dir) -> Path:
    """Write ``run_dir/report.html`` from the run's files and return its path.

    Examples
    --------
    >>> build_report("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    """
    run_dir = location(run_dir)
    manifest = read_manifest(run_dir)
    if not manifest:
        from shardflow.tasks.errors import ShardflowError

        raise ShardflowError(f"{run_dir}: not a run directory (no manifest.json)")
    run = RunDir(run_dir)
    summary = _load(run.summary) or {}
    evaluation = _load(run.metrics) or {}
    seconds = _load(run.trained("seconds")) or {}
    task = evaluation.get("task", TASK_TYPES[0])
    parts = [
        f"<h1>shardflow run {html.escape(run_dir.name)}</h1>",
        f"<p class='muted'>stages: {', '.join(manifest.get('stages', {})) or 'none'}</p>",
    ]

    # Dataset.
    parts.append("<h2>Dataset</h2>")
    inp = manifest.get("input", {})
    parts.append(
        _table(
            [
                ["input", inp.get("path", "")],
                ["format", inp.get("format", "")],
                ["files", inp.get("files", "")],
                ["fingerprint", inp.get("fingerprint", "")],
                ["rows (kept)", summary.get("rows", "")],
                ["validation rows", summary.get("validation_rows", "")],
                ["quarantined rows", summary.get("quarantined_rows", "")],
                ["partitions", summary.get("partitions", "")],
            ],
            ["", ""],
        )
    )
    if summary.get("quarantined"):
        parts.append(
            "<h3>Quarantined rows by reason</h3>"
            + _table(sorted(summary["quarantined"].items(), key=lambda kv: -kv[1]), ["reason", "rows"])
        )
    if summary.get("joins"):
        parts.append(
            "<h3>Joins</h3>"
            + _table(
                [
                    [name, j.get("path", ""), j["rows"], j["matched"], f"{100 * j['match_rate']:.1f}%"]
                    for name, j in summary["joins"].items()
                ],
                ["join", "dimension table", "input rows", "matched", "match rate"],
            )
        )
    plan = manifest.get("plan")
    if plan:
        parts.append("<h3>Plan</h3><pre>" + html.escape(format_plan(plan)) + "</pre>")
    if summary.get("partition_rows"):
        fig, ax = subplots(figsize=(7, 2.8))
        ax.bar(range(len(summary["partition_rows"])), summary["partition_rows"], color="#4878a8")
        ax.set_xlabel("partition")
        ax.set_ylabel("rows")
        ax.set_title("Partition sizes")
        parts.append(_img(_figure_png(fig), "Rows per partition (skew shows here)"))
    parts.append(_partition_differences(summary))

    # Stage timings.
    parts.append("<h2>Stage timings</h2>")
    timing_rows = [[f"etl: {k}", v] for k, v in summary.get("timings", {}).items()]
    timing_rows += [[f"train: {label(k)}", v] for k, v in seconds.items()]
    for stage, info in manifest.get("stages", {}).items():
        if "seconds" in info and not isinstance(info["seconds"], dict):
            timing_rows.append([f"stage {stage} (total)", info["seconds"]])
    parts.append(_table(timing_rows, ["step", "seconds"]))

    # Models.
    metrics = evaluation.get("metrics", {})
    if metrics:
        parts.append("<h2>Model comparison (validation split)</h2>")
        cols = list(target_kind(task).columns)
        parts.append(
            _table(
                [
                    [label(n), *[m.get(c, float("nan")) for c in cols], seconds.get(n, float("nan"))]
                    for n, m in metrics.items()
                ],
                ["model", *cols, "train seconds"],
            )
        )
        parts.append(_quality_plots(evaluation, task))
    parts.append(_training_curves(run_dir))
    if evaluation.get("partition_metrics"):
        parts.append(_partition_plots(evaluation, task))

    # Cluster and configuration.
    parts.append("<h2>Cluster</h2>")
    cluster = manifest.get("cluster", {})
    parts.append(
        _table([[k, json.dumps(v) if isinstance(v, (list, dict)) else v] for k, v in cluster.items()], ["", ""])
    )
    if evaluation.get("peak_memory"):
        from dask.utils import format_bytes

        parts.append(
            "<h3>Peak worker memory (training)</h3>"
            + _table([[w, format_bytes(int(v))] for w, v in evaluation["peak_memory"].items()], ["worker", "peak RSS"])
        )
    parts.append(
        "<h3>Library versions</h3>" + _table(list(manifest.get("versions", {}).items()), ["library", "version"])
    )
    if run.performance_report.exists():
        parts.append(f"<p><a href='{run.relative(run.performance_report)}'>Dask performance report</a></p>")
    config = run.config.read_text() if run.config.exists() else ""
    parts.append("<h2>Configuration</h2><pre>" + html.escape(config) + "</pre>")

    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>shardflow run "
        + html.escape(run_dir.name)
        + f"</title><style>{_CSS}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>"
    )
    out = run.report
    write_text_atomic(out, page)
    return out


def _partition_differences(summary: dict) -> str:
    """The partitions' target mean (classification: the last class's share) against the
    table's, and the largest gaps in the features' means, in standard deviations."""
    differences = summary.get("partition_differences")
    if not differences or len(differences["partitions"]) < 2:
        return ""
    entries = differences["partitions"]
    classes = list(summary.get("classes") or [])
    if "class_shares" in entries[0]:
        values = [e["class_shares"][-1] if e["rows"] else float("nan") for e in entries]
        what = f"share of class {classes[-1]!r}" if classes else "share of the last class"
    else:
        values = [e["target_mean"] if e["target_mean"] is not None else float("nan") for e in entries]
        what = "target mean"
    fig, ax = subplots(figsize=(7, 2.8))
    ax.bar(range(len(values)), values, color="#b07aa1")
    overall = summary.get("target_mean") if what == "target mean" else None
    if overall is not None:
        ax.axhline(overall, color="k", ls=":", lw=0.8)
    ax.set_xlabel("partition")
    ax.set_ylabel(what)
    ax.set_title("How different the partitions are")
    gaps = sorted(differences["numeric_gap"].items(), key=lambda kv: -kv[1])[:8]
    table = _table(
        [["target", differences["target_gap"]], *[[f"feature {k}", v] for k, v in gaps]],
        ["largest |partition mean − table mean| / table std", ""],
    )
    return (
        _img(
            _figure_png(fig),
            f"{what} per partition: per-partition models assume partitions alike "
            "(the ETL shuffles the rows when it trains them)",
        )
        + table
    )


def _quality_plots(evaluation, task) -> str:
    curves = evaluation.get("curves", {})
    if not curves:
        return ""
    fig, ax = subplots(figsize=(6, 4.5))
    if target_kind(task).curve == "roc":
        for name, c in curves.items():
            ax.plot(c["fpr"], c["tpr"], label=f"{label(name)} (AUC {evaluation['metrics'][name]['auc']:.4f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC on the validation split")
        caption = "ROC curves of every model"
    elif target_kind(task).curve == "confusion":
        return "<h2>Quality</h2>" + _class_report(evaluation)
    else:
        for name, c in curves.items():
            edges = c["residual_edges"]
            centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
            ax.plot(centers, c["residual_counts"], label=label(name))
        ax.set_xlabel("residual (prediction − target)")
        ax.set_ylabel("rows (weighted)")
        ax.set_title("Residuals on the validation split")
        caption = "Residual distributions of every model"
        ax.legend(fontsize=8)
        return "<h2>Quality</h2>" + _img(_figure_png(fig), caption) + _regression_grids(evaluation, task)
    ax.legend(fontsize=8)
    return "<h2>Quality</h2>" + _img(_figure_png(fig), caption)


def _regression_grids(evaluation, task) -> str:
    """Predicted against actual, and residuals against predictions, of the best model
    (2-D histograms reduced on the cluster: no prediction left its worker)."""
    import numpy as np

    name = best_model(evaluation["metrics"], task)
    c = evaluation["curves"][name]
    if "actual_predicted" not in c:
        return ""
    low, high = c["value_range"]
    r = c["residual_range"]
    fig, (left, right) = subplots(figsize=(10, 4.2), ncols=2)
    grid = np.asarray(c["actual_predicted"], dtype=float)  # [actual bin, predicted bin]
    left.imshow(np.log1p(grid), origin="lower", extent=(low, high, low, high), aspect="auto", cmap="Blues")
    left.plot([low, high], [low, high], "k:", lw=0.8)
    left.set_xlabel("predicted")
    left.set_ylabel("actual")
    left.set_title(f"Predicted vs actual, {label(name)}")
    grid = np.asarray(c["predicted_residual"], dtype=float)  # [predicted bin, residual bin]
    right.imshow(np.log1p(grid.T), origin="lower", extent=(low, high, -r, r), aspect="auto", cmap="Blues")
    right.axhline(0, color="k", ls=":", lw=0.8)
    right.set_xlabel("predicted")
    right.set_ylabel("residual (prediction − target)")
    right.set_title(f"Residuals vs predictions, {label(name)}")
    return _img(
        _figure_png(fig),
        f"Predicted vs actual and residuals vs predictions of the best model "
        f"({label(name)}); colour: log(1 + rows); values outside the ranges are "
        "counted at the edges",
    )


def _class_report(evaluation) -> str:
    """Multi-class: the best model's confusion matrix, and every model's per-class metrics."""
    import numpy as np

    task = evaluation["task"]
    metrics = evaluation["metrics"]
    classes = evaluation.get("classes") or [str(i) for i in range(len(next(iter(metrics.values()))["confusion"]))]
    name = best_model(metrics, task)
    confusion = np.asarray(metrics[name]["confusion"], dtype=float)
    size = max(3.5, 0.45 * len(classes) + 2)
    fig, ax = subplots(figsize=(size, size))
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1e-12)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    if len(classes) <= 16:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    f"{confusion[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shares[i, j] > 0.6 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Confusion matrix, {label(name)}")
    parts = [
        _img(
            _figure_png(fig),
            f"Confusion matrix of the best model ({label(name)}) on the validation "
            "split; colour: share of each actual class",
        )
    ]
    for model, m in metrics.items():
        per = m.get("per_class")
        if not per:
            continue
        rows = [
            [cls, per["precision"][i], per["recall"][i], per["f1"][i], per["auc"][i], per["support"][i]]
            for i, cls in enumerate(classes)
        ]
        parts.append(
            f"<h3>Per class: {html.escape(label(model))}</h3>"
            + _table(rows, ["class", "precision", "recall", "F1", "AUC (one vs rest)", "support"])
        )
    return "".join(parts)


def _training_curves(run_dir: Path) -> str:
    """Each trained family's own curves (see :data:`shardflow.pipelines.families.FAMILIES`)."""
    from shardflow.pipelines.artifacts import available_models

    panels = []
    for name in available_models(run_dir):
        family = FAMILIES[name]
        if family.curves is None:
            continue
        for fig, caption in family.curves(run_dir, family):
            panels.append(_img(_figure_png(fig), caption))
    if not panels:
        return ""
    return "<h2>Training curves</h2><div class='grid'>" + "".join(panels) + "</div>"


def _partition_plots(evaluation, task) -> str:
    key = primary_metric(task)
    per = evaluation["partition_metrics"]
    names = list(per)
    n = len(per[names[0]])
    fig, ax = subplots(figsize=(8, 3.5))
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        values = [p.get(key, float("nan")) for p in per[name]]
        ax.bar([i + j * width for i in range(n)], values, width=width, label=label(name))
    ax.set_xlabel("partition")
    ax.set_ylabel(key)
    lo = min((p.get(key, 1.0) for name in names for p in per[name] if p.get(key) == p.get(key)), default=0)
    if target_kind(task).curve == "roc":  # a probability metric: on [0, 1]
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set_title(f"Validation {key} per partition")
    ax.legend(fontsize=7, ncol=2)
    rows = []
    models = evaluation.get("partition_models", {})
    for family, members in models.items():
        for m in members:
            rows.append(
                [
                    label(family),
                    str(m.get("partitions")),
                    m.get("train_rows", ""),
                    m.get("validation_rows", m.get("rows", 0)),
                    m.get(key, float("nan")),
                ]
            )
    table = (
        _table(
            rows,
            ["per-partition model", "partitions", "train rows", "validation rows", f"{key} on own validation rows"],
        )
        if rows
        else ""
    )
    return "<h2>Per-partition metrics</h2>" + _img(_figure_png(fig), f"{key} of every model on each partition") + table


def list_runs(runs_dir) -> list:
    """Past runs under ``runs_dir``, newest first, with their key metrics."""
    runs = []
    runs_dir = location(runs_dir)
    entries = runs_dir.iterdir() if runs_dir.is_dir() else []
    for run_dir in sorted((p for p in entries if not p.name.startswith(".")), reverse=True):
        try:
            manifest = read_manifest(run_dir)
        except ManifestError as err:  # one damaged run does not hide the others
            logger.warning("skipped: %s", err)
            continue
        if not manifest:
            continue
        task, best = TASK_TYPES[0], None
        try:
            evaluation = _load(RunDir(run_dir).metrics) or {}
            metrics = evaluation.get("metrics", {})
            task = evaluation.get("task", TASK_TYPES[0])
            if metrics:
                name = best_model(metrics, task)
                best = (name, metrics[name].get(primary_metric(task)))
        except (ValueError, TypeError, AttributeError, KeyError, OSError) as err:  # a damaged file: listed without
            logger.warning(
                "%s: damaged (%s); run %s is listed without its metrics",
                RunDir(run_dir).metrics,
                type(err).__name__,
                run_dir.name,
            )
            task, best = TASK_TYPES[0], None
        key = primary_metric(task)
        started = min((info.get("completed", "") for info in manifest.get("stages", {}).values()), default="")
        runs.append(
            {
                "run": run_dir.name,
                "stages": list(manifest.get("stages", {})),
                "date": started.replace("T", " ")[:16] or None,
                "rows": manifest.get("stages", {}).get(RunDir.ETL, {}).get("rows"),
                "input": manifest.get("input", {}).get("path"),
                "metric": key,
                "best_model": best[0] if best else None,
                "best_value": best[1] if best else None,
                "path": str(run_dir),
            }
        )
    return runs
