"""Tuning trials on a worker: one XGBoost trial (its rounds) or one MLP trial (its epochs), and
the pruner that stops it.

A trial is stopped early by Optuna's own pruner, asked after every round. The pruner runs
where the rounds run (on the worker, or on every rank of a distributed trial), against a
*snapshot* of the study taken when the trial started: the finished trials' per-round
validation metrics. Given the same snapshot and the same metrics, the decision is the same
on every rank (so all ranks stop at the same round) and on the driver, which replays the
trial's history through :class:`Pruning` to record where it was pruned.
"""

from __future__ import annotations

import math
import time

import xgboost as xgb

from shardflow.core.threads import worker_threads


class Pruning:
    """Optuna's ``pruner`` on an in-memory copy of the study's finished trials.

    Parameters
    ----------
    pruner : optuna.pruners.BasePruner
    direction : str
        ``minimize`` or ``maximize`` (the metric's direction).
    finished : list of dict
        The finished trials: ``state`` (``COMPLETE`` or ``PRUNED``), ``value``, ``history``
        (the per-round metric) and ``pruner_attrs`` (what the pruner recorded of them).
    """

    def __init__(self, pruner, direction: str, finished: list):
        self.pruner, self.direction, self.finished = pruner, direction, finished
        self._trial = None
        self._study = None

    def _start(self) -> None:
        import optuna
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction=self.direction, pruner=self.pruner, sampler=optuna.samplers.RandomSampler(seed=0)
        )
        study.add_trials(
            create_trial(
                state=TrialState[t["state"]],
                value=t["value"],
                intermediate_values=dict(enumerate(t["history"])),
                system_attrs=t.get("pruner_attrs") or {},
            )
            for t in self.finished
        )
        self._study, self._trial = study, study.ask()

    def prune(self, step: int, value: float) -> bool:
        """Report round ``step``'s ``value``; whether the trial stops here."""
        if self._trial is None:
            self._start()
        self._trial.report(float(value), step)
        return self._trial.should_prune()

    def attrs(self) -> dict:
        """What the pruner recorded of this trial (successive halving's rungs), for later snapshots."""
        if self._trial is None:
            return {}
        stored = self._study.get_trials(deepcopy=False)[-1].system_attrs
        return {k: v for k, v in stored.items() if k.startswith("completed_rung_")}

    def __getstate__(self):
        return {"pruner": self.pruner, "direction": self.direction, "finished": self.finished}

    def __setstate__(self, state):
        self.__init__(state["pruner"], state["direction"], state["finished"])


def replay(pruning: Pruning, values: list) -> tuple:
    """``(round it was pruned at or None, pruner_attrs)`` of a trial whose per-round metric is
    ``values``: the decision its workers made, made again.

    Examples
    --------
    >>> replay(None, [0.5, 0.4])
    (None, {})
    """
    if pruning is None:
        return None, {}
    for step, value in enumerate(values):
        if pruning.prune(step, value):
            return step, pruning.attrs()
    return None, pruning.attrs()


class PruningCallback(xgb.callback.TrainingCallback):
    """Stops a trial's training when :class:`Pruning` says so (on every rank alike); with
    ``patience``, also when the metric has not improved for that many rounds (early stopping).

    ``values`` holds the validation ``metric`` of each round (the history the trial returns).
    """

    def __init__(self, pruning: Pruning | None, metric: str, *, maximize: bool, patience: int | None = None):
        super().__init__()
        self.pruning, self.metric, self.maximize, self.patience = pruning, metric, maximize, patience
        self.values = []
        self.best_iteration = 0
        self.pruned_at = None

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        value = float(evals_log["validation"][self.metric][-1])
        step = len(self.values)
        self.values.append(value)
        best = self.values[self.best_iteration]
        if (value > best) if self.maximize else (value < best):
            self.best_iteration = step
        if self.pruning is not None and self.pruning.prune(step, value):
            self.pruned_at = step
            return True
        return self.patience is not None and step - self.best_iteration >= self.patience


