"""The run report (``report.html``, readable offline) and the list of past runs.

Everything comes from the files a run already wrote (manifest, config, stage summaries,
model records, evaluation); the report can be rebuilt at any time with ``shardflow
report RUN``. The page opens with what was trained on what — the target and its kind,
the rows, the class balance or the target's spread, the best model and its metric —
then compares the models, shows their quality (:mod:`shardflow.pipelines.interface.report_quality`),
training curves (:mod:`shardflow.pipelines.interface.family_views`) and effective hyperparameters
(:mod:`shardflow.pipelines.interface.report_settings`), and ends with the data, the time spent and
the cluster (:mod:`shardflow.pipelines.interface.report_data`). Numbers are written by what they
measure (:mod:`shardflow.pipelines.interface.report_format`); plots are PNGs embedded as data URIs
(:mod:`shardflow.pipelines.interface.report_html`).
"""

from __future__ import annotations

import html
import json
import logging
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from shardflow.core.storage import location
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.report_data import (
    cluster_section,
    cluster_summary,
    data_section,
    stage_seconds,
    timings_section,
)
from shardflow.pipelines.interface.report_explanations import explanations_section
from shardflow.pipelines.interface.report_format import TargetFacts, count, metric_name, seconds, share, target_facts
from shardflow.pipelines.interface.report_html import CSS, facts_html, figure_html, png_data_uri, section, table_html
from shardflow.pipelines.interface.report_quality import partition_metrics_section, quality_section
from shardflow.pipelines.interface.report_settings import settings_section
from shardflow.pipelines.interface.report_tuning import tuning_section
from shardflow.pipelines.records.manifest import EtlSummary, ManifestError
from shardflow.pipelines.records.rundir import RunDir, read_manifest, write_text_atomic
from shardflow.tasks.metrics import best_model, primary_metric
from shardflow.tasks.targets import TARGET_KINDS, TASK_TYPES, target_kind

logger = logging.getLogger("shardflow.report")


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


