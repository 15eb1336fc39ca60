"""``shardflow tune`` and :func:`tune`: search the global XGBoost's parameters on a run's
features, then run the job's training and evaluation with the best of them.

The ETL runs once (a run whose features are current is reused, as :func:`~shardflow.pipelines.job.run`
reuses it); the features are placed on the workers once and every trial trains on them where
they lie (:mod:`~shardflow.pipelines.tuning.trials`). The study lives in the run directory
(:mod:`~shardflow.pipelines.tuning.study`); its record, ``tune/tune.json``, holds the best and
the default trial, every trial and the parameters' importances. The best parameters are then
the job's ``train.xgboost.params`` (merged over the config's own): the normal train stage
trains the run's final model with them, ``config.yaml`` records them and they count in the
train stage's key, so ``predict``, ``export`` and ``load_model`` use that model like any other.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from shardflow.cluster.factory import as_runtime
from shardflow.core.constraints import ConfigError
from shardflow.core.errors import ShardflowError
from shardflow.core.storage import StorePath, location
from shardflow.pipelines.families.registry import FAMILIES
from shardflow.pipelines.job import RunResult, run
from shardflow.pipelines.records.ownership import RunInUseError, claim_run, prepare_runs_dir, release_run, run_holder
from shardflow.pipelines.records.rundir import RunDir, find_run, new_run_id, write_text_atomic
from shardflow.pipelines.records.stages import code_version, stage_keys
from shardflow.pipelines.setup.config import Config
from shardflow.pipelines.training import load_training_data
from shardflow.pipelines.tuning.files import tune_file
from shardflow.pipelines.tuning.space import merge_space, space_summary, with_params
from shardflow.pipelines.tuning.study import (
    StudySettings,
    finished_trials,
    open_study,
    optimize,
    study_name,
    study_record,
)
from shardflow.pipelines.tuning.trials import ClusterTrials, Objective, WorkerTrials, concurrent_trials

logger = logging.getLogger("shardflow.tune")

#: The training module of the family whose parameters are searched (the global XGBoost).
TUNED_MODULE = "xgboost_global"


@dataclass
class TuneResult:
    """What :func:`tune` produced: the study's outcome and the run trained with its best."""

    run_dir: Path
    metric: str
    direction: str
    best_params: dict
    best_value: float
    default_value: float | None
    trials: int  #: finished trials (completed or pruned)
    pruned: int
    mode: str  #: ``concurrent`` (one trial per worker) or ``distributed`` (one at a time)
    run: RunResult

    @property
    def table(self) -> str:
        """The run's model comparison (the final model trained with the best parameters)."""
        return self.run.table


def tuned_family(config: Config):
    """The family whose parameters are searched, which ``train.models`` must list."""
    family = next(f for f in FAMILIES.values() if getattr(f, "training_module", "") == TUNED_MODULE)
    if family.name not in config.train.models:
        raise ConfigError(
            f"config key 'train.models': tuning searches the parameters of {family.label} "
            f"({family.name!r}); add {family.name!r} to train.models"
        )
    return family


def tune(
    config: Config,
    runtime=None,
    run_dir=None,
    resume=None,
    *,
    trials: int | None = None,
    force: bool = False,
    plan=None,
    on_trial=None,
    on_evaluated=None,
    on_started=None,
) -> TuneResult:
    """Search the global XGBoost's parameters (``train.tune``), then train and evaluate the
    job with the best of them, in one run directory.

    Parameters
    ----------
    config : Config
    runtime : Runtime or distributed.Client, optional
        A started cluster (default: the one the plan chooses, closed at the end).
    run_dir, resume : path, optional
        As :func:`~shardflow.pipelines.job.run`: the run to use, or one to continue (its
        study resumes where it stopped). Default: the newest run whose features are current
        for this config (its study is continued when it is the same study), else a new one.
    trials : int, optional
        Finished trials the study should have (default ``train.tune.trials``); a study that
        has them already runs none.
    force : bool
        A new run directory: the ETL and the study start over.
    on_trial : callable, optional
        ``on_trial(study, trial)`` after each finished trial (an exception raised there
        stops the tuning; a later call resumes it).
    on_evaluated, on_started : callable, optional
        As :func:`~shardflow.pipelines.job.run`.

    Returns
    -------
    TuneResult

    Raises
    ------
    ShardflowError
        ``output.runs_dir`` is in an object store (the study is a local file), or a trial failed.

    Examples
    --------
    >>> from shardflow.pipelines.setup.config import load_config
    >>> result = tune(load_config("job.yaml"), trials=40)  # doctest: +SKIP
    >>> result.best_params, result.best_value, result.default_value  # doctest: +SKIP
    """
    from shardflow.pipelines.setup.plan import InputPlan

    config = copy.deepcopy(config)
    if trials is not None:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"trials: expected a whole number of at least 1, got {trials!r}")
        config.train.tune.trials = trials
    family = tuned_family(config)
    runs_dir = prepare_runs_dir(config.runs_dir)
    if isinstance(runs_dir, StorePath):
        raise ShardflowError(
            f"output.runs_dir {runs_dir}: tuning keeps its study in the run directory as a local file "
            "(Optuna's journal), which an object store cannot append to; tune with a local output.runs_dir "
            "(and copy the run there afterwards if it must live in the store)"
        )
    plan = plan or InputPlan(config)
    keys = stage_keys(config, plan)
    if resume is not None:
        run_dir = location(str(resume))
        if not RunDir(run_dir).manifest.exists():
            raise ShardflowError(f"--resume {resume}: not a run directory (no manifest.json)")
    elif run_dir is None and not force:
        run_dir = find_run(runs_dir, keys[RunDir.ETL])
        if run_dir is not None and not claim_run(run_dir):
            run_dir = None
    run_dir = location(run_dir) if run_dir else runs_dir / new_run_id()
    if not claim_run(run_dir):
        raise RunInUseError(f"{run_dir}: in use by {run_holder(run_dir)}, which writes its stages; wait for it")
    owns = runtime is None
    try:
        if on_started is not None:
            on_started(run_dir)
        runtime = as_runtime(runtime) or plan.start_cluster()
        return _tune_claimed(
            config, runtime, run_dir, plan=plan, keys=keys, family=family, on_trial=on_trial, on_evaluated=on_evaluated
        )
    finally:
        if owns and runtime is not None:
            runtime.close()
        release_run(run_dir)


