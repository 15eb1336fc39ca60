"""Figures for the run report, drawn without pyplot."""

from __future__ import annotations

import threading


def warm_up() -> None:
    """Import matplotlib's figure and PNG renderer in a background thread (about half a
    second), while the cluster trains: the report is then drawn without waiting for it."""

    def load():
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401

    threading.Thread(target=load, name="shardflow-import-matplotlib", daemon=True).start()


def subplots(figsize, ncols: int = 1):
    """A figure and its axes (``ncols`` side by side), drawn without pyplot: the process's
    plotting backend (a notebook's inline backend, say) is never touched."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")  # laid out in the one draw that saves it
    return fig, fig.subplots(ncols=ncols)
