"""The run report's sections on the data, the time spent and where it ran.

:func:`~shardflow.pipelines.interface.report.build_report` puts them after the models: the input
and its rows (kept, validation, quarantined, joined), the plan, the partitions' sizes and
how alike they are, every stage's time with its steps, and the cluster (workers, threads,
memory limits humanised, library versions).
"""

from __future__ import annotations

import html

from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.figures import integer_ticks, legend_outside, subplots, thousands
from shardflow.pipelines.interface.report_format import TargetFacts, count, nbytes, score, seconds, share
from shardflow.pipelines.interface.report_html import figure_html, kv_table, png_data_uri, table_html
from shardflow.pipelines.records.manifest import EtlSummary
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.setup.plan import format_plan


def data_section(manifest, summary: EtlSummary | None, facts: TargetFacts) -> str:
    """The "Data" section's body: input, rows, quarantine, joins, plan and partitions.

    Parameters
    ----------
    manifest : Manifest
        The run's manifest.
    summary : EtlSummary or None
        The ETL's summary (None: the run has no ETL output).
    facts : TargetFacts
        The target (its classes and units).

    Returns
    -------
    str
        The HTML.
    """
    inp = manifest.input
    pairs = [
        ("input", inp.get("path", "")),
        ("format", inp.get("format", "")),
        ("files", count(inp.get("files")) if isinstance(inp.get("files"), (int, float)) else inp.get("files", "")),
        ("fingerprint", inp.get("fingerprint", "")),
    ]
    if summary:
        pairs += [
            ("rows kept", count(summary.rows)),
            ("training rows", count(summary.rows - summary.validation_rows)),
            ("validation rows", count(summary.validation_rows)),
            ("quarantined rows", count(summary.quarantined_rows)),
            ("partitions", count(summary.partitions)),
            ("features", f"{len(summary.feature_names)}: {', '.join(summary.feature_names)}"),
        ]
    parts = [kv_table(pairs)]
    if summary and summary.quarantined:
        parts.append(
            "<h3>Quarantined rows by reason</h3>"
            + table_html(sorted(summary.quarantined.items(), key=lambda kv: -kv[1]), ["reason", "rows"], [None, count])
        )
    if summary and summary.joins:
        parts.append(
            "<h3>Joins</h3>"
            + table_html(
                [
                    [name, j.get("path", ""), j["rows"], j["matched"], j["match_rate"]]
                    for name, j in summary.joins.items()
                ],
                ["join", "dimension table", "input rows", "matched", "match rate"],
                [None, None, count, count, share],
            )
        )
    if manifest.plan:
        parts.append("<h3>Plan</h3><pre>" + html.escape(format_plan(manifest.plan)) + "</pre>")
    if summary and summary.partition_rows:
        parts.append(
            "<div class='grid'>" + _partition_sizes(summary) + _partition_differences(summary, facts) + "</div>"
        )
        parts.append(_gaps(summary))
    return "".join(parts)


def _partition_sizes(summary: EtlSummary) -> str:
    rows = summary.partition_rows
    fig, ax = subplots((5.8, 3.4))
    ax.bar(range(len(rows)), rows, color="#4878a8", width=0.8)
    ax.axhline(sum(rows) / len(rows), color="k", ls=":", lw=0.8, label="mean")
    integer_ticks(ax.xaxis)
    thousands(ax.yaxis)
    ax.set_xlabel("partition")
    ax.set_ylabel("rows kept")
    ax.set_title("Partition sizes", fontsize=10)
    return figure_html(png_data_uri(fig), "Rows per partition (skew shows here)")


def _partition_differences(summary: EtlSummary, facts: TargetFacts) -> str:
    """The partitions' target mean (classification: every class's share, stacked) against
    the table's."""
    differences = summary.partition_differences
    if not differences or len(differences["partitions"]) < 2:
        return ""
    entries = differences["partitions"]
    fig, ax = subplots((5.8, 3.4))
    positions = range(len(entries))
    if "class_shares" in entries[0]:
        classes = list(summary.classes or []) or [str(i) for i in range(len(entries[0]["class_shares"]))]
        bottom = [0.0] * len(entries)
        for c, name in enumerate(classes):
            values = [100 * e["class_shares"][c] if e["rows"] else 0.0 for e in entries]
            ax.bar(positions, values, bottom=bottom, width=0.8, label=str(name), color=f"C{c % 10}")
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylim(0, 100)
        ax.set_ylabel("% of the partition's rows")
        what = "class shares"
        legend_outside(ax, title=facts.column)
    else:
        values = [e["target_mean"] if e["target_mean"] is not None else float("nan") for e in entries]
        ax.bar(positions, values, color="#b07aa1", width=0.8)
        ax.axhline(summary.target_mean, color="k", ls=":", lw=0.8, label="whole table")
        ax.set_ylabel(f"mean {facts.unit}")
        thousands(ax.yaxis)
        what = f"mean {facts.unit}"
        legend_outside(ax)
    integer_ticks(ax.xaxis)
    ax.set_xlabel("partition")
    ax.set_title("How different the partitions are", fontsize=10)
    return figure_html(
        png_data_uri(fig),
        f"{what} per partition: per-partition models assume partitions alike "
        "(the ETL shuffles the rows when it trains them)",
    )


