"""What a study searches (:class:`XGBoostSearch`, :class:`MLPSearch`) and how its trials use the
cluster: side by side on the workers, or one at a time across all of them.

When one trial's data fits one worker (:func:`~shardflow.pipelines.setup.train_config.trains_on_one_worker`),
every worker gets a copy of the whole training split once (its partitions gathered there) and
trains one trial at a time on it with its own threads: ``W`` workers run ``W`` trials at once
(:class:`WorkerTrials`; an MLP trial trains as one per-partition MLP does). Otherwise each trial
is the family's own distributed training (the global XGBoost's allreduce, the data-parallel
MLP's process group, over every worker's partitions), one trial after another
(:class:`ClusterTrials`). Either way the partitions stay where
:func:`~shardflow.pipelines.training.load_training_data` placed them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager

from dask.utils import format_bytes

from shardflow.core.storage import remove_tree
from shardflow.pipelines.setup.train_config import mlp_space_rules, trains_on_one_worker
from shardflow.pipelines.training.data import call_token
from shardflow.pipelines.training.xgboost_global import train_global_xgboost, xgboost_params
from shardflow.pipelines.tuning.space import default_point, merge_space, mlp_options, mlp_point, with_params
from shardflow.tasks.metric_sums import metric_direction

logger = logging.getLogger("shardflow.tune")


@dataclasses.dataclass
class Objective:
    """What every trial of one study shares: the untuned options and the metric that ranks trials."""

    params: dict  #: the untuned options (XGBoost: shardflow's defaults and train.xgboost.params)
    metric: str  #: the validation metric early stopping watches (the trials' value)
    maximize: bool

    @property
    def direction(self) -> str:
        return "maximize" if self.maximize else "minimize"


class XGBoostSearch:
    """The global XGBoost's parameters (``train.tune.space``): a trial trains it as the train
    stage does, with early stopping on the validation split's ``eval_metric``; its steps are
    boosting rounds."""

    step = "round"
    value_note = ""  #: what the study's value is, where its metric's name does not say

    def __init__(self, family, data, train, backend: str):
        self.family, self.label = family.name, family.label
        self.data, self.train, self.cfg = data, train, train.xgboost
        params = xgboost_params(data.task, self.cfg, backend, train.seed, classes=data.classes)
        metrics = params["eval_metric"]
        metric = metrics[-1] if isinstance(metrics, (list, tuple)) else metrics
        self.objective = Objective(params, metric, metric_direction(metric) == "max")
        self.space = merge_space(train.tune.space)
        self.warmup = train.tune.warmup_rounds

    def untuned(self) -> dict:
        """The untuned job's point of the space (the study's first trial)."""
        return default_point(self.space, self.objective.params)

    def worker_trial(self, held, tuned: dict, pruning) -> tuple:
        """``(function, kwargs)`` of a trial on one worker's copy ``held`` of the training split."""
        from shardflow.tasks.tuning import train_xgboost_trial

        return train_xgboost_trial, dict(
            shard=held,
            params=with_params(self.objective.params, tuned),
            rounds=self.cfg.num_boost_round,
            patience=self.cfg.early_stopping_rounds,
            metric=self.objective.metric,
            maximize=self.objective.maximize,
            feature_names=self.data.feature_names,
            feature_types=self.data.feature_types(self.cfg.categorical),
            categorical=self.cfg.categorical,
            pruning=pruning,
        )

    def cluster_trial(self, runtime, tuned: dict, pruning, *, label: str, scratch) -> dict:
        """A trial as the global XGBoost's distributed training over all workers."""
        from shardflow.tasks.tuning import PruningCallback

        cfg = dataclasses.replace(self.cfg, params=with_params(self.cfg.params, tuned))
        callback = PruningCallback(pruning, self.objective.metric, maximize=self.objective.maximize)
        out = train_global_xgboost(
            runtime,
            self.data,
            cfg,
            checkpoint_dir=scratch,
            seed=self.train.seed,
            callbacks=[callback],
            label=label,
            max_attempts=self.train.max_attempts,
            collective_timeout=self.train.collective_timeout,
            checkpoint_seconds=None,
        )
        values = out["history"]["validation"][self.objective.metric]
        return {"values": values, "best_iteration": out["best_iteration"], "best_score": values[out["best_iteration"]]}

    def options(self, tuned: dict) -> dict:
        """The config keys a point sets, as the run's ``config.yaml`` records them."""
        return {f"train.xgboost.params.{name}": value for name, value in tuned.items()}

    def apply(self, config, tuned: dict) -> None:
        """Set ``config``'s options to the point ``tuned`` (the final model trains with them)."""
        config.train.xgboost.params = with_params(config.train.xgboost.params, tuned)

    def study_inputs(self, mode: str) -> tuple:
        """What the trials' values depend on besides the features, the space and the code; the
        ``mode`` trials run in does not change an XGBoost trial (one worker or allreduce train
        the same trees)."""
        return (self.objective.params, self.cfg.num_boost_round, self.cfg.early_stopping_rounds)


