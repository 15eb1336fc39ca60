"""The run report's sections on the models' quality, drawn from the evaluation stage's metrics.

:func:`~shardflow.pipelines.report.build_report` adds them after the model comparison:
the validation split's ROC curves (binary), residual distributions and the best model's
predicted-vs-actual and residual grids (regression), the confusion matrix and per-class
metrics (multi-class), and every model's metric on each partition. Everything comes from
the evaluation's file (histograms and curves reduced on the cluster), never from the data.
"""

from __future__ import annotations

import html

from shardflow.pipelines.family_specs import label
from shardflow.pipelines.figures import subplots
from shardflow.pipelines.report_html import figure_html, png_data_uri, table_html
from shardflow.tasks.metrics import best_model, primary_metric
from shardflow.tasks.targets import target_kind


def quality_section(evaluation, task) -> str:
    """The "Quality" section: every model's ROC curve (binary), its residual distribution
    with the best model's predicted-vs-actual grids (regression), or the multi-class report.

    Parameters
    ----------
    evaluation : dict
        The evaluation stage's metrics file.
    task : str
        The target's kind.

    Returns
    -------
    str
        The section's HTML; empty when the evaluation holds no curves.
    """
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
        return "<h2>Quality</h2>" + figure_html(png_data_uri(fig), caption) + _regression_grids(evaluation, task)
    ax.legend(fontsize=8)
    return "<h2>Quality</h2>" + figure_html(png_data_uri(fig), caption)


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
    return figure_html(
        png_data_uri(fig),
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
        figure_html(
            png_data_uri(fig),
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
            + table_html(rows, ["class", "precision", "recall", "F1", "AUC (one vs rest)", "support"])
        )
    return "".join(parts)


def partition_metrics_section(evaluation, task) -> str:
    """The "Per-partition metrics" section: every model's primary metric on each partition,
    and the per-partition models' metric on their own validation rows.

    Parameters
    ----------
    evaluation : dict
        The evaluation stage's metrics file (with ``partition_metrics``).
    task : str
        The target's kind.

    Returns
    -------
    str
        The section's HTML.
    """
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
        table_html(
            rows,
            ["per-partition model", "partitions", "train rows", "validation rows", f"{key} on own validation rows"],
        )
        if rows
        else ""
    )
    return (
        "<h2>Per-partition metrics</h2>"
        + figure_html(png_data_uri(fig), f"{key} of every model on each partition")
        + table
    )
