"""State that lives on a Dask worker between tasks, and dies with it.

One ``WorkerPlugin`` per kind of state, registered by the driver before the tasks that use
it: a data-parallel MLP rank's trainer, rendezvous store and process group
(:class:`ResidentState`), ONNX Runtime sessions reused across partitions
(:class:`ExportedSessions`). No module globals: a restarted worker visibly has no state
(:class:`WorkerStateLost`).
"""

from __future__ import annotations

import hashlib

from distributed.diagnostics.plugin import WorkerPlugin


class WorkerStateLost(RuntimeError):
    """A data-parallel epoch ran on a worker that does not hold the training's state."""


class ResidentState(WorkerPlugin):
    """Per-worker storage that lives and dies with the worker: a data-parallel MLP rank's
    :class:`CollectiveTrainer` keyed by ``(training token, rank)``, the rendezvous store it
    serves, the process group it belongs to (subclasses keep other state).

    Examples
    --------
    >>> plugin = ResidentState()
    >>> plugin.states[("t", 0)] = {"step": 1}
    >>> plugin.forget("t"); plugin.states
    {}
    """

    name = "shardflow-resident-state"
    idempotent = True

    def __init__(self):
        self.states: dict = {}

    def setup(self, worker):
        self.states = {}

    def teardown(self, worker):
        self.states.clear()

    def forget(self, token: str) -> None:
        for key in [k for k in self.states if k[0] == token]:
            del self.states[key]


def resident_plugin() -> ResidentState:
    """The calling worker's :class:`ResidentState` plugin."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(ResidentState.name)
    if plugin is None:
        raise WorkerStateLost("this worker has no shardflow resident-state plugin (it joined during training)")
    return plugin


def resident_states() -> dict:
    """The calling worker's resident state (see :class:`ResidentState`)."""
    return resident_plugin().states


class ExportedSessions(ResidentState):
    """One ONNX Runtime session per worker and model, reused across partitions (kept in the
    worker's resident state, keyed by the model's SHA-256)."""

    name = "shardflow-onnx-sessions"

    def get(self, model: bytes, metadata: dict, threads: int | None):
        """The :class:`~shardflow.tasks.exported.ExportedModel` of ``model`` (made on first use)."""
        from shardflow.tasks.exported import ExportedModel

        key = hashlib.sha256(model).hexdigest()
        if key not in self.states:
            self.states[key] = ExportedModel(model, metadata, threads)
        return self.states[key]


def worker_session(model: bytes, metadata: dict):
    """This worker's :class:`~shardflow.tasks.exported.ExportedModel` for ``model`` (made on first use)."""
    from distributed import get_worker

    from shardflow.tasks.exported import ExportedModel

    # One thread per session: the worker runs one task per thread, each with its own session call.
    plugin = get_worker().plugins.get(ExportedSessions.name)
    if plugin is None:  # a worker that joined after the plugin was registered
        return ExportedModel(model, metadata, 1)
    return plugin.get(model, metadata, 1)
