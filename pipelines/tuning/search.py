"""``shardflow tune`` and :func:`tune`: search the global XGBoost's and the MLP's parameters on
a run's features, then run the job's training and evaluation with the best of them.

The ETL runs once (a run whose features are current is reused, as :func:`~shardflow.pipelines.job.run`
reuses it); the features are placed on the workers once and every trial of every study trains
on them where they lie (:mod:`~shardflow.pipelines.tuning.trials`). The studies live in the run
directory (:mod:`~shardflow.pipelines.tuning.study`); their record, ``tune/tune.json``, holds
each family's best and default trial, every trial and the parameters' importances. The best
parameters then set the job's options (``train.xgboost.params`` merged over the config's own;
``train.mlp``'s options): the normal train stage trains the run's final models with them,
``config.yaml`` records them and they count in the train stage's key, so ``predict``,
``export`` and ``load_model`` use those models like any other.
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
from shardflow.pipelines.tuning.space import space_summary
from shardflow.pipelines.tuning.study import (
    StudySettings,
    finished_trials,
    open_study,
    optimize,
    study_name,
    study_record,
)
from shardflow.pipelines.tuning.trials import ClusterTrials, WorkerTrials, concurrent_trials

logger = logging.getLogger("shardflow.tune")


@dataclass
class StudyOutcome:
    """One family's study: its best trial against the untuned defaults."""

    family: str
    metric: str
    direction: str
    best_params: dict
    best_value: float
    default_value: float | None
    trials: int  #: finished trials (completed or pruned)
    pruned: int
    mode: str  #: ``concurrent`` (one trial per worker) or ``distributed`` (one at a time)


@dataclass
class TuneResult:
    """What :func:`tune` produced: each searched family's study, and the run trained with their best."""

    run_dir: Path
    studies: dict  #: ``{family: StudyOutcome}``, in the order they were searched
    run: RunResult

    @property
    def table(self) -> str:
        """The run's model comparison (the final models trained with the best parameters)."""
        return self.run.table


def searched_families(config: Config) -> list:
    """The families ``train.tune.families`` names (default: every searchable family that
    ``train.models`` lists), each of which ``train.models`` must list."""
    searchable = [family for family in FAMILIES.values() if family.searchable]
    models = config.train.models
    chosen = config.train.tune.families
    if chosen is None:
        chosen = [family.name for family in searchable if family.name in models]
        if not chosen:
            names = " and ".join(f"{family.label} ({family.name!r})" for family in searchable)
            raise ConfigError(
                f"config key 'train.models': tuning searches the parameters of {names}; add one of them to train.models"
            )
    missing = [name for name in chosen if name not in models]
    if missing:
        raise ConfigError(
            f"config key 'train.tune.families': {missing[0]!r} is not trained (train.models lists "
            f"{', '.join(models)}); add it to train.models or leave it out of train.tune.families"
        )
    return [FAMILIES[name] for name in dict.fromkeys(chosen)]


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
    """Search the global XGBoost's and the MLP's parameters (``train.tune``), then train and
    evaluate the job with the best of them, in one run directory.

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
        Finished trials each study should have (default ``train.tune.trials``); a study that
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
    >>> study = result.studies["xgboost"]  # doctest: +SKIP
    >>> study.best_params, study.best_value, study.default_value  # doctest: +SKIP
    """
    from shardflow.pipelines.setup.plan import InputPlan

    config = copy.deepcopy(config)
    if trials is not None:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"trials: expected a whole number of at least 1, got {trials!r}")
        config.train.tune.trials = trials
    searches = searched_families(config)
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
            config,
            runtime,
            run_dir,
            plan=plan,
            keys=keys,
            searches=searches,
            on_trial=on_trial,
            on_evaluated=on_evaluated,
        )
    finally:
        if owns and runtime is not None:
            runtime.close()
        release_run(run_dir)


