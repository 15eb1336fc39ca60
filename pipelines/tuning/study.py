"""The studies: Optuna's TPE sampler and pruner, their store in the run directory, and the loop
that asks for trials, runs them on the cluster and tells their results. Each searched family
(:mod:`~shardflow.pipelines.tuning.trials`) has its own study, in one journal.

The study is stored with Optuna's journal storage (``JournalFileBackend``: an append-only
log, no database) in the run directory, so a tuning that was killed resumes where it
stopped: the finished trials are kept, a trial that was running is marked failed and its
parameters are tried again first, and the study goes on until ``train.tune.trials`` trials
have finished (completed or pruned). Its name is the family's and a hash of what its trials'
values depend on (the features, the untuned options, the space, the pruner, the seed and the
training code): a change of any starts a new study, a larger ``trials`` continues the same one.

The first trial is the untuned job's point of the space, so the study's best is never
worse than the defaults on the validation split that ranks the trials.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

from dask.base import tokenize

from shardflow.core.errors import ShardflowError
from shardflow.pipelines.interface import progress
from shardflow.pipelines.tuning.files import tune_file

logger = logging.getLogger("shardflow.tune")


def load_optuna():
    """Optuna, or an error that says what to install."""
    try:
        import optuna
    except ImportError as err:
        raise ShardflowError('optuna is not installed (needed for tuning): pip install "shardflow[tune]"') from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class StudySettings:
    """What the study is: its name, direction, space, pruner settings and seed."""

    name: str
    metric: str
    direction: str
    space: dict
    tune: object  #: the ``train.tune`` section
    seed: int
    warmup: int  #: steps (rounds, evaluations) before a trial may be pruned

    def pruner(self):
        optuna = load_optuna()
        warmup = self.warmup
        if self.tune.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
        if self.tune.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup), reduction_factor=3)
        return None

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out = {}
        for name, r in self.space.items():
            if r.choices is not None:
                out[name] = CategoricalDistribution(list(r.choices))
            elif r.integer:
                out[name] = IntDistribution(r.low, r.high, log=r.log)
            else:
                out[name] = FloatDistribution(float(r.low), float(r.high), log=r.log)
        return out


def study_name(search, etl_key: str, tune, *, seed: int, code: str, mode: str) -> str:
    """The study's name: the family's, and a hash of what its trials' values depend on (see the
    module; ``mode``: how trials use the cluster, ``concurrent`` or ``distributed``)."""
    settings = (tune.pruner, search.warmup)  # they decide a pruned trial's value; startup_trials does not
    inputs = (etl_key, search.study_inputs(mode), search.space, settings, seed, code)
    return f"{search.family}-" + tokenize(*inputs)[:16]


def open_study(run_dir, settings: StudySettings):
    """The study in ``run_dir`` (created, or loaded to continue), its interrupted trials made
    failed and queued again, its sampler seeded by how far it got."""
    optuna = load_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    path = tune_file(run_dir, "study")
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(
        storage=storage,
        study_name=settings.name,
        direction=settings.direction,
        pruner=settings.pruner() or optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # This process holds the run directory: a running trial is one a killed process left.
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
        logger.info("tune: trial %d was interrupted; its parameters are tried again", trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            n_startup_trials=settings.tune.startup_trials,
            multivariate=True,
            constant_liar=True,  # trials running side by side are proposed apart
            seed=settings.seed + len(study.trials),  # a resumed study draws new points, not the same again
        )
    return study


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def snapshot(study) -> list:
    """The finished trials as :class:`~shardflow.tasks.tuning.Pruning` takes them."""
    return [
        {
            "state": t.state.name,
            "value": t.value,
            "history": t.user_attrs.get("history", []),
            "pruner_attrs": t.user_attrs.get("pruner_attrs", {}),
        }
        for t in finished_trials(study)
    ]


def optimize(study, runner, search, settings: StudySettings, *, trials: int, on_trial=None) -> None:
    """Run ``search``'s trials until ``trials`` have finished: ``runner`` (a
    :class:`~shardflow.pipelines.tuning.trials.WorkerTrials` or ``ClusterTrials``) keeps its
    slots busy, each finished trial is told to the study as it ends.

    ``on_trial(study, trial)``, if given, is called after each finished trial (a notebook's
    progress; raising there stops the tuning as an interrupt would).
    """
    from shardflow.tasks.tuning import Pruning, replay

    if not study.trials:
        study.enqueue_trial(search.untuned(), user_attrs={"default": True})
    distributions = settings.distributions()
    done = len(finished_trials(study))
    counter = (
        progress.Counter(f"tune {search.family}", total=trials, unit="trials", done=done)
        if progress.enabled()
        else None
    )
    flying = {}
    failed = None
    try:
        while done < trials:
            while failed is None and len(flying) < runner.slots and done + len(flying) < trials:
                trial = study.ask(distributions)
                finished = snapshot(study)
                pruner = settings.pruner()
                pruning = Pruning(pruner, settings.direction, finished) if pruner is not None else None
                handle = runner.start(search, trial.number, trial.params, pruning)
                flying[handle] = (trial, finished)
            for handle, result in runner.wait(list(flying)):
                trial, finished = flying.pop(handle)
                if isinstance(result, BaseException):
                    study.tell(trial, state=_state("FAIL"))
                    failed = failed or (trial, result)
                    continue
                pruner = settings.pruner()
                again = Pruning(pruner, settings.direction, finished) if pruner is not None else None
                _tell(study, trial, result, replay(again, result["values"]))
                done += 1
                if counter is not None:
                    counter.update(done, _best_so_far(study, settings.metric))
                if on_trial is not None:
                    on_trial(study, study.get_trials(deepcopy=False)[trial.number])
            if failed is not None and not flying:
                trial, err = failed
                raise ShardflowError(
                    f"tune {search.family}: trial {trial.number} failed with {trial.params}: "
                    f"{type(err).__name__}: {err}"
                ) from err
    except BaseException:
        runner.cancel()
        if counter is not None:
            counter.close(failed=True)
        raise
    if counter is not None:
        counter.close()


def _best_so_far(study, metric: str) -> str:
    try:
        best = study.best_trial
    except ValueError:  # every finished trial was pruned so far
        return ""
    return f"best {metric} {best.value:.5g} (trial {best.number})"


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _tell(study, trial, result: dict, pruned: tuple) -> None:
    pruned_at, attrs = pruned
    values = [float(v) for v in result["values"]]
    trial.set_user_attr("history", values)
    trial.set_user_attr("pruner_attrs", attrs)
    trial.set_user_attr("seconds", round(float(result["seconds"]), 3))
    trial.set_user_attr("worker", str(result.get("worker", "")))
    if pruned_at is not None:
        trial.report(values[pruned_at], pruned_at)  # what TPE ranks a pruned trial by
        trial.set_user_attr("rounds", pruned_at + 1)
        study.tell(trial, state=_state("PRUNED"))
        return
    trial.set_user_attr("rounds", len(values))
    trial.set_user_attr("best_iteration", int(result["best_iteration"]))
    study.tell(trial, float(result["best_score"]))


def importances(study, seed: int) -> dict:
    """The parameters' importances (Optuna's fANOVA over the completed trials); empty when
    too few trials completed to tell."""
    optuna = load_optuna()
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError, optuna.exceptions.OptunaError) as err:
        logger.info("tune: no parameter importances (%s)", err)
        return {}
    return {name: round(float(v), 4) for name, v in found.items()}


def study_record(study, settings: StudySettings, *, trials: int, mode: str, seconds: float) -> dict:
    """What ``tune.json`` holds: the best and the default trial, every trial's history, the
    parameters' importances."""
    from optuna.trial import TrialState

    rows, best_so_far = [], None
    better = max if settings.direction == "maximize" else min
    for t in study.trials:
        value = t.value if t.state == TrialState.COMPLETE else None
        if value is not None:
            best_so_far = value if best_so_far is None else better(best_so_far, value)
        history = t.user_attrs.get("history", [])
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "value": value,
                "reached": better(history) if history else None,
                "best_so_far": best_so_far,
                "rounds": t.user_attrs.get("rounds"),
                "seconds": t.user_attrs.get("seconds"),
                "worker": t.user_attrs.get("worker"),
                "params": t.params,
            }
        )
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    default = next((t for t in study.trials if t.user_attrs.get("default")), None)
    best = study.best_trial if complete else None
    return {
        "study": settings.name,
        "direction": settings.direction,
        "trials": trials,
        "finished": len(finished_trials(study)),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "failed": sum(t.state == TrialState.FAIL for t in study.trials),
        "mode": mode,
        "seconds": round(seconds, 3),
        "default": _trial_summary(default),
        "best": _trial_summary(best),
        "importances": importances(study, settings.seed) if len(complete) > 1 else {},
        "history": rows,
    }


def _trial_summary(trial) -> dict | None:
    if trial is None:
        return None
    return {
        "trial": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "rounds": trial.user_attrs.get("rounds"),
        "best_iteration": trial.user_attrs.get("best_iteration"),
    }
