"""HTML views of shardflow's results for Jupyter (their ``_repr_html_``), built from the
report's own pieces (:mod:`~shardflow.pipelines.interface.report_html`): escaped cells,
numbers formatted by quantity."""

from __future__ import annotations

import html
import math


def metrics_html(metrics: dict, train_seconds: dict, task: str, caption: str = "") -> str:
    """Every model's validation metrics, validation rows and training seconds; the best model
    (by the task's primary metric) marked with a star."""
    from shardflow.pipelines.families.specs import label
    from shardflow.pipelines.interface.report_format import seconds
    from shardflow.pipelines.interface.report_html import table_html
    from shardflow.tasks.metrics import best_model
    from shardflow.tasks.targets import target_kind

    title = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    if not metrics:
        return title + "<p>no model evaluated</p>"
    columns = list(target_kind(task).columns)
    best = best_model(metrics, task)
    rows = [
        [
            label(name) + (" ★" if name == best else ""),
            *(values.get(c, math.nan) for c in columns),
            values.get("rows"),
            train_seconds.get(name, math.nan),
        ]
        for name, values in metrics.items()
    ]
    header = ["model", *columns, "validation rows", "train seconds"]
    formats = [None] * (1 + len(columns)) + [None, seconds]
    return title + table_html(rows, header, formats, row_classes=["best" if n == best else "" for n in metrics])