class MLPSearch:
    """The MLP's options (``train.tune.mlp_space``): a trial trains it as the MLP families do
    (its length by ``train.mlp.max_steps`` and early stopping on the validation loss); its steps
    are evaluations of the validation loss. Its value is that loss, in the MLP's own units
    (log loss; the mean squared error of the standardised target for a regression)."""

    step = "evaluation"
    value_note = "the MLP's own loss: log loss, or the mean squared error of the standardised target"

    def __init__(self, family, data, train, backend: str):
        self.family, self.label = family.name, family.label
        self.data, self.train, self.cfg, self.backend = data, train, train.mlp, backend
        self.objective = Objective(dataclasses.asdict(self.cfg), "loss", maximize=False)
        self.space = merge_space(train.tune.mlp_space, **mlp_space_rules())
        self.warmup = train.tune.warmup_evaluations

    def untuned(self) -> dict:
        return default_point(self.space, mlp_point(self.cfg))

    def configured(self, tuned: dict):
        """``train.mlp`` with the point ``tuned``."""
        return dataclasses.replace(self.cfg, **mlp_options(self.cfg.hidden, tuned))

    def worker_trial(self, held, tuned: dict, pruning) -> tuple:
        from shardflow.pipelines.training.mlp_setup import mlp_optim_for, mlp_spec_for
        from shardflow.tasks.tuning import train_mlp_trial

        cfg = self.configured(tuned)
        return train_mlp_trial, dict(
            shard=held,
            spec=mlp_spec_for(self.data.preprocessor, cfg),
            optim=mlp_optim_for(cfg, self.backend),
            epochs=cfg.epochs,
            max_steps=cfg.max_steps,
            schedule=cfg.lr_schedule,
            warmup=cfg.warmup,
            patience=cfg.early_stopping_patience,
            seed=self.train.seed,
            pruning=pruning,
        )

    def cluster_trial(self, runtime, tuned: dict, pruning, *, label: str, scratch) -> dict:
        """A trial as the data-parallel MLP's training over all workers."""
        from shardflow.pipelines.training.mlp import train_data_parallel_mlp
        from shardflow.tasks.tuning import finite_losses

        out = train_data_parallel_mlp(
            runtime,
            self.data,
            self.configured(tuned),
            self.train.seed,
            label=label,
            max_attempts=self.train.max_attempts,
            collective_timeout=self.train.collective_timeout,
            checkpoint_seconds=None,
            stop=None if pruning is None else pruning.prune,
        )
        values = finite_losses(out["history"]["validation_loss"])
        best = values.index(min(values))
        return {"values": values, "best_iteration": best, "best_score": values[best]}

    def options(self, tuned: dict) -> dict:
        return {f"train.mlp.{name}": value for name, value in mlp_options(self.cfg.hidden, tuned).items()}

    def apply(self, config, tuned: dict) -> None:
        config.train.mlp = dataclasses.replace(config.train.mlp, **mlp_options(config.train.mlp.hidden, tuned))

    def study_inputs(self, mode: str) -> tuple:
        # One worker's SGD on the whole split and the workers' averaged SGD are different trials.
        return (self.objective.params, mode)


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

    def __init__(self, runtime, data):
        from shardflow.tasks.tuning import gather_for_trials

        self.client, self.data = runtime.client, data
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

    def start(self, search, number: int, tuned: dict, pruning):
        worker = next(w for w in self.workers if w not in self.running.values())
        function, kwargs = search.worker_trial(self.held[worker], tuned, pruning)
        future = self.client.submit(
            function,
            **kwargs,
            key=f"{call_token(f'tune-{search.family}-trial')}-{number}",
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

    def cancel(self) -> None:
        """Cancel the running trials (the workers' copies stay, for the next study)."""
        for future in self.running:
            future.cancel()
        self.running.clear()

    def close(self) -> None:
        self.cancel()
        for future in self.held.values():
            future.release()


class ClusterTrials:
    """One trial at a time, each the family's own distributed training over all workers."""

    slots = 1

    def __init__(self, runtime, *, scratch):
        self.runtime, self.scratch = runtime, scratch  # where trials checkpoint
        self.pending = {}

    def start(self, search, number: int, tuned: dict, pruning):
        self.pending[number] = (search, tuned, pruning)
        return number

    def wait(self, handles) -> list:
        number = next(iter(handles))
        search, tuned, pruning = self.pending.pop(number)
        directory = self.scratch / f"{search.family}-trial-{number}"
        started = time.perf_counter()
        try:
            with quiet():
                result = search.cluster_trial(self.runtime, tuned, pruning, label=f"trial {number}", scratch=directory)
        except Exception as err:  # the study records the trial as failed
            return [(number, err)]
        finally:
            remove_tree(directory)
        return [(number, {**result, "seconds": time.perf_counter() - started, "worker": "all"})]

    def cancel(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        self.cancel()


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