def _tune_claimed(config: Config, runtime, run_dir, *, plan, keys: dict, family, on_trial, on_evaluated) -> TuneResult:
    from shardflow.pipelines.etl.stage import etl

    tc = config.train
    if not RunDir(run_dir).is_current(RunDir.ETL, keys[RunDir.ETL]):
        etl(config, runtime=runtime, run_dir=run_dir, key=keys[RunDir.ETL], plan=plan)
    started = time.perf_counter()
    # Kept until the run has trained: its training finds these partitions in memory (same keys).
    data = load_training_data(runtime, RunDir(run_dir).stage(RunDir.ETL), tc.seed)
    objective = Objective.of(data, tc.xgboost, runtime.backend, tc.seed)
    space = merge_space(tc.tune.space)
    name = study_name(keys[RunDir.ETL], objective, space, tc.tune, seed=tc.seed, code=code_version(RunDir.TRAIN))
    settings = StudySettings(name, objective.metric, objective.direction, space, tc.tune, tc.seed)
    study = open_study(run_dir, settings)
    concurrent = concurrent_trials(tc.tune.concurrent, data, runtime.client)
    if len(finished_trials(study)) < tc.tune.trials:
        runner = (
            WorkerTrials(runtime, data, tc.xgboost, objective)
            if concurrent
            else ClusterTrials(runtime, data, tc.xgboost, objective, train=tc, scratch=tune_file(run_dir, "scratch"))
        )
        try:
            optimize(study, runner, settings, trials=tc.tune.trials, default_params=objective.params, on_trial=on_trial)
        finally:
            runner.close()
    mode = "concurrent" if concurrent else "distributed"
    record = study_record(study, settings, trials=tc.tune.trials, mode=mode, seconds=time.perf_counter() - started)
    record.update(
        family=family.name, metric=objective.metric, space=space_summary(space), workers=len(set(data.workers))
    )
    write_text_atomic(tune_file(run_dir, "result"), json.dumps(record, indent=1, default=float))
    best, default = record["best"], record["default"]
    if best is None:
        raise ShardflowError(f"tune: no trial of study {name} completed (all were pruned or failed); run more trials")
    logger.info(
        "tune: best %s %.6g (trial %d) against the defaults' %s, %d trials (%d pruned) in %.1fs",
        objective.metric,
        best["value"],
        best["trial"],
        "—" if not default or default["value"] is None else f"{default['value']:.6g}",
        record["finished"],
        record["pruned"],
        record["seconds"],
    )
    final = copy.deepcopy(config)
    final.train.xgboost.params = with_params(tc.xgboost.params, best["params"])
    result = run(final, runtime, run_dir=run_dir, plan=plan, on_evaluated=on_evaluated)
    del data
    if config.tracking.mlflow is not None:
        _log_trials(config, run_dir, record)
    return TuneResult(
        run_dir=run_dir,
        metric=objective.metric,
        direction=objective.direction,
        best_params=best["params"],
        best_value=best["value"],
        default_value=default["value"] if default else None,
        trials=record["finished"],
        pruned=record["pruned"],
        mode=mode,
        run=result,
    )


def _log_trials(config: Config, run_dir, record: dict) -> None:
    """One MLflow child run per trial under the run's MLflow run (``tracking.mlflow``); a
    failure is a warning: the run is complete, and the same command logs the trials again."""
    from shardflow.pipelines.interface.tracking_tuning import log_trials

    try:
        logged = log_trials(config.tracking.mlflow, run_dir, record)
    except Exception as err:
        logger.warning(
            "tracking: logging the trials of run %s to MLflow failed (%s: %s); `shardflow tune --resume %s` "
            "logs them again",
            run_dir.name,
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            run_dir,
        )
        return
    logger.info("tracking: %d trials logged to MLflow as child runs of run %s", logged, run_dir.name)
