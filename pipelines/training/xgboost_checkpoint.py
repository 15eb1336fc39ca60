"""The global XGBoost's checkpoints: its training callback (early stopping, checkpoints by
time, progress events) and reading a checkpoint back (see
:mod:`~shardflow.pipelines.training.checkpoint` for the format and the rule). A module of
its own because it loads XGBoost: a job that trains no XGBoost model never imports it.
"""

from __future__ import annotations

import json
import logging
import time

import xgboost as xgb

from shardflow.core.storage import location
from shardflow.pipelines.records.rundir import RunDir, write_bytes_atomic, write_text_atomic
from shardflow.pipelines.training.checkpoint import checkpoint_due

logger = logging.getLogger("shardflow.train")


_said: set = set()


def _say_once(message: str, *args) -> None:
    """Log why a checkpoint is not resumed, once per process (it is read more than once per run)."""
    text = message % args
    if text not in _said:
        _said.add(text)
        logger.info("%s", text)


def read_checkpoint(directory, token: str):
    """``(booster, state)`` of a checkpoint written for the same job ``token``, else ``(None, None)``."""
    directory = location(directory)
    state_path, model_path = RunDir.checkpoint_file(directory, "state"), RunDir.checkpoint_file(directory, "model")
    if not state_path.exists() or not model_path.exists():
        return None, None
    state = json.loads(state_path.read_text())
    if state.get("token") != token:
        _say_once("xgboost: the checkpoint in %s was written for other data or parameters; not resumed", directory)
        return None, None
    booster = xgb.Booster()
    booster.load_model(bytearray(model_path.read_bytes()))
    rounds = booster.num_boosted_rounds()
    if rounds > state["rounds"]:
        # Stopped between the model's write and the state's (the model is written first):
        # the model's first rounds are the model the state describes.
        try:
            booster = booster[: state["rounds"]]
        except (xgb.core.XGBoostError, ValueError, IndexError):
            pass
    if booster.num_boosted_rounds() != state["rounds"]:
        _say_once(
            "xgboost: the checkpoint in %s holds %d rounds where its state says %d; not resumed",
            directory,
            rounds,
            state["rounds"],
        )
        return None, None
    return booster, state


class ResumableState(xgb.callback.TrainingCallback):
    """Early stopping and checkpointing with state that survives a restart.

    Parameters
    ----------
    directory : str
        Checkpoint directory, visible to the rank-0 worker and the client.
    seconds : float or None
        Write a checkpoint after the first round that ends ``seconds`` or more after the
        last checkpoint (0: every round), when early stopping stops, and when training ends.
    token : str
        Identifies the job (data, parameters); a checkpoint of another job is ignored.
    metric, maximize : str, bool
        Validation metric that early stopping watches, and its direction.
    patience : int or None
        Stop after this many rounds without improvement; None: never stop early.
    state : dict, optional
        State read from a checkpoint, to continue from.
    progress_topic : str, optional
        Rank 0 reports each round as a Dask event on this topic (see
        :class:`shardflow.pipelines.interface.progress.Rounds`).

    Rounds are counted on the model (``num_boosted_rounds``), never by the epoch
    XGBoost passes to callbacks: that one restarts at 0 when training continues from a
    checkpoint, and early stopping would then keep the wrong best round.
    """

    def __init__(
        self,
        directory,
        *,
        seconds: float | None,
        token: str,
        metric: str,
        maximize: bool,
        patience: int | None,
        state: dict | None = None,
        progress_topic: str | None = None,
    ):
        super().__init__()
        self.progress_topic = progress_topic
        self.directory = directory
        self.seconds = seconds
        self.token = token
        self.metric = metric
        self.maximize = maximize
        self.patience = patience
        state = state or {}
        self.history = state.get("history", {})
        self.best_score = state.get("best_score")
        self.best_iteration = state.get("best_iteration", 0)
        self.round_seconds = state.get("round_seconds", [])
        self._last = None
        self._written = None  # when the last checkpoint was written (or training started)

    def before_training(self, model):
        self._last = self._written = time.perf_counter()
        return model

    def _improved(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score > self.best_score if self.maximize else score < self.best_score

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        epoch = model.num_boosted_rounds() - 1  # absolute, across resumed calls
        now = time.perf_counter()
        self.round_seconds.append(now - self._last)
        self._last = now
        for data, metrics in evals_log.items():
            for name, values in metrics.items():
                series = self.history.setdefault(data, {}).setdefault(name, [])
                series.append(float(values[-1]))
        score = float(evals_log["validation"][self.metric][-1])
        if self._improved(score):
            self.best_score, self.best_iteration = score, epoch
        model.set_attr(best_iteration=str(self.best_iteration), best_score=str(self.best_score))
        stop = self.patience is not None and epoch - self.best_iteration >= self.patience
        if stop or checkpoint_due(now - self._written, self.seconds):
            self._write(model, epoch + 1, stop)
            self._written = time.perf_counter()  # the write itself is not training time
        if self.progress_topic and xgb.collective.get_rank() == 0:
            _report(
                self.progress_topic,
                {
                    "done": epoch + 1,
                    "metric": self.metric,
                    "score": score,
                    "best": self.best_score,
                    "best_round": self.best_iteration + 1,
                    # Early stopping ends training here unless a later round scores better.
                    "stop_round": None if self.patience is None else self.best_iteration + 1 + self.patience,
                },
            )
        return stop

    def after_training(self, model):
        self._write(model, model.num_boosted_rounds(), stopped=None)
        return model

    def _write(self, model, rounds: int, stopped) -> None:
        if xgb.collective.get_rank() != 0:
            return
        directory = location(self.directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "token": self.token,
            "rounds": rounds,
            "history": self.history,
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "round_seconds": self.round_seconds,
        }
        if stopped is not None:
            state["stopped"] = bool(stopped)
        else:
            state["finished"] = True
        # Model first, state second: the state never names a model that is not in place.
        write_bytes_atomic(RunDir.checkpoint_file(directory, "model"), bytes(model.save_raw(raw_format="ubj")))
        write_text_atomic(RunDir.checkpoint_file(directory, "state"), json.dumps(state))


def _report(topic: str, message: dict) -> None:
    """Send ``message`` to the client as a Dask event (nothing outside a worker)."""
    try:
        from distributed import get_worker

        get_worker().log_event(topic, message)
    except ValueError:
        pass