def _tune_claimed(
    config: Config, runtime, run_dir, *, plan, keys: dict, searches: list, on_trial, on_evaluated
) -> TuneResult:
    from shardflow.pipelines.etl.stage import etl

    tc = config.train
    if not RunDir(run_dir).is_current(RunDir.ETL, keys[RunDir.ETL]):
        etl(config, runtime=runtime, run_dir=run_dir, key=keys[RunDir.ETL], plan=plan)
    # Kept until the run has trained: its training finds these partitions in memory (same keys).
    data = load_training_data(runtime, RunDir(run_dir).stage(RunDir.ETL), tc.seed)
    concurrent = concurrent_trials(tc.tune.concurrent, data, runtime.client)
    mode = "concurrent" if concurrent else "distributed"
    final = copy.deepcopy(config)
    records, outcomes, runner = {}, {}, None
    try:
        for family in searches:
            search = family.tuning(family, data, tc, runtime.backend)
            started = time.perf_counter()
            name = study_name(
                search, keys[RunDir.ETL], tc.tune, seed=tc.seed, code=code_version(RunDir.TRAIN), mode=mode
            )
            objective = search.objective
            settings = StudySettings(
                name, objective.metric, objective.direction, search.space, tc.tune, tc.seed, search.warmup
            )
            study = open_study(run_dir, settings)
            if len(finished_trials(study)) < tc.tune.trials:
                if runner is None:
                    runner = (
                        WorkerTrials(runtime, data)
                        if concurrent
                        else ClusterTrials(runtime, scratch=tune_file(run_dir, "scratch"))
                    )
                optimize(study, runner, search, settings, trials=tc.tune.trials, on_trial=on_trial)
            record = study_record(
                study, settings, trials=tc.tune.trials, mode=mode, seconds=time.perf_counter() - started
            )
            best, default = record["best"], record["default"]
            if best is None:
                raise ShardflowError(
                    f"tune {search.family}: no trial of study {name} completed (all were pruned or failed); "
                    "run more trials"
                )
            record.update(
                family=search.family,
                metric=objective.metric,
                step=search.step,
                value_note=search.value_note,
                space=space_summary(search.space),
                options=search.options(best["params"]),
                workers=len(set(data.workers)),
            )
            records[search.family] = record
            _log_outcome(record)
            search.apply(final, best["params"])
            outcomes[search.family] = StudyOutcome(
                family=search.family,
                metric=objective.metric,
                direction=objective.direction,
                best_params=best["params"],
                best_value=best["value"],
                default_value=default["value"] if default else None,
                trials=record["finished"],
                pruned=record["pruned"],
                mode=mode,
            )
    finally:
        if runner is not None:
            runner.close()
    write_text_atomic(tune_file(run_dir, "result"), json.dumps({"studies": records}, indent=1, default=float))
    result = run(final, runtime, run_dir=run_dir, plan=plan, on_evaluated=on_evaluated)
    del data
    if config.tracking.mlflow is not None:
        _log_trials(config, run_dir, list(records.values()))
    return TuneResult(run_dir=run_dir, studies=outcomes, run=result)


def _log_outcome(record: dict) -> None:
    best, default = record["best"], record["default"]
    logger.info(
        "tune %s: best %s %.6g (trial %d) against the defaults' %s, %d trials (%d pruned) in %.1fs",
        record["family"],
        record["metric"],
        best["value"],
        best["trial"],
        "—" if not default or default["value"] is None else f"{default['value']:.6g}",
        record["finished"],
        record["pruned"],
        record["seconds"],
    )


def _log_trials(config: Config, run_dir, records: list) -> None:
    """One MLflow child run per trial under the run's MLflow run (``tracking.mlflow``); a
    failure is a warning: the run is complete, and the same command logs the trials again."""
    from shardflow.pipelines.interface.tracking_tuning import log_trials

    try:
        logged = sum(log_trials(config.tracking.mlflow, run_dir, record) for record in records)
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
