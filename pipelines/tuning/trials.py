"""How trials use the cluster: side by side on the workers, or one at a time across all of them.

When one trial's data fits one worker (:func:`~shardflow.pipelines.setup.train_config.trains_on_one_worker`),
every worker gets a copy of the whole training split once (its partitions gathered there) and
trains one trial at a time on it with its own threads: ``W`` workers run ``W`` trials at once
(:class:`WorkerTrials`). Otherwise each trial is the global XGBoost's own distributed training
(:func:`~shardflow.pipelines.training.xgboost_global.train_global_xgboost`, allreduce over every
worker's partitions), one trial after another (:class:`ClusterTrials`). Either way the
partitions stay where :func:`~shardflow.pipelines.training.load_training_data` placed them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager

from dask.utils import format_bytes

from shardflow.core.storage import remove_tree
from shardflow.pipelines.setup.train_config import trains_on_one_worker
from shardflow.pipelines.training.data import call_token
from shardflow.pipelines.training.xgboost_global import train_global_xgboost, xgboost_params
from shardflow.pipelines.tuning.space import with_params
from shardflow.tasks.metric_sums import metric_direction

logger = logging.getLogger("shardflow.tune")


@dataclasses.dataclass
class Objective:
    """What every trial shares: the job's XGBoost options and the metric that ranks trials."""

    params: dict  #: the untuned parameters (shardflow's defaults and train.xgboost.params)
    metric: str  #: the validation metric early stopping watches (the trials' value)
    maximize: bool

    @classmethod
    def of(cls, data, cfg, backend: str, seed: int) -> Objective:
        params = xgboost_params(data.task, cfg, backend, seed, classes=data.classes)
        metrics = params["eval_metric"]
        metric = metrics[-1] if isinstance(metrics, (list, tuple)) else metrics
        return cls(params, metric, metric_direction(metric) == "max")

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


def concurrent_trials(setting: str, data, client) -> bool:
    """Whether trials run side by side, one per worker (``train.tune.concurrent``; ``auto``: when
    the training arrays fit one worker, as the global XGBoost decides to train on one)."""
    if setting in ("true", "false"):
        return setting == "true"
    workers = client.scheduler_info(n_workers=-1)["workers"]
    array_bytes = (sum(data.train_rows) + sum(data.valid_rows)) * (data.n_features + 3) * 4
    fits = trains_on_one_worker("auto", array_bytes, [w.get("memory_limit") or 0 for w in workers.values()])
    logger.info(
        "tune: %s of training arrays: %s",
        format_bytes(int(array_bytes)),
        f"{len(workers)} trials at a time, one per worker" if fits else "one trial at a time across all workers",
    )
    return fits


class WorkerTrials:
    """Trials side by side, one per worker, each on the whole training split (see the module)."""

    def __init__(self, runtime, data, cfg, objective: Objective):
        from shardflow.tasks.tuning import gather_for_trials

        self.client, self.data, self.cfg, self.objective = runtime.client, data, cfg, objective
        useful = [
            f for f, n_train, n_valid in zip(data.futures, data.train_rows, data.valid_rows) if n_train or n_valid
        ]
        self.workers = sorted(self.client.scheduler_info(n_workers=-1)["workers"])
        name = call_token("tune-gather")
        # Once per worker: every partition comes to it, in the table's order (the order the
        # final model's one-worker training reads them in). A preference, not a pin: a lost
        # worker's copy and trials are made again elsewhere.
        self.held = {
            w: self.client.submit(
                gather_for_trials, *useful, key=f"{name}-{i}", workers=[w], allow_other_workers=True, pure=False
            )
            for i, w in enumerate(self.workers)
        }
        self.running = {}  # future -> worker

    @property
    def slots(self) -> int:
        return len(self.workers)

    def start(self, number: int, tuned: dict, pruning):
        from shardflow.tasks.tuning import train_xgboost_trial

        worker = next(w for w in self.workers if w not in self.running.values())
        future = self.client.submit(
            train_xgboost_trial,
            self.held[worker],
            params=with_params(self.objective.params, tuned),
            rounds=self.cfg.num_boost_round,
            patience=self.cfg.early_stopping_rounds,
            metric=self.objective.metric,
            maximize=self.objective.maximize,
            feature_names=self.data.feature_names,
            feature_types=self.data.feature_types(self.cfg.categorical),
            categorical=self.cfg.categorical,
            pruning=pruning,
            key=f"{call_token('tune-trial')}-{number}",
            workers=[worker],
            allow_other_workers=True,
            pure=False,
        )
        self.running[future] = worker
        return future

    def wait(self, handles) -> list:
        """``[(handle, result)]`` of the trials that finished (at least one); a failed trial's
        result is its exception."""
        from distributed import wait

        done = wait(list(handles), return_when="FIRST_COMPLETED").done
        out = []
        for future in done:
            worker = self.running.pop(future)
            try:
                out.append((future, {**future.result(), "worker": worker}))
            except Exception as err:  # the study records the trial as failed
                out.append((future, err))
        return out

    def close(self) -> None:
        for future in self.running:
            future.cancel()
        for future in self.held.values():
            future.release()


class ClusterTrials:
    """One trial at a time, each the global XGBoost's distributed training over all workers."""

    slots = 1

    def __init__(self, runtime, data, cfg, objective: Objective, *, train, scratch):
        self.runtime, self.data, self.cfg, self.objective = runtime, data, cfg, objective
        self.train, self.scratch = train, scratch  # the train section; where trials checkpoint
        self.pending = {}

    def start(self, number: int, tuned: dict, pruning):
        self.pending[number] = (tuned, pruning)
        return number

    def wait(self, handles) -> list:
        from shardflow.tasks.tuning import PruningCallback

        number = next(iter(handles))
        tuned, pruning = self.pending.pop(number)
        cfg = dataclasses.replace(self.cfg, params=with_params(self.cfg.params, tuned))
        callback = PruningCallback(pruning, self.objective.metric, maximize=self.objective.maximize)
        directory = self.scratch / f"trial-{number}"
        started = time.perf_counter()
        try:
            with quiet():
                out = train_global_xgboost(
                    self.runtime,
                    self.data,
                    cfg,
                    checkpoint_dir=directory,
                    seed=self.train.seed,
                    callbacks=[callback],
                    label=f"trial {number}",
                    max_attempts=self.train.max_attempts,
                    collective_timeout=self.train.collective_timeout,
                    checkpoint_seconds=None,
                )
        except Exception as err:  # the study records the trial as failed
            return [(number, err)]
        finally:
            remove_tree(directory)
        values = out["history"]["validation"][self.objective.metric]
        best = out["best_iteration"]
        result = {
            "values": values,
            "best_iteration": best,
            "best_score": values[best],
            "seconds": time.perf_counter() - started,
            "worker": "all",
        }
        return [(number, result)]

    def close(self) -> None:
        self.pending.clear()


@contextmanager
def quiet():
    """The global XGBoost's own progress bar and log lines silenced for a trial (the tuning's
    line reports trials); warnings still show."""
    root = logging.getLogger("shardflow")
    level = root.level
    if root.getEffectiveLevel() <= logging.INFO:
        root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)
