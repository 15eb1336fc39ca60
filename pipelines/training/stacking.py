"""The stacked ensemble: a combiner of the per-partition XGBoost models, fit on the cluster."""

from __future__ import annotations

import logging
import time

import numpy as np

from shardflow.pipelines.rundir import RunDir
from shardflow.cluster.factory import Runtime
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.models import (add_stack_terms, member_predictions, stack_design, stack_partition_losses,
                                    stack_partition_terms)
from shardflow.tasks.targets import target_kind

logger = logging.getLogger(__name__)


def fit_stacker(runtime: Runtime, data: TrainingData, member_models: list, max_iter: int = 100,
                ridge: float = 1e-4) -> dict:
    """Fit the stacked combiner on the validation split, by a damped Newton method on reductions.

    Inputs are the per-partition models' predictions (logits for a binary target, log
    probabilities for a multi-class one: see :mod:`shardflow.tasks.combiners`), rows
    weighted by their sample weights.
    Three fits share each pass: on the even and the odd validation rows of every
    partition (cross-fitting: each half is scored by the fit on the other half, so
    the reported quality is out-of-sample), and on all validation rows (the model
    saved for inference).

    Every fit starts at the members' equal-weight average and takes a Newton step only
    where it lowers the ridge-penalised loss (the step is halved until it does), so a fit
    can never end worse on its own rows than that average, however many classes or
    members there are. A last pass scores the cross-fitted combiner and each member on
    the validation rows; a combiner worse than its best member is reported as a warning.
    """
    client = runtime.client
    started = time.perf_counter()
    token = call_token(data.token)
    models_f = scatter_named(client, f"train-stack-members-{token}", member_models)
    preds = [client.submit(member_predictions, f, models_f, key=f"train-stack-predict-{token}-{i}")
             for i, f in enumerate(data.futures)]
    designs = [client.submit(stack_design, p, data.task, key=f"train-stack-design-{token}-{i}")
               for i, p in enumerate(preds)]
    del preds  # the designs hold what the Newton steps need
    combiner = target_kind(data.task).combiner
    members = len(member_models)
    average = combiner.average(members, data.classes)
    fits = [_DampedNewton(average, ridge) for _ in range(3)]
    newton_steps, objective = [], []
    for step in range(max_iter):
        thetas = [fit.trial for fit in fits]
        terms = [client.submit(stack_partition_terms, design, f, thetas, data.task,
                               key=f"train-stack-terms-{token}-{step}-{i}")
                 for i, (design, f) in enumerate(zip(designs, data.futures))]
        total = tree_reduce_futures(client, terms, add_stack_terms, f"train-stack-newton-{token}-{step}").result()
        newton_steps.append(max(fit.update(t) for fit, t in zip(fits, total)))
        objective.append(float(fits[2].objective))
        if all(fit.done for fit in fits):
            break
    even, odd, every = (fit.theta for fit in fits)
    candidates = [("odd", even), ("even", odd), ("all", every)] + \
        [("all", combiner.member(m, members, data.classes)) for m in range(members)]
    losses = [client.submit(stack_partition_losses, design, f, candidates, data.task,
                            key=f"train-stack-losses-{token}-{i}")
              for i, (design, f) in enumerate(zip(designs, data.futures))]
    sums = tree_reduce_futures(client, losses, add_stack_terms, f"train-stack-check-{token}").result()
    quality = _quality(sums, members)
    if not all(fit.converged for fit in fits):
        logger.warning("stacked: the combiner's fit did not converge in %d Newton passes%s; it is kept where its "
                       "loss was lowest (never above the members' average on its rows)", len(newton_steps),
                       " (its line search stalled)" if all(fit.done for fit in fits) else "")
    if quality["out_of_fold_loss"] > quality["best_member_loss"]:
        logger.warning("stacked: WORSE THAN ITS BEST MEMBER: out-of-fold validation loss %.5g against %.5g for "
                       "member %d of %d (their average: %.5g); prefer xgboost_partitions or the global model",
                       quality["out_of_fold_loss"], quality["best_member_loss"], quality["best_member"] + 1,
                       members, quality["average_loss"])
    return {"coef_even": even.tolist(), "coef_odd": odd.tolist(), "coef": every.tolist(),
            "seconds": time.perf_counter() - started, "newton_steps": newton_steps, "objective": objective,
            "converged": all(fit.converged for fit in fits), **quality}


def _quality(sums: np.ndarray, members: int) -> dict:
    """The cross-fitted combiner's and each member's mean loss on the validation rows."""
    mean = sums[:, 0] / np.maximum(sums[:, 1], 1e-300)
    out_of_fold = (sums[0, 0] + sums[1, 0]) / max(sums[0, 1] + sums[1, 1], 1e-300)
    member_losses = mean[3:3 + members]
    best = int(np.argmin(member_losses))
    return {"out_of_fold_loss": float(out_of_fold), "fit_loss": float(mean[2]),
            "member_losses": member_losses.tolist(), "best_member": best,
            "best_member_loss": float(member_losses[best]), "average_loss": float(np.mean(member_losses))}


