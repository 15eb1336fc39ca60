"""The run report's regression diagnostics, from the evaluation's residual histograms.

The evaluation counts every model's residuals (prediction − actual, in the target's units)
in :data:`~shardflow.tasks.metric_sums.RESIDUAL_BINS` bins over ± 4 standard deviations of
the target, and the best model's predicted-vs-actual and residual-vs-predicted pairs in
2-D histograms over the target's range. A good model's residuals fill the middle few of
those bins, so the report reads quantiles off the cumulative counts, plots only the range
that holds the rows (the outer 0.5% at each end aside), and zooms the 2-D histograms to the
cells that hold 99.5% of them.
"""

from __future__ import annotations

from shardflow.pipelines.families.specs import label
from shardflow.pipelines.interface.figures import model_colors, subplots, thousands
from shardflow.pipelines.interface.report_format import TargetFacts, share
from shardflow.pipelines.interface.report_html import figure_html, png_data_uri, table_html
from shardflow.tasks.metrics import best_model

#: Residual quantiles in the table: the median, and the middle 50% and 90% of the rows.
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Share of the rows left out at each end of a plotted range.
TAIL = 0.005


def histogram_quantile(edges, counts, q: float) -> float:
    """The ``q`` quantile of values counted in bins with ``edges``, interpolated linearly
    inside the bin (the end bins hold the values beyond the range: a quantile there is
    the range's end).

    Examples
    --------
    >>> histogram_quantile([-2, -1, 0, 1, 2], [0, 5, 5, 0], 0.5)
    0.0
    >>> histogram_quantile([-2, -1, 0, 1, 2], [0, 5, 5, 0], 0.25)
    -0.5
    """
    import numpy as np

    counts = np.asarray(counts, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    total = cumulative[-1]
    if total <= 0:
        return float("nan")
    return float(np.interp(q * total, cumulative, np.asarray(edges, dtype=float)))


def _kept_range(counts, tail: float = TAIL) -> tuple:
    """Indices ``(first, last)`` of the bins that hold all but ``tail`` of the rows at each end."""
    import numpy as np

    counts = np.asarray(counts, dtype=float)
    cumulative = np.cumsum(counts) / max(counts.sum(), 1e-300)
    first = int(np.searchsorted(cumulative, tail, side="right"))
    last = int(np.searchsorted(cumulative, 1 - tail, side="left"))
    return max(0, first - 1), min(len(counts) - 1, max(last + 1, first))


def regression_section(evaluation, task, facts: TargetFacts) -> str:
    """The residual quantiles of every model, their distributions on the range that holds
    the rows, and the best model's predicted-vs-actual and residual-vs-predicted histograms.

    Parameters
    ----------
    evaluation : dict
        The evaluation stage's metrics file.
    task : str
        The target's kind.
    facts : TargetFacts
        The target's name and units.

    Returns
    -------
    str
        The section's HTML.
    """
    import numpy as np

    curves = evaluation["curves"]
    names = list(curves)
    best = best_model(evaluation["metrics"], task)
    unit = facts.unit
    rows = []
    for name in names:
        c = curves[name]
        q = [histogram_quantile(c["residual_edges"], c["residual_counts"], p) for p in QUANTILES]
        rows.append(
            [
                label(name),
                q[2],
                f"{facts.value(q[1])} to {facts.value(q[3])}",
                f"{facts.value(q[0])} to {facts.value(q[4])}",
            ]
        )
    reference = curves[best]
    edges = np.asarray(reference["residual_edges"], dtype=float)
    width = edges[1] - edges[0]
    table = table_html(
        rows,
        ["model", f"median residual ({unit})", "middle 50% of rows", "middle 90% of rows"],
        [None, facts.value, None, None],
        row_classes=["best" if n == best else "" for n in names],
    )
    note = (
        f"<p class='note'>Residual: prediction − actual {unit}, on the validation split. Quantiles read off "
        f"the evaluation's histogram of {len(edges) - 1} bins, each {facts.value(width)} wide (± 4 standard "
        "deviations of the target): they are exact to within one bin.</p>"
    )

    parts = [table, note, "<div class='grid'>" + _quantile_chart(curves, names, best, facts)]
    # The best model's residuals, on the range that holds its rows.
    counts = np.asarray(reference["residual_counts"], dtype=float)
    first, last = _kept_range(counts)
    fig, ax = subplots((5.8, 4.2))
    ax.stairs(
        100 * counts[first : last + 1] / max(counts.sum(), 1e-300),
        edges[first : last + 2],
        fill=True,
        color="#1f77b4",
        alpha=0.75,
    )
    ax.axvline(0, color="#555", ls=":", lw=0.8)
    thousands(ax.xaxis)
    ax.set_xlabel(f"residual: predicted − actual {unit}")
    ax.set_ylabel(f"% of validation rows per {facts.value(width)}")
    ax.set_title(f"Residuals of {label(best)}", fontsize=10)
    parts.append(
        figure_html(
            png_data_uri(fig),
            f"Residuals of the best model between {facts.value(edges[first])} and {facts.value(edges[last + 1])} "
            f"{unit}: all but the outer {share(TAIL)} of its rows at each end",
        )
        + "</div>"
    )
    return "".join(parts) + _regression_grids(reference, best, facts)


def _quantile_chart(curves, names, best, facts: TargetFacts) -> str:
    """Every model's residual quantiles side by side: the middle 90% of rows (thin), the
    middle 50% (thick), the median (dot); the best model highlighted."""
    colors = model_colors(names)
    fig, ax = subplots((5.8, 0.45 * len(names) + 1.6))
    for i, name in enumerate(reversed(names)):
        c = curves[name]
        q = [histogram_quantile(c["residual_edges"], c["residual_counts"], p) for p in QUANTILES]
        color = colors[name]
        ax.plot([q[0], q[4]], [i, i], color=color, lw=1.2, solid_capstyle="butt")
        ax.plot([q[1], q[3]], [i, i], color=color, lw=7 if name == best else 5, solid_capstyle="butt")
        ax.plot([q[2]], [i], "o", color="white", mec=color, ms=5, zorder=3)
    ax.set_yticks(range(len(names)), [label(n) for n in reversed(names)], fontsize=8)
    for tick, name in zip(ax.get_yticklabels(), reversed(names)):
        tick.set_fontweight("bold" if name == best else "normal")
    ax.axvline(0, color="#555", ls=":", lw=0.8)
    ax.grid(False, axis="y")
    thousands(ax.xaxis)
    ax.set_xlabel(f"residual: predicted − actual {facts.unit}")
    ax.set_title("Residual quantiles, validation split", fontsize=10)
    return figure_html(
        png_data_uri(fig),
        "Each model's residuals: thin line, the middle 90% of rows; thick, the middle 50%; dot, the median",
    )


def _zoom(grid, axis: int, tail: float = TAIL / 2) -> tuple:
    """Cell indices ``(first, last)`` along ``axis`` of ``grid`` that hold all but ``tail`` of its mass."""
    return _kept_range(grid.sum(axis=1 - axis), tail)


def _regression_grids(c, name, facts: TargetFacts) -> str:
    """Predicted against actual, and residuals against predictions, of the best model
    (2-D histograms reduced on the cluster: no prediction left its worker), zoomed on the
    cells that hold the rows."""
    import numpy as np
    from matplotlib.colors import LogNorm

    if "actual_predicted" not in c:
        return ""
    unit = facts.unit
    low, high = c["value_range"]
    r = c["residual_range"]
    actual_predicted = np.asarray(c["actual_predicted"], dtype=float)  # [actual bin, predicted bin]
    predicted_residual = np.asarray(c["predicted_residual"], dtype=float)  # [predicted bin, residual bin]
    n = actual_predicted.shape[0]
    value_edges = np.linspace(low, high, n + 1)
    residual_edges = np.linspace(-r, r, predicted_residual.shape[1] + 1)
    a0, a1 = _zoom(actual_predicted, 0)
    p0, p1 = _zoom(actual_predicted, 1)
    lo, hi = min(a0, p0), max(a1, p1)
    r0, r1 = _zoom(predicted_residual, 1)
    vmax = max(actual_predicted.max(), predicted_residual.max(), 1.0)
    norm = LogNorm(vmin=max(min(actual_predicted[actual_predicted > 0].min(initial=vmax), 1.0), 1e-3), vmax=vmax)

    fig, (left, right) = subplots((11.5, 4.8), ncols=2)
    cut = actual_predicted[lo : hi + 1, lo : hi + 1]
    extent = (value_edges[lo], value_edges[hi + 1])
    image = left.pcolormesh(
        value_edges[lo : hi + 2], value_edges[lo : hi + 2], np.ma.masked_equal(cut, 0), cmap="Blues", norm=norm
    )
    left.plot(extent, extent, color="#444", ls=":", lw=0.9, label="prediction = actual")
    left.set(xlim=extent, ylim=extent)
    left.set_xlabel(f"predicted {unit}")
    left.set_ylabel(f"actual {unit}")
    left.set_title(f"Predicted vs actual, {label(name)}")
    cut = predicted_residual[lo : hi + 1, r0 : r1 + 1].T
    right.pcolormesh(
        value_edges[lo : hi + 2], residual_edges[r0 : r1 + 2], np.ma.masked_equal(cut, 0), cmap="Blues", norm=norm
    )
    right.axhline(0, color="#444", ls=":", lw=0.9)
    right.set_xlabel(f"predicted {unit}")
    right.set_ylabel(f"residual: predicted − actual {unit}")
    right.set_title(f"Residuals vs predictions, {label(name)}")
    for ax in (left, right):
        ax.grid(False)
        thousands(ax.xaxis)
        thousands(ax.yaxis)
    fig.colorbar(image, ax=[left, right], shrink=0.85, label="validation rows (log scale)")
    return figure_html(
        png_data_uri(fig),
        f"Predicted vs actual {unit} and residuals vs predictions of the best model ({label(name)}), "
        f"zoomed on the cells that hold the rows; cells {facts.value(value_edges[1] - value_edges[0])} wide, "
        "values beyond the evaluation's range counted in its edge cells",
    )