def _gaps(summary: EtlSummary) -> str:
    differences = summary.partition_differences
    if not differences or len(differences["partitions"]) < 2:
        return ""
    gaps = sorted(differences["numeric_gap"].items(), key=lambda kv: -kv[1])[:8]
    return "<h3>Largest gaps between a partition and the table</h3>" + table_html(
        [["target", differences["target_gap"]], *[[f"feature {k}", v] for k, v in gaps]],
        ["column", "largest |partition mean − table mean| (table std)"],
        [None, lambda v: score(v, 3)],
    )


def stage_seconds(record) -> float | None:
    """A stage's wall time (training's: as a whole where recorded, else the sum over its families)."""
    if record is None or record.seconds is None:
        return None
    if record.wall_seconds is not None:
        return float(record.wall_seconds)
    return float(sum(record.seconds.values())) if isinstance(record.seconds, dict) else float(record.seconds)


def timings_section(manifest, summary: EtlSummary | None, train_seconds: dict) -> str:
    """Every stage's wall time, its steps under it, and the run's total, to a tenth of a second.

    Parameters
    ----------
    manifest : Manifest
        The run's manifest (each stage's record).
    summary : EtlSummary or None
        The ETL's summary (its steps' times).
    train_seconds : dict
        ``{family: seconds}`` of the train stage.

    Returns
    -------
    str
        The HTML.
    """
    steps = {
        RunDir.ETL: list((summary.timings if summary else {}).items()),
        RunDir.TRAIN: [(label(k), v) for k, v in train_seconds.items()],
    }
    totals = {stage: stage_seconds(record) for stage, record in manifest.stages.items()}
    known = [v for v in totals.values() if v is not None]
    whole = sum(known) if known else None
    rows, classes = [], []
    for stage, total in totals.items():
        rows.append([stage, total, total / whole if total is not None and whole else None])
        classes.append("total")
        for step, value in steps.get(stage, []):
            rows.append([step, value, value / whole if whole else None])
            classes.append("sub")
    if whole is not None:
        rows.append(["whole run", whole, 1.0])
        classes.append("total")
    if not rows:
        return ""
    return table_html(
        rows, ["stage / step", "seconds", "share of the run"], [None, seconds, share], row_classes=classes
    ) + (
        "<p class='note'>A stage's time is its wall time; the steps listed under it are the parts it "
        "records (the rest is scheduling, reading and writing).</p>"
    )


def cluster_summary(cluster: dict) -> tuple:
    """``(workers × threads, backend and memory)`` as the header says them.

    Examples
    --------
    >>> cluster_summary({"workers": 2, "threads": [1, 1], "memory_limit": [2e9, 2e9], "backend": "pandas"})
    ('2 workers × 1 thread', 'pandas, 1.86 GiB memory limit per worker')
    """
    workers = cluster.get("workers")
    threads = cluster.get("threads") or []
    if not workers:
        return "", ""
    per = set(threads)
    each = f"{threads[0]} thread{'s' if threads[0] != 1 else ''}" if len(per) == 1 else f"{sum(threads)} threads in all"
    limits = set(cluster.get("memory_limit") or [])
    memory = f"{nbytes(limits.pop())} memory limit per worker" if len(limits) == 1 else ""
    return f"{workers} worker{'s' if workers != 1 else ''} × {each}", ", ".join(
        p for p in (cluster.get("backend", ""), memory) if p
    )


def cluster_section(cluster: dict, peak_memory: dict, versions: dict) -> str:
    """The cluster's layout, each worker's peak memory and the library versions."""
    threads = cluster.get("threads") or []
    limits = cluster.get("memory_limit") or []
    pairs = [
        ("kind", cluster.get("kind", "")),
        ("dataframe backend", cluster.get("backend", "")),
        ("worker processes", str(cluster.get("processes", "")).lower() if "processes" in cluster else ""),
        ("scheduler", cluster.get("scheduler", "")),
        ("workers", count(cluster.get("workers")) if cluster.get("workers") is not None else ""),
        ("threads per worker", ", ".join(str(t) for t in sorted(set(threads))) if threads else ""),
        ("memory limit per worker", ", ".join(nbytes(m) for m in sorted(set(limits)) if m) if limits else ""),
    ]
    resources = [r for r in cluster.get("resources") or [] if r]
    if resources:
        pairs.append(("resources", "; ".join(", ".join(f"{k}={v}" for k, v in r.items()) for r in resources)))
    known = {"kind", "backend", "processes", "scheduler", "workers", "threads", "memory_limit", "resources"}
    pairs += [(k, v) for k, v in cluster.items() if k not in known and isinstance(v, (str, int, float))]
    parts = [kv_table(pairs)]
    if peak_memory:
        parts.append(
            "<h3>Peak worker memory (training)</h3>"
            + table_html([[w, v] for w, v in peak_memory.items()], ["worker", "peak RSS"], [None, nbytes])
        )
    if versions:
        parts.append("<h3>Library versions</h3>" + table_html(list(versions.items()), ["library", "version"]))
    return "".join(parts)
