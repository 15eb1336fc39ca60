"""The stacked ensemble: a combiner of the per-partition XGBoost models, fit on the cluster."""

from __future__ import annotations

import logging
import time

from shardflow.cluster.factory import Runtime
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.combiners import fit_combiner
from shardflow.tasks.models import (
    add_stack_terms,
    fit_stack_in_one_task,
    member_predictions,
    stack_design,
    stack_labels,
    stack_partition_losses,
    stack_partition_terms,
)
from shardflow.tasks.targets import target_kind

logger = logging.getLogger(__name__)


#: Validation designs up to this size are fit in one task (every Newton pass there); larger
#: ones by one reduction over the partitions per pass.
ONE_TASK_BYTES = 64 * 2**20


def fit_stacker(
    runtime: Runtime,
    data: TrainingData,
    member_models: list,
    *,
    max_iter: int = 100,
    ridge: float = 1e-4,
    in_one_task: bool | None = None,
) -> dict:
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

    The algorithm is :func:`~shardflow.tasks.combiners.fit_combiner`: with ``in_one_task``
    (default: designs of at most :data:`ONE_TASK_BYTES`) it runs inside one task on a worker,
    else each pass is one reduction over the partitions; both sum the same terms.
    """
    client = runtime.client
    started = time.perf_counter()
    token = call_token(data.token)
    models_f = scatter_named(client, f"train-stack-members-{token}", member_models)
    preds = [
        client.submit(member_predictions, f, models_f, key=f"train-stack-predict-{token}-{i}")
        for i, f in enumerate(data.futures)
    ]
    designs = [
        client.submit(stack_design, p, data.task, key=f"train-stack-design-{token}-{i}") for i, p in enumerate(preds)
    ]
    del preds  # the designs hold what the Newton steps need
    combiner = target_kind(data.task).combiner
    members, classes = len(member_models), data.classes
    size = combiner.size(members, classes)
    design_bytes = sum(data.valid_rows) * max(classes, 1) * size * 8
    one_task = design_bytes <= ONE_TASK_BYTES if in_one_task is None else bool(in_one_task)
    if one_task:
        # Small: the designs and labels go to one task, and every Newton pass runs there
        # (one round trip instead of one per pass).
        labels = [
            client.submit(stack_labels, f, key=f"train-stack-labels-{token}-{i}") for i, f in enumerate(data.futures)
        ]
        fitted = client.submit(
            fit_stack_in_one_task,
            designs,
            labels,
            data.task,
            members=members,
            classes=classes,
            ridge=ridge,
            max_iter=max_iter,
            key=f"train-stack-fit-{token}",
        ).result()
    else:
        passes = iter(range(max_iter + 1))

        def terms_at(thetas):
            step = next(passes)
            terms = [
                client.submit(
                    stack_partition_terms, design, f, thetas, data.task, key=f"train-stack-terms-{token}-{step}-{i}"
                )
                for i, (design, f) in enumerate(zip(designs, data.futures))
            ]
            return tree_reduce_futures(client, terms, add_stack_terms, f"train-stack-newton-{token}-{step}").result()

        def losses_at(candidates):
            losses = [
                client.submit(
                    stack_partition_losses, design, f, candidates, data.task, key=f"train-stack-losses-{token}-{i}"
                )
                for i, (design, f) in enumerate(zip(designs, data.futures))
            ]
            return tree_reduce_futures(client, losses, add_stack_terms, f"train-stack-check-{token}").result()

        fitted = fit_combiner(
            terms_at, losses_at, combiner, members=members, classes=classes, ridge=ridge, max_iter=max_iter
        )
    fitted["one_task"] = one_task
    if not fitted["converged"]:
        logger.warning(
            "stacked: the combiner's fit did not converge in %d Newton passes%s; it is kept where its "
            "loss was lowest (never above the members' average on its rows)",
            len(fitted["newton_steps"]),
            " (its line search stalled)" if fitted["stalled"] else "",
        )
    if fitted["out_of_fold_loss"] > fitted["best_member_loss"]:
        logger.warning(
            "stacked: WORSE THAN ITS BEST MEMBER: out-of-fold validation loss %.5g against %.5g for "
            "member %d of %d (their average: %.5g); prefer xgboost_partitions or the global model",
            fitted["out_of_fold_loss"],
            fitted["best_member_loss"],
            fitted["best_member"] + 1,
            members,
            fitted["average_loss"],
        )
    return {**fitted, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------- as a model family


def train_family(context, family) -> dict:
    """Fit the combiner on the models of ``family.needs[0]``; its time includes theirs."""
    members = context.results[family.needs[0]]
    stack = fit_stacker(context.runtime, context.data, [m["model"] for m in members.state["members"]])
    return {**stack, "seconds": members.seconds + stack["seconds"], "fit_seconds": stack["seconds"]}


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.records.artifacts import write_json

    write_json(
        RunDir.train_file(stage_dir, family.file("json")),
        {
            "members": family.needs[0],
            **{
                k: result[k]
                for k in (
                    "coef",
                    "coef_even",
                    "coef_odd",
                    "fit_seconds",
                    "seconds",
                    "newton_steps",
                    "objective",
                    "converged",
                    "stalled",
                    "one_task",
                    "out_of_fold_loss",
                    "fit_loss",
                    "member_losses",
                    "best_member",
                    "best_member_loss",
                    "average_loss",
                )
            },
        },
    )


def load_family(files, family) -> dict:
    """The combiner's own part of the payload (the registry adds its members')."""
    meta = files.read_json(files.run.trained(family.file()))
    return {k: meta[k] for k in ("coef", "coef_even", "coef_odd")}