class ReportDrawing:
    """:func:`build_report` in a background thread, so that a job's last steps (closing the
    cluster, printing the results) do not wait for the drawing; :meth:`result` waits for it
    and raises what it raised. :meth:`curves` draws the training curves alone, as soon as the
    train stage is written (they need nothing later), so they are drawn while the evaluation
    runs; the report drawn after it takes them.

    Examples
    --------
    >>> curves = ReportDrawing.curves("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    >>> drawing = ReportDrawing("shardflow-work/runs/20261122-101500-ab12cd", curves=curves)  # doctest: +SKIP
    >>> drawing.result()  # doctest: +SKIP
    PosixPath('shardflow-work/runs/20261122-101500-ab12cd/report.html')
    """

    def __init__(self, run_dir, *, curves: ReportDrawing | None = None, draw=None):
        self._value = self._error = None
        work = draw or (lambda: build_report(run_dir, curves=curves))
        self._thread = threading.Thread(target=self._draw, args=(work,), name="shardflow-report", daemon=True)
        self._thread.start()

    @classmethod
    def curves(cls, run_dir) -> ReportDrawing:
        """The report's training curves section (its HTML), drawn in the background."""
        from shardflow.pipelines.records.trained_models import available_models

        run_dir = location(run_dir)
        return cls(run_dir, draw=lambda: _training_curves(run_dir, available_models(run_dir)))

    def _draw(self, work) -> None:
        try:
            self._value = work()
        except BaseException as err:
            self._error = err

    def result(self):
        """What was drawn (the report's path, or the curves' HTML), once it is."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def build_report(run_dir, *, curves: ReportDrawing | None = None) -> Path:
    """Write ``run_dir/report.html`` from the run's files and return its path; ``curves``:
    the training curves drawn already (:meth:`ReportDrawing.curves`).

    Examples
    --------
    >>> build_report("shardflow-work/runs/20261122-101500-ab12cd")  # doctest: +SKIP
    """
    run_dir = location(run_dir)
    header, sections = _report(run_dir, curves)
    nav = "".join(
        f'<a href="#{anchor}">{html.escape(title.split(" (")[0])}</a>' for anchor, title, body in sections if body
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'><title>"
        + html.escape(header.title)
        + f"</title><style>{CSS}</style></head><body>"
        + header.html
        + f"<nav>{nav}</nav>"
        + "\n".join(section(anchor, title, body) for anchor, title, body in sections)
        + "</body></html>"
    )
    out = RunDir(run_dir).report
    write_text_atomic(out, page)
    return out


class ReportView:
    """Sections of a run's report, shown in a notebook (``_repr_html_``): the report's
    tables and figures, without its page style."""

    def __init__(self, page: str):
        self.html = page

    def _repr_html_(self) -> str:
        return self.html


def report_sections(run_dir, *anchors: str) -> ReportView:
    """Sections of a run's report to show inline in a notebook, drawn from the run's files.

    Parameters
    ----------
    run_dir : path
        A finished run.
    *anchors : str
        The sections, by their anchor in ``report.html``: ``models``, ``quality``,
        ``curves``, ``explanations``, ``hyperparameters``, ``tuning``, ``partitions``,
        ``data``, ``timings``, ``cluster``, ``config`` (default: the first three).

    Examples
    --------
    >>> report_sections(result.run_dir, "quality", "explanations")  # doctest: +SKIP
    """
    from shardflow.core.errors import ShardflowError

    header, sections = _report(location(run_dir))
    known = [anchor for anchor, _, _ in sections]
    unknown = [a for a in anchors if a not in known]
    if unknown:
        raise ShardflowError(f"report_sections: no section {unknown[0]!r}; the sections are {', '.join(known)}")
    wanted = anchors or tuple(known[:3])
    return ReportView(
        header.html + "\n".join(section(anchor, title, body) for anchor, title, body in sections if anchor in wanted)
    )


@dataclass
class _Header:
    title: str
    html: str


def _report(run_dir, curves: ReportDrawing | None = None) -> tuple:
    """The report's header and its sections (``(anchor, title, html)``; an empty html: none)."""
    curves_html = curves.result() if curves else None  # drawn before this thread draws anything
    manifest = read_manifest(run_dir)
    if not manifest:
        from shardflow.core.errors import ShardflowError

        raise ShardflowError(f"{run_dir}: not a run directory (no manifest.json)")
    run = RunDir(run_dir)
    summary = EtlSummary.read(run.summary)
    evaluation = _load(run.metrics) or {}
    train_seconds = _load(run.trained("seconds")) or {}
    facts = target_facts(run)
    task = evaluation.get("task") or facts.task or TASK_TYPES[0]
    if not facts.task:
        facts = replace(facts, task=task)
    metrics = evaluation.get("metrics", {})
    config = run.config.read_text() if run.config.exists() else ""
    from shardflow.pipelines.records.trained_models import available_models

    trained = available_models(run_dir)
    sections = [
        ("models", "Model comparison (validation split)", _comparison(metrics, train_seconds, task, facts)),
        ("quality", "Quality on the validation split", quality_section(evaluation, task, facts) if metrics else ""),
        ("curves", "Training curves", _training_curves(run_dir, trained) if curves_html is None else curves_html),
        ("explanations", "What the models rely on", explanations_section(run.explanations, facts)),
        ("hyperparameters", "Hyperparameters", settings_section(run, trained, config)),
        ("tuning", "Tuning (the search for the global XGBoost's parameters)", tuning_section(run_dir)),
        (
            "partitions",
            "Per-partition metrics",
            partition_metrics_section(evaluation, task, facts) if evaluation.get("partition_metrics") else "",
        ),
        ("data", "Data", data_section(manifest, summary, facts)),
        ("timings", "Timings", timings_section(manifest, summary, train_seconds)),
        (
            "cluster",
            "Cluster",
            cluster_section(manifest.cluster, evaluation.get("peak_memory") or {}, manifest.versions),
        ),
        ("config", "Configuration", _configuration(run, config)),
    ]
    header = _Header(
        f"{facts.column} · shardflow run {run_dir.name}",
        _header(run_dir, manifest, summary, evaluation, facts=facts, task=task),
    )
    return header, sections


def task_text(facts: TargetFacts, task: str) -> str:
    """What the target's kind means, in words: ``binary classification, positive class 'yes'``,
    ``multiclass, 4 classes``, ``regression, trained on log(1 + price)``.

    Examples
    --------
    >>> task_text(TargetFacts("churned", classes=["no", "yes"]), TASK_TYPES[0])
    "binary classification, positive class 'yes'"
    """
    kind = target_kind(task)
    if kind.is_classification:
        base = next(k.name for k in TARGET_KINDS.values() if k.configurable and k.is_classification)
        if len(facts.classes) == 2:
            return f"binary {base}, positive class '{facts.positive}'"
        return f"{kind.name}, {len(facts.classes)} classes" if kind.name != base else base
    if facts.transform != "none":
        return f"{kind.name}, trained on {facts.model_scale}"
    return kind.name


def _balance(facts: TargetFacts, evaluation: dict):
    """The header's card on the target's distribution: class shares, or the target's spread."""
    if facts.counts:
        total = sum(facts.counts.values()) or 1
        shares = sorted(facts.counts.items(), key=lambda kv: -kv[1])
        rows = " · ".join(f"{k} {count(v)}" for k, v in facts.counts.items())
        if facts.positive is not None and facts.positive in facts.counts:
            value = f"{share(facts.counts[facts.positive] / total)} '{facts.positive}'"
            rate = next((m.get("positive_rate") for m in evaluation.get("metrics", {}).values()), None)
            valid = f"; validation: {share(rate)}" if rate is not None else ""
            return ("class balance", value, f"rows: {rows}{valid}")
        shown = " · ".join(f"{k} {share(v / total, 0)}" for k, v in shares[:4])
        more = f" · {len(shares) - 4} more" if len(shares) > 4 else ""
        return ("class balance", shown + more, f"rows: {rows}" if len(shares) <= 8 else f"{len(shares)} classes")
    if facts.std == facts.std:
        return (
            f"{facts.column} (kept rows)",
            f"mean {facts.value(facts.mean)}",
            f"std {facts.value(facts.std)} · range {facts.value(facts.low)} to {facts.value(facts.high)}",
        )
    return ("class balance", None, "")


