"""Figures for the run report, drawn without pyplot, and the few conventions they share.

Every figure of the report comes from :func:`subplots` and follows the same rules: axes
labelled (in the target's units where a value has them), integer ticks where the axis
counts (partitions, rounds, epochs: :func:`integer_ticks`), legends beside the plot, not
over it (:func:`legend_outside`), one colour per model (:func:`model_colors`) with the best
model drawn last and thicker (:func:`emphasis`), so it is never hidden under another.
"""

from __future__ import annotations

import threading

#: Colours of the models (matplotlib's tab10 without its grey), in the registry's order.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
#: The training split's line style against the validation split's.
TRAIN_STYLE = {"ls": "--", "alpha": 0.85}


def warm_up() -> None:
    """Import matplotlib's figure and PNG renderer in a background thread (about half a
    second), while the cluster trains: the report is then drawn without waiting for it."""

    def load():
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401

    threading.Thread(target=load, name="shardflow-import-matplotlib", daemon=True).start()


def subplots(figsize, ncols: int = 1, nrows: int = 1, **kwargs):
    """A figure and its axes (``ncols`` side by side, ``nrows`` stacked), drawn without pyplot:
    the process's plotting backend (a notebook's inline backend, say) is never touched.
    ``kwargs`` go to :meth:`matplotlib.figure.Figure.subplots` (``squeeze``, ``sharex``, ...)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")  # laid out in the one draw that saves it
    axes = fig.subplots(ncols=ncols, nrows=nrows, **kwargs)
    for ax in getattr(axes, "flat", [axes]):
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(True, color="#e8e8e8", lw=0.6)
        ax.set_axisbelow(True)
    return fig, axes


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only (partitions, rounds, epochs), at most about ten of them.

    Parameters
    ----------
    axis : matplotlib.axis.Axis
        ``ax.xaxis`` or ``ax.yaxis``.
    """
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=10, integer=True, min_n_ticks=1))


def thousands(axis) -> None:
    """Tick labels with thousands separators (values in the target's units)."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"))


def legend_outside(ax, **kwargs) -> None:
    """The legend to the right of the axes, outside the data; none without labelled artists."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, **kwargs)


def legend_below(ax, ncol: int = 3, **kwargs) -> None:
    """The legend of ``ax``'s artists under the whole figure (laid out with it, never over data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.figure.legend(handles, labels, loc="outside lower center", fontsize=8, frameon=False, ncol=ncol, **kwargs)


def model_colors(names) -> dict:
    """``{model: colour}``, stable for the models named (the registry's order)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def emphasis(names, best) -> list:
    """``[(name, line keywords)]`` with ``best`` last (drawn on top) and thicker, the others thin."""
    order = [n for n in names if n != best] + ([best] if best in names else [])
    return [(n, {"lw": 2.4, "zorder": 5} if n == best else {"lw": 1.1, "alpha": 0.8, "zorder": 2}) for n in order]


def centred_bars(ax, series: dict, colors: dict | None = None) -> None:
    """Grouped bars centred on 0, 1, 2, ... (one group per position), one bar per series.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    series : dict
        ``{label: values}``, all of the same length.
    colors : dict, optional
        ``{label: colour}``.
    """
    n = len(series)
    width = 0.8 / max(n, 1)
    for j, (name, values) in enumerate(series.items()):
        offset = (j - (n - 1) / 2) * width
        ax.bar(
            [i + offset for i in range(len(values))],
            values,
            width=width,
            label=name,
            color=(colors or {}).get(name),
        )
    integer_ticks(ax.xaxis)