class _DampedNewton:
    """Newton's method with backtracking on one convex, ridge-penalised loss whose terms
    (loss, gradient and Hessian sums over rows, see :func:`stack_partition_terms`) arrive
    one pass at a time for the point :attr:`trial`.

    A trial that does not lower the objective by Armijo's fraction of the predicted
    decrease is rejected and the step halved; the fit ends when the Newton decrement is
    negligible or the step is too small to matter.

    Examples
    --------
    >>> fit = _DampedNewton(np.zeros(1), ridge=0.0)
    >>> while not fit.done:  # minimise (θ - 3)² / 2 over two "rows"
    ...     θ = fit.trial[0]
    ...     _ = fit.update({"loss": (θ - 3) ** 2, "grad": np.array([2 * (θ - 3)]), "hess": np.eye(1) * 2, "n": 2.0})
    >>> round(float(fit.theta[0]), 6), fit.converged
    (3.0, True)
    """

    def __init__(self, start: np.ndarray, ridge: float, armijo: float = 1e-4, tolerance: float = 1e-10):
        self.theta = np.asarray(start, dtype=np.float64).copy()
        self.trial = self.theta.copy()
        self.ridge, self.armijo, self.tolerance = ridge, armijo, tolerance
        self.objective = np.inf
        self.direction, self.decrement, self.step = None, 0.0, 1.0
        #: ``converged``: the Newton decrement is negligible; ``stalled``: no step along the
        #: direction lowers the loss at this precision (kept where it was lowest).
        self.done = self.converged = False

    def update(self, terms: dict) -> float:
        """Take the terms at :attr:`trial`; set the next trial. Returns the size of the move."""
        if self.done:
            return 0.0
        n = terms["n"] if terms["n"] > 0 else 1.0  # weights below 1 in all: the mean is still a mean
        value = terms["loss"] / n + 0.5 * self.ridge * float(self.trial @ self.trial)
        accepted = self.direction is None or (
            np.isfinite(value) and value <= self.objective - self.armijo * self.step * self.decrement)
        if accepted:
            self.theta, self.objective = self.trial, value
            hess = terms["hess"] / n + self.ridge * np.eye(len(self.theta))
            grad = terms["grad"] / n + self.ridge * self.theta
            try:
                direction = np.linalg.lstsq(hess, grad, rcond=None)[0] if self.ridge == 0 else \
                    np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                direction = grad  # a singular Hessian: a gradient step, still line-searched
            self.decrement = float(grad @ direction)
            if not np.isfinite(self.decrement) or self.decrement <= self.tolerance * max(1.0, abs(value)):
                self.converged = bool(np.isfinite(self.decrement))
                self.done = True
                return 0.0
            self.direction, self.step = direction, 1.0
        else:
            self.step /= 2
            if self.step < 1e-8:
                self.done = True  # stalled: no step lowers the loss; θ is as good as this precision allows
                self.trial = self.theta
                return 0.0
        self.trial = self.theta - self.step * self.direction
        return float(np.abs(self.step * self.direction).max())


# ----------------------------------------------------------------------------- as a model family


def train_family(context, family) -> dict:
    """Fit the combiner on the models of ``family.needs[0]``; its time includes theirs."""
    members = context.results[family.needs[0]]
    stack = fit_stacker(context.runtime, context.data, [m["model"] for m in members["members"]])
    return {**stack, "seconds": members["seconds"] + stack["seconds"], "fit_seconds": stack["seconds"]}


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.artifacts import write_json

    write_json(RunDir.train_file(stage_dir, family.file("json")), {"members": family.needs[0], **{k: result[k] for k in (
        "coef", "coef_even", "coef_odd", "fit_seconds", "seconds", "newton_steps", "objective", "converged",
        "out_of_fold_loss",
        "fit_loss", "member_losses", "best_member", "best_member_loss", "average_loss")}})


def load_coefficients(files, family) -> dict:
    """The combiner's own part of the payload (the registry adds its members')."""
    meta = files.read_json(files.run.trained(family.file()))
    return {k: meta[k] for k in ("coef", "coef_even", "coef_odd")}


def curves(run_dir, family) -> list:
    import json

    from shardflow.pipelines.figures import subplots

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    if not meta.get("objective"):
        return []
    fig, ax = subplots((5.5, 3.5))
    ax.plot(range(1, len(meta["objective"]) + 1), meta["objective"], marker="o")
    ax.set_xlabel("Newton pass (a rejected step is halved and tried again)")
    ax.set_ylabel("penalised loss on the validation rows")
    ax.set_title(f"{family.label}: combiner fit")
    return [(fig, f"{family.label}: its damped Newton fit, from the members' average")]