def _header(run_dir, manifest, summary, evaluation, *, facts: TargetFacts, task: str) -> str:
    """The page's top: what was trained on what, and how well."""
    metrics = evaluation.get("metrics", {})
    if facts.is_classification and facts.classes:
        note = f"classes: {', '.join(facts.classes)}" if len(facts.classes) <= 8 else f"{len(facts.classes)} classes"
    else:
        note = task_text(facts, task)
    weighted = "; rows weighted by their sample weights" if facts.weighted else ""
    cards = [("target", facts.column, note + weighted)]
    if summary:
        cards.append(
            (
                "rows",
                count(summary.rows),
                f"{count(summary.rows - summary.validation_rows)} training · {count(summary.validation_rows)} "
                f"validation · {count(summary.quarantined_rows)} quarantined",
            )
        )
    cards.append(_balance(facts, evaluation))
    if metrics:
        best, key = best_model(metrics, task), primary_metric(task)
        others = [
            f"{metric_name(c)} {facts.metric(c, metrics[best].get(c))}"
            for c in target_kind(task).columns[1:]
            if c in metrics[best]
        ]
        cards.append(
            (
                "best model",
                f"{label(best)}: {metric_name(key)} {facts.metric(key, metrics[best].get(key))}",
                f"{' · '.join(others)} (validation; {len(metrics)} models compared)",
            )
        )
    if summary:
        names = summary.feature_names
        cards.append(("features", count(len(names)), ", ".join(names[:8]) + (" …" if len(names) > 8 else "")))
    stage_times = {stage: stage_seconds(record) for stage, record in manifest.stages.items()}
    known = {k: v for k, v in stage_times.items() if v is not None}
    if known:
        cards.append(
            (
                "run time",
                f"{seconds(sum(known.values()))} s",
                " · ".join(f"{k} {seconds(v)} s" for k, v in known.items()),
            )
        )
    workers, detail = cluster_summary(manifest.cluster)
    cards.append(("cluster", workers, detail))
    completed = max((r.completed for r in manifest.stages.values() if r.completed), default="")
    inp = manifest.input
    where = f"{inp.get('path', '')} ({inp.get('format', '')})" if inp.get("path") else ""
    sub = " · ".join(
        p
        for p in (
            f"shardflow run {run_dir.name}",
            completed.replace("T", " "),
            f"stages: {', '.join(manifest.stages) or 'none'}",
            where,
        )
        if p
    )
    return (
        f"<h1>{html.escape(facts.column)} <span class='muted'>— {html.escape(task_text(facts, task))}</span></h1>"
        f"<p class='sub'>{html.escape(sub)}</p>" + facts_html(cards)
    )


def _comparison(metrics: dict, train_seconds: dict, task: str, facts: TargetFacts) -> str:
    """Every model's validation metrics and training time, the best row highlighted."""
    if not metrics:
        return ""
    cols = list(target_kind(task).columns)
    best = best_model(metrics, task)
    rows = [
        [label(n), *[m.get(c, float("nan")) for c in cols], train_seconds.get(n, float("nan"))]
        for n, m in metrics.items()
    ]
    key = primary_metric(task)
    return table_html(
        rows,
        ["model", *[facts.metric_header(c) for c in cols], "train seconds"],
        [None, *[partial(facts.metric, c) for c in cols], seconds],
        row_classes=["best" if n == best else "" for n in metrics],
    ) + (
        f"<p class='note'>Highlighted: the best model by {metric_name(key)}. Metrics on the validation "
        f"split{', weighted by the sample weights' if facts.weighted else ''}"
        f"{f', in {facts.unit} (the models trained on {facts.model_scale})' if facts.transform != 'none' else ''}."
        "</p>"
    )


def _configuration(run: RunDir, config: str) -> str:
    parts = []
    if run.performance_report.exists():
        parts.append(f"<p><a href='{run.relative(run.performance_report)}'>Dask performance report</a></p>")
    if config:
        parts.append(
            "<details><summary>The job's configuration as the run used it</summary><pre>"
            + html.escape(config)
            + "</pre></details>"
        )
    return "".join(parts)


def _training_curves(run_dir: Path, names) -> str:
    """Each trained family's own curves (see :data:`shardflow.pipelines.families.registry.FAMILIES`)."""
    panels = []
    for name in names:
        family = FAMILIES[name]
        if family.curves is None:
            continue
        for fig, caption in family.curves(run_dir, family):
            panels.append(figure_html(png_data_uri(fig), caption))
    if not panels:
        return ""
    return "<div class='grid'>" + "".join(panels) + "</div>"


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
