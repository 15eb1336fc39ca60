"""Figures for the run report, drawn without pyplot."""

from __future__ import annotations


def subplots(figsize, ncols: int = 1):
    """A figure and its axes (``ncols`` side by side), drawn without pyplot: the process's
    plotting backend (a notebook's inline backend, say) is never touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(ncols=ncols)
