"""The run report's sections on the models' quality, drawn from the evaluation stage's metrics.

:func:`~shardflow.pipelines.interface.report.build_report` adds them after the model comparison:
binary targets get every model's ROC and precision-recall curves and a calibration plot,
multi-class targets the best model's confusion matrix and every model's per-class metrics,
regression targets their residual diagnostics (:mod:`shardflow.pipelines.interface.report_regression`);
then every model's metric on each partition. Everything comes from the evaluation's file
(histograms and curves reduced on the cluster), never from the data.

The precision-recall and calibration curves need no sums of their own: the evaluation's
ROC points sit at known score thresholds (:func:`roc_thresholds`), so the positives and
negatives between two of them, weighted by the positive rate, give the precision at each
threshold and the share of positives in each score bin.
"""

from __future__ import annotations

import html

from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.figures import (
    centred_bars,
    emphasis,
    legend_below,
    legend_outside,
    model_colors,
    subplots,
    thousands,
)
from shardflow.pipelines.interface.report_format import (
    TARGET_UNIT_METRICS,
    TargetFacts,
    count,
    metric_name,
    score,
    share,
)
from shardflow.pipelines.interface.report_html import figure_html, png_data_uri, table_html
from shardflow.pipelines.interface.report_regression import regression_section
from shardflow.tasks.metrics import best_model, primary_metric
from shardflow.tasks.targets import target_kind

#: Score bins of the calibration plot.
CALIBRATION_BINS = 10


def quality_section(evaluation, task, facts: TargetFacts | None = None) -> str:
    """The "Quality" section's body: ROC, precision-recall and calibration (binary), the
    confusion matrix and per-class metrics (multi-class), or residual diagnostics (regression).

    Parameters
    ----------
    evaluation : dict
        The evaluation stage's metrics file.
    task : str
        The target's kind.
    facts : TargetFacts, optional
        The target's name, classes and units (axes and tables say them).

    Returns
    -------
    str
        The section's HTML; empty when the evaluation holds no curves.
    """
    facts = facts or TargetFacts(task=task)
    if not evaluation.get("curves"):
        return ""
    curve = target_kind(task).curve
    if curve == "roc":
        return _binary(evaluation, task, facts)
    if curve == "confusion":
        return _class_report(evaluation, facts)
    return regression_section(evaluation, task, facts)


# ----------------------------------------------------------------------------- binary


def roc_thresholds(points: int):
    """The score thresholds of the evaluation's ROC points (:func:`~shardflow.tasks.metric_sums.roc_points`):
    point ``j`` counts the rows scored at or above ``1 − k_j / AUC_BINS``; None when ``points``
    is not how many it keeps.

    Examples
    --------
    >>> t = roc_thresholds(200)
    >>> float(t[0]), float(t[-1]), len(t)
    (1.0, 0.0, 200)
    """
    import numpy as np

    from shardflow.tasks.metric_sums import AUC_BINS

    kept = np.unique(np.linspace(0, AUC_BINS, points).astype(int))
    return 1.0 - kept / AUC_BINS if len(kept) == points else None


def precision_recall(fpr, tpr, rate: float) -> tuple:
    """``(recall, precision, average precision)`` at the ROC points' thresholds, for a
    positive rate ``rate`` (the thresholds with nothing above them left out).

    Examples
    --------
    >>> r, p, ap = precision_recall([0, 0.0, 0.5, 1], [0, 0.5, 1.0, 1], 0.5)
    >>> r.tolist(), p.round(3).tolist(), round(ap, 3)
    ([0.5, 1.0, 1.0], [1.0, 0.667, 0.5], 0.833)
    """
    import numpy as np

    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    flagged = tpr * rate + fpr * (1 - rate)
    keep = flagged > 0
    recall, precision = tpr[keep], tpr[keep] * rate / flagged[keep]
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    return recall, precision, ap


