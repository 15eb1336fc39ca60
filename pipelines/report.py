"""The run report (``report.html``, readable offline) and the list of past runs.

Everything comes from the files a run already wrote (manifest, config, stage summaries,
model metadata, evaluation); the report can be rebuilt at any time with
``shardflow report RUN``. Plots are PNGs embedded as data URIs
(:mod:`shardflow.pipelines.report_html`); the sections on the models' quality are in
:mod:`shardflow.pipelines.report_quality`, the families' training curves in
:mod:`shardflow.pipelines.family_views`.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from pathlib import Path

from shardflow.core.storage import location
from shardflow.pipelines.families import FAMILIES
from shardflow.pipelines.family_specs import label
from shardflow.pipelines.figures import subplots
from shardflow.pipelines.plan import format_plan
from shardflow.pipelines.records import EtlSummary, ManifestError
from shardflow.pipelines.report_html import CSS, figure_html, png_data_uri, table_html
from shardflow.pipelines.report_quality import partition_metrics_section, quality_section
from shardflow.pipelines.rundir import RunDir, read_manifest, write_text_atomic
from shardflow.tasks.metrics import best_model, primary_metric
from shardflow.tasks.targets import TASK_TYPES, target_kind

logger = logging.getLogger("shardflow.report")


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


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
        from shardflow.core.errors import ShardflowError

        raise ShardflowError(f"{run_dir}: not a run directory (no manifest.json)")
    run = RunDir(run_dir)
    summary = EtlSummary.read(run.summary)
    evaluation = _load(run.metrics) or {}
    seconds = _load(run.trained("seconds")) or {}
    task = evaluation.get("task", TASK_TYPES[0])
    parts = [
        f"<h1>shardflow run {html.escape(run_dir.name)}</h1>",
        f"<p class='muted'>stages: {', '.join(manifest.stages) or 'none'}</p>",
    ]

    # Dataset.
    parts.append("<h2>Dataset</h2>")
    inp = manifest.input
    parts.append(
        table_html(
            [
                ["input", inp.get("path", "")],
                ["format", inp.get("format", "")],
                ["files", inp.get("files", "")],
                ["fingerprint", inp.get("fingerprint", "")],
                ["rows (kept)", (summary.rows if summary else "")],
                ["validation rows", (summary.validation_rows if summary else "")],
                ["quarantined rows", (summary.quarantined_rows if summary else "")],
                ["partitions", (summary.partitions if summary else "")],
            ],
            ["", ""],
        )
    )
    if summary and summary.quarantined:
        parts.append(
            "<h3>Quarantined rows by reason</h3>"
            + table_html(sorted(summary.quarantined.items(), key=lambda kv: -kv[1]), ["reason", "rows"])
        )
    if summary and summary.joins:
        parts.append(
            "<h3>Joins</h3>"
            + table_html(
                [
                    [name, j.get("path", ""), j["rows"], j["matched"], f"{100 * j['match_rate']:.1f}%"]
                    for name, j in summary.joins.items()
                ],
                ["join", "dimension table", "input rows", "matched", "match rate"],
            )
        )
    plan = manifest.plan
    if plan:
        parts.append("<h3>Plan</h3><pre>" + html.escape(format_plan(plan)) + "</pre>")
    if summary and summary.partition_rows:
        fig, ax = subplots(figsize=(7, 2.8))
        ax.bar(range(len(summary.partition_rows)), summary.partition_rows, color="#4878a8")
        ax.set_xlabel("partition")
        ax.set_ylabel("rows")
        ax.set_title("Partition sizes")
        parts.append(figure_html(png_data_uri(fig), "Rows per partition (skew shows here)"))
    parts.append(_partition_differences(summary) if summary else "")

    # Stage timings.
    parts.append("<h2>Stage timings</h2>")
    timing_rows = [[f"etl: {k}", v] for k, v in (summary.timings if summary else {}).items()]
    timing_rows += [[f"train: {label(k)}", v] for k, v in seconds.items()]
    for stage, record in manifest.stages.items():
        if record.seconds is not None and not isinstance(record.seconds, dict):
            timing_rows.append([f"stage {stage} (total)", record.seconds])
    parts.append(table_html(timing_rows, ["step", "seconds"]))

    # Models.
    metrics = evaluation.get("metrics", {})
    if metrics:
        parts.append("<h2>Model comparison (validation split)</h2>")
        cols = list(target_kind(task).columns)
        parts.append(
            table_html(
                [
                    [label(n), *[m.get(c, float("nan")) for c in cols], seconds.get(n, float("nan"))]
                    for n, m in metrics.items()
                ],
                ["model", *cols, "train seconds"],
            )
        )
        parts.append(quality_section(evaluation, task))
    parts.append(_training_curves(run_dir))
    if evaluation.get("partition_metrics"):
        parts.append(partition_metrics_section(evaluation, task))

    # Cluster and configuration.
    parts.append("<h2>Cluster</h2>")
    cluster = manifest.cluster
    parts.append(
        table_html([[k, json.dumps(v) if isinstance(v, (list, dict)) else v] for k, v in cluster.items()], ["", ""])
    )
    if evaluation.get("peak_memory"):
        from dask.utils import format_bytes

        parts.append(
            "<h3>Peak worker memory (training)</h3>"
            + table_html(
                [[w, format_bytes(int(v))] for w, v in evaluation["peak_memory"].items()], ["worker", "peak RSS"]
            )
        )
    parts.append("<h3>Library versions</h3>" + table_html(list(manifest.versions.items()), ["library", "version"]))
    if run.performance_report.exists():
        parts.append(f"<p><a href='{run.relative(run.performance_report)}'>Dask performance report</a></p>")
    config = run.config.read_text() if run.config.exists() else ""
    parts.append("<h2>Configuration</h2><pre>" + html.escape(config) + "</pre>")

    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>shardflow run "
        + html.escape(run_dir.name)
        + f"</title><style>{CSS}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>"
    )
    out = run.report
    write_text_atomic(out, page)
    return out


def _partition_differences(summary: EtlSummary) -> str:
    """The partitions' target mean (classification: the last class's share) against the
    table's, and the largest gaps in the features' means, in standard deviations."""
    differences = summary.partition_differences
    if not differences or len(differences["partitions"]) < 2:
        return ""
    entries = differences["partitions"]
    classes = list(summary.classes or [])
    if "class_shares" in entries[0]:
        values = [e["class_shares"][-1] if e["rows"] else float("nan") for e in entries]
        what = f"share of class {classes[-1]!r}" if classes else "share of the last class"
    else:
        values = [e["target_mean"] if e["target_mean"] is not None else float("nan") for e in entries]
        what = "target mean"
    fig, ax = subplots(figsize=(7, 2.8))
    ax.bar(range(len(values)), values, color="#b07aa1")
    overall = summary.target_mean if what == "target mean" else None
    if overall is not None:
        ax.axhline(overall, color="k", ls=":", lw=0.8)
    ax.set_xlabel("partition")
    ax.set_ylabel(what)
    ax.set_title("How different the partitions are")
    gaps = sorted(differences["numeric_gap"].items(), key=lambda kv: -kv[1])[:8]
    table = table_html(
        [["target", differences["target_gap"]], *[[f"feature {k}", v] for k, v in gaps]],
        ["largest |partition mean − table mean| / table std", ""],
    )
    return (
        figure_html(
            png_data_uri(fig),
            f"{what} per partition: per-partition models assume partitions alike "
            "(the ETL shuffles the rows when it trains them)",
        )
        + table
    )


def _training_curves(run_dir: Path) -> str:
    """Each trained family's own curves (see :data:`shardflow.pipelines.families.FAMILIES`)."""
    from shardflow.pipelines.artifacts import available_models

    panels = []
    for name in available_models(run_dir):
        family = FAMILIES[name]
        if family.curves is None:
            continue
        for fig, caption in family.curves(run_dir, family):
            panels.append(figure_html(png_data_uri(fig), caption))
    if not panels:
        return ""
    return "<h2>Training curves</h2><div class='grid'>" + "".join(panels) + "</div>"


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
        started = min((record.completed for record in manifest.stages.values()), default="")
        runs.append(
            {
                "run": run_dir.name,
                "stages": list(manifest.stages),
                "date": started.replace("T", " ")[:16] or None,
                "rows": manifest.stages[RunDir.ETL].rows if manifest.has(RunDir.ETL) else None,
                "input": manifest.input.get("path"),
                "metric": key,
                "best_model": best[0] if best else None,
                "best_value": best[1] if best else None,
                "path": str(run_dir),
            }
        )
    return runs