def _best_index(values: list, maximize: bool) -> int:
    """The position of the best of ``values``.

    Examples
    --------
    >>> _best_index([0.5, 0.3, 0.4], maximize=False), _best_index([0.5, 0.3, 0.4], maximize=True)
    (1, 0)
    """
    pick = max if maximize else min
    return values.index(pick(values))


def finite_losses(values) -> list:
    """Losses as a study ranks them: a diverged evaluation (NaN, infinite) is the worst value,
    +inf, not a failed trial.

    Examples
    --------
    >>> finite_losses([0.5, float("nan")])
    [0.5, inf]
    """
    return [float(v) if math.isfinite(v) else math.inf for v in values]


def gather_for_trials(*shards):
    """Every partition's rows in one shard, kept on the worker that runs trials (its copy)."""
    from shardflow.tasks.shards import merge_shards

    return merge_shards(*shards)


def train_xgboost_trial(
    shard,
    *,
    params: dict,
    rounds: int,
    patience: int | None,
    metric: str,
    maximize: bool,
    feature_names,
    feature_types,
    categorical: bool,
    pruning: Pruning | None,
) -> dict:
    """One trial on one worker: train on ``shard``'s training rows with the worker's threads,
    watch ``metric`` on its validation rows, stop early (``patience``) or when pruned.

    Returns
    -------
    dict
        ``values`` (the metric per round), ``best_iteration``, ``best_score``, ``pruned_at``
        (None: not pruned), ``seconds`` and ``rows``.
    """
    started = time.perf_counter()
    nthread = worker_threads()
    params = {**params, **({"nthread": nthread} if nthread else {})}
    types = dict(feature_names=list(feature_names), feature_types=list(feature_types), enable_categorical=categorical)
    dtrain = xgb.QuantileDMatrix(shard.x_train, shard.y_train, weight=shard.w_train, nthread=nthread, **types)
    dvalid = xgb.QuantileDMatrix(
        shard.x_valid, shard.y_valid, weight=shard.w_valid, ref=dtrain, nthread=nthread, **types
    )
    callback = PruningCallback(pruning, metric, maximize=maximize, patience=patience)
    xgb.train(
        params, dtrain, num_boost_round=rounds, evals=[(dvalid, "validation")], callbacks=[callback], verbose_eval=False
    )
    return {
        "values": callback.values,
        "best_iteration": callback.best_iteration,
        "best_score": callback.values[callback.best_iteration],
        "pruned_at": callback.pruned_at,
        "seconds": time.perf_counter() - started,
        "rows": int(len(shard.y_train)),
    }


def train_mlp_trial(
    shard, *, spec, optim, epochs, max_steps: int, schedule: str, warmup: float, patience, seed: int, pruning
) -> dict:
    """One MLP trial on one worker: train on ``shard``'s training rows with the worker's threads
    (:func:`~shardflow.tasks.neural.train_local`), evaluate the validation loss as the MLP
    families do, stop early (``patience`` evaluations without improvement) or when pruned.

    Returns
    -------
    dict
        As :func:`train_xgboost_trial`: ``values`` (the validation loss per evaluation),
        ``best_iteration``, ``best_score``, ``pruned_at``, ``seconds`` and ``rows``.
    """
    from shardflow.tasks.mlp_steps import use_worker_threads
    from shardflow.tasks.neural import train_local

    started = time.perf_counter()
    use_worker_threads()
    out = train_local(
        shard.x_train,
        shard.y_train,
        shard.x_valid,
        shard.y_valid,
        spec=spec,
        cfg=optim,
        epochs=epochs,
        seed=seed,
        schedule=schedule,
        warmup=warmup,
        w_train=shard.w_train,
        w_valid=shard.w_valid,
        max_steps=max_steps,
        patience=patience,
        stop=None if pruning is None else pruning.prune,
    )
    values = finite_losses(out["history"]["validation_loss"])
    if not values:
        raise ValueError("an MLP trial needs validation rows to rank it (the validation split is empty)")
    best = _best_index(values, maximize=False)
    return {
        "values": values,
        "best_iteration": best,
        "best_score": values[best],
        "pruned_at": out["stopped"],
        "seconds": time.perf_counter() - started,
        "rows": int(len(shard.y_train)),
    }
