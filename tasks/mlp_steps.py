"""The data-parallel MLP's steps, as they run on a worker next to its shard.

Each worker keeps the optimizer state of its share of a training between rounds (it
never needs to leave the worker) in :class:`ResidentState`, a ``WorkerPlugin`` that the
driver registers before training and that is torn down with the worker: no module
global, and a restarted worker visibly has no state (:class:`WorkerStateLost`).
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from shardflow.tasks import shards as shard_tasks
from shardflow.tasks.models import worker_threads
from shardflow.tasks.threads import use_threads


class WorkerStateLost(RuntimeError):
    """A data-parallel round ran on a worker that does not hold the training's state."""


class ResidentState(WorkerPlugin):
    """Per-worker storage that lives and dies with the worker: the data-parallel MLP's
    optimizer state, keyed by ``(training token, worker index)`` (subclasses keep other state).

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


def _resident() -> ResidentState:
    from distributed import get_worker

    plugin = get_worker().plugins.get(ResidentState.name)
    if plugin is None:
        raise WorkerStateLost("this worker has no shardflow resident-state plugin (it joined during training)")
    return plugin


def _use_worker_threads() -> None:
    import torch  # noqa: F401 - loaded first, so that use_threads sizes it too

    threads = worker_threads()
    if threads:
        use_threads(threads)


def current_params(params_or_reduced, like):
    """Parameters from the previous round: plain (the first round) or a reduced weighted sum."""
    from shardflow.tasks.neural import weighted_mean

    if "sum" in params_or_reduced:
        return weighted_mean(params_or_reduced, like)
    return params_or_reduced


def local_round(shard, params_or_reduced, like, spec, optim, *, epoch, first_step, steps, lr, token, index, fresh):
    """One worker's share of a round: finish the last average, take local steps, return w·θ."""
    from shardflow.tasks.neural import local_steps, weighted_sum

    _use_worker_threads()
    states = _resident().states
    key = (token, index)
    if fresh:
        states.pop(key, None)
    elif key not in states:
        raise WorkerStateLost(f"worker {index} of data-parallel MLP training {token} lost its optimizer state "
                              "(the worker was restarted or replaced)")
    params = current_params(params_or_reduced, like)
    out = local_steps(shard, params, spec, optim, epoch=epoch, first_step=first_step, steps=steps, lr=lr,
                      optimizer_state=states.get(key))
    states[key] = out.pop("optimizer_state")
    return weighted_sum(out)


def forget_state(token: str, dask_worker=None) -> None:
    """Drop a finished training's state (``client.run(forget_state, token)``)."""
    plugin = dask_worker.plugins.get(ResidentState.name) if dask_worker is not None else None
    if plugin is not None:
        plugin.forget(token)


def validation_loss(shard, params_or_reduced, like, spec, device):
    from shardflow.tasks.neural import loss_on

    return loss_on(shard, current_params(params_or_reduced, like), spec, device)


def shard_gradient_step(shard, params, spec, optim, *, epoch, step):
    from shardflow.tasks.neural import shard_gradient

    _use_worker_threads()
    return shard_gradient(shard, params, spec, optim, epoch=epoch, step=step)


def apply_reduced_gradient(params, reduced, previous, *, spec, optim, lr):
    """One optimizer step with the mean of the workers' gradients."""
    from shardflow.tasks.neural import apply_gradient, weighted_mean

    gradient = weighted_mean(reduced, {k: v for k, v in params.items()})
    state = previous["optimizer_state"] if previous else None
    out = apply_gradient(params, gradient, spec, optim, lr=lr, optimizer_state=state)
    out["loss_sum"] = reduced["loss_sum"]
    out["weight"] = reduced["weight"]
    out["seen"] = reduced["seen"]
    return out


def take(result, key):
    """``result[key]``, or a tuple of several keys' values."""
    return tuple(result[k] for k in key) if isinstance(key, tuple) else result[key]


def train_group_mlp(*shards, spec, optim, epochs, seed, schedule, scoring):
    """One per-partition MLP on a group of partitions, with its own validation metrics."""
    from shardflow.tasks.metrics import finish_metrics, partial_metrics
    from shardflow.tasks.neural import predict, train_local

    _use_worker_threads()
    s = shard_tasks.merge_shards(*shards)
    out = train_local(s.x_train, s.y_train, s.x_valid, s.y_valid, spec=spec, cfg=optim, epochs=epochs, seed=seed,
                      schedule=schedule, w_train=s.w_train, w_valid=s.w_valid)
    out["validation"] = finish_metrics(partial_metrics(s.y_valid, predict(out["params"], spec, s.x_valid), scoring,
                                                       s.w_valid), scoring) if len(s.y_valid) else {"rows": 0}
    return out