def calibration(fpr, tpr, rate: float, bins: int = CALIBRATION_BINS):
    """``(mean score, share of positives, share of rows)`` per score bin (``bins`` equal
    widths), from the ROC points; None when their thresholds are not known.

    Examples
    --------
    >>> import numpy as np
    >>> t = roc_thresholds(200)  # a perfectly calibrated model: positives share = score
    >>> mid = (t[:-1] + t[1:]) / 2
    >>> rows = np.full(len(mid), 1 / len(mid))
    >>> pos = rows * mid
    >>> tpr = np.concatenate([[0], np.cumsum(pos)]) / pos.sum()
    >>> fpr = np.concatenate([[0], np.cumsum(rows - pos)]) / (rows - pos).sum()
    >>> mean, positives, _ = calibration(fpr, tpr, pos.sum())
    >>> bool(np.allclose(mean, positives, atol=1e-6))
    True
    """
    import numpy as np

    thresholds = roc_thresholds(len(fpr))
    if thresholds is None:
        return None
    pos = np.diff(np.asarray(tpr, dtype=float)) * rate
    neg = np.diff(np.asarray(fpr, dtype=float)) * (1 - rate)
    mid = (thresholds[:-1] + thresholds[1:]) / 2
    cell = np.minimum((mid * bins).astype(int), bins - 1)
    rows = np.bincount(cell, pos + neg, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(cell, (pos + neg) * mid, bins) / rows
        positives = np.bincount(cell, pos, bins) / rows
    return mean, positives, rows


def _binary(evaluation, task, facts: TargetFacts) -> str:
    import numpy as np

    curves, metrics = evaluation["curves"], evaluation["metrics"]
    names = list(curves)
    best = best_model(metrics, task)
    colors = model_colors(names)
    rate = metrics[best].get("positive_rate")
    positive = f"'{facts.positive}'" if facts.positive is not None else "positive"
    panels = []

    fig, ax = subplots((6.2, 5.6))
    for name, style in emphasis(names, best):
        c = curves[name]
        auc = score(metrics[name].get("auc"))
        ax.plot(c["fpr"], c["tpr"], color=colors[name], label=f"{label(name)} (AUC {auc})", **style)
    ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=0.8, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.set_xlabel("false positive rate (share of negatives flagged)")
    ax.set_ylabel(f"true positive rate (share of {positive} found)")
    ax.set_title("ROC, validation split")
    legend_below(ax, ncol=2)
    panels.append(figure_html(png_data_uri(fig), f"ROC curves; the best model ({label(best)}) drawn thick, on top"))

    if rate is not None and 0 < rate < 1:
        fig, ax = subplots((6.2, 5.6))
        for name, style in emphasis(names, best):
            recall, precision, ap = precision_recall(curves[name]["fpr"], curves[name]["tpr"], rate)
            ax.plot(recall, precision, color=colors[name], label=f"{label(name)} (AP {ap:.3f})", **style)
        ax.axhline(rate, color="#999", ls=":", lw=0.8, label=f"no skill (positive rate {share(rate)})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.set_xlabel(f"recall (share of {positive} found)")
        ax.set_ylabel(f"precision (share of flagged that are {positive})")
        ax.set_title("Precision-recall, validation split")
        legend_below(ax, ncol=2)
        panels.append(
            figure_html(png_data_uri(fig), "Precision against recall at 200 score thresholds; AP: average precision")
        )
        reliability = {n: calibration(curves[n]["fpr"], curves[n]["tpr"], rate) for n in names}
        if all(r is not None for r in reliability.values()):
            fig, (ax, hist) = subplots((6.2, 7.2), nrows=2, sharex=True, height_ratios=(3, 1))
            for name, style in emphasis(names, best):
                mean, positives, rows = reliability[name]
                ece = float(np.nansum(rows * np.abs(positives - mean)))
                shown = rows > 0
                ax.plot(
                    mean[shown],
                    positives[shown],
                    marker="o",
                    ms=3.5,
                    color=colors[name],
                    label=f"{label(name)} (ECE {ece:.3f})",
                    **style,
                )
            ax.plot([0, 1], [0, 1], color="#999", ls=":", lw=0.8, label="perfectly calibrated")
            ax.set(xlim=(0, 1), ylim=(0, 1.01))
            ax.set_ylabel(f"share that are {positive}")
            ax.set_title(f"Calibration, validation split ({CALIBRATION_BINS} score bins)")
            legend_below(ax, ncol=2)
            rows = reliability[best][2]
            hist.bar((np.arange(CALIBRATION_BINS) + 0.5) / CALIBRATION_BINS, 100 * rows, width=0.9 / CALIBRATION_BINS)
            hist.set_xlabel(f"predicted probability of {positive}")
            hist.set_ylabel("% of rows")
            hist.set_title(f"scores of {label(best)}", fontsize=9)
            panels.append(
                figure_html(
                    png_data_uri(fig),
                    "Share of positives against the mean predicted probability in each score bin "
                    "(ECE: expected calibration error); below, how the best model's scores spread",
                )
            )
    return "<div class='grid'>" + "".join(panels) + "</div>"


# ----------------------------------------------------------------------------- multi-class


def _class_report(evaluation, facts: TargetFacts) -> str:
    """Multi-class: the best model's confusion matrix, and every model's per-class metrics."""
    import numpy as np

    task = evaluation["task"]
    metrics = evaluation["metrics"]
    classes = evaluation.get("classes") or [str(i) for i in range(len(next(iter(metrics.values()))["confusion"]))]
    name = best_model(metrics, task)
    confusion = np.asarray(metrics[name]["confusion"], dtype=float)
    size = max(4.5, 0.5 * len(classes) + 2.5)
    fig, ax = subplots((size + 1.2, size))
    ax.grid(False)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1e-12)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    if len(classes) <= 16:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    count(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7 if len(classes) > 8 else 9,
                    color="white" if shares[i, j] > 0.6 else "black",
                )
    ax.set_xlabel(f"predicted {facts.column}")
    ax.set_ylabel(f"actual {facts.column}")
    ax.set_title(f"Confusion matrix, {label(name)}")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the actual class")
    parts = [
        figure_html(
            png_data_uri(fig),
            f"Confusion matrix of the best model ({label(name)}) on the validation "
            "split: rows counted (weighted), colour: share of each actual class",
        )
    ]
    per_class = {model: m["per_class"] for model, m in metrics.items() if m.get("per_class")}
    formats = [None, score, score, score, score, count]
    header = ["class", "precision", "recall", "F1", "AUC (one vs rest)", "support (rows)"]

    def rows_of(per):
        return [
            [cls, per["precision"][i], per["recall"][i], per["f1"][i], per["auc"][i], per["support"][i]]
            for i, cls in enumerate(classes)
        ]

    if name in per_class:
        parts.append(
            f"<h3>Per class: {html.escape(label(name))}</h3>" + table_html(rows_of(per_class[name]), header, formats)
        )
    if len(per_class) > 1:
        models = list(per_class)
        parts.append(
            "<h3>F1 per class, every model</h3>"
            + table_html(
                [[cls, *[per_class[m]["f1"][i] for m in models]] for i, cls in enumerate(classes)],
                ["class", *[label(m) for m in models]],
                [None, *[score] * len(models)],
            )
        )
        others = "".join(
            f"<h3>Per class: {html.escape(label(m))}</h3>" + table_html(rows_of(per_class[m]), header, formats)
            for m in models
            if m != name
        )
        parts.append(f"<details><summary>Per-class tables of the other models</summary>{others}</details>")
    return "".join(parts)


# ----------------------------------------------------------------------------- per partition


def partition_metrics_section(evaluation, task, facts: TargetFacts | None = None) -> str:
    """The "Per-partition metrics" section's body: every model's primary metric on each
    partition, and the per-partition models' metric on their own validation rows.

    Parameters
    ----------
    evaluation : dict
        The evaluation stage's metrics file (with ``partition_metrics``).
    task : str
        The target's kind.
    facts : TargetFacts, optional
        The target's units.

    Returns
    -------
    str
        The section's HTML.
    """
    facts = facts or TargetFacts(task=task)
    key = primary_metric(task)
    per = evaluation["partition_metrics"]
    names = list(per)
    n = len(per[names[0]])
    colors = model_colors(names)
    fig, ax = subplots((min(12.0, 6 + 0.5 * n), 3.8))
    centred_bars(
        ax,
        {label(name): [p.get(key, float("nan")) for p in per[name]] for name in names},
        {label(name): colors[name] for name in names},
    )
    ax.set_xlabel("partition")
    ax.set_ylabel(facts.metric_header(key))
    values = [p.get(key) for name in names for p in per[name] if p.get(key) == p.get(key) and p.get(key) is not None]
    if values and key not in TARGET_UNIT_METRICS:
        low, high = min(values), max(values)
        pad = max(0.02, 0.15 * (high - low))
        ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    else:
        thousands(ax.yaxis)
    ax.set_title(f"Validation {metric_name(key)} per partition")
    legend_outside(ax)
    return figure_html(
        png_data_uri(fig), f"{metric_name(key)} of every model on each partition's validation rows"
    ) + _members_table(evaluation, key, facts)


def _partitions_text(partitions) -> str:
    """``[0, 1, 2]`` → ``0–2``; ``[0, 2]`` → ``0, 2``."""
    parts = sorted(int(p) for p in (partitions if isinstance(partitions, (list, tuple)) else [partitions]))
    if len(parts) > 2 and parts == list(range(parts[0], parts[-1] + 1)):
        return f"{parts[0]}–{parts[-1]}"
    return ", ".join(str(p) for p in parts)


def _members_table(evaluation, key: str, facts: TargetFacts) -> str:
    """The per-partition models, one row per group of partitions and one metric column per
    family (not the family's name repeated on every row)."""
    models = evaluation.get("partition_models", {})
    if not models:
        return ""
    rows, order = {}, []
    for family, members in models.items():
        for m in members:
            group = (
                _partitions_text(m.get("partitions")),
                m.get("train_rows", ""),
                m.get("validation_rows", m.get("rows", 0)),
            )
            if group not in rows:
                rows[group] = {}
                order.append(group)
            rows[group][family] = m.get(key, float("nan"))
    families = list(models)
    return "<h3>Per-partition models on their own validation rows</h3>" + table_html(
        [[*group, *[rows[group].get(f, float("nan")) for f in families]] for group in order],
        ["partitions", "train rows", "validation rows", *[f"{label(f)}: {facts.metric_header(key)}" for f in families]],
        [None, count, count, *[lambda v: facts.metric(key, v)] * len(families)],
    )
