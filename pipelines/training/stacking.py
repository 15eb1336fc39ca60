"""The stacked ensemble: a combiner of the per-partition XGBoost models, fit on the cluster."""

from __future__ import annotations

import time

import numpy as np

from shardflow.pipelines.rundir import RunDir
from shardflow.cluster.factory import Runtime
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.models import add_stack_terms, member_predictions, stack_design, stack_partition_terms
from shardflow.tasks.targets import target_kind


def fit_stacker(runtime: Runtime, data: TrainingData, member_models: list, max_iter: int = 50,
                ridge: float = 1e-4) -> dict:
    """Fit the stacked combiner on the validation split, by Newton's method on reductions.

    Inputs are the per-partition models' predictions (logits for a binary target, log
    probabilities for a multi-class one: see :mod:`shardflow.tasks.combiners`), rows
    weighted by their sample weights.
    Three fits share each pass: on the even and the odd validation rows of every
    partition (cross-fitting: each half is scored by the fit on the other half, so
    the reported quality is out-of-sample), and on all validation rows (the model
    saved for inference).
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
    k = target_kind(data.task).combiner.size(len(member_models), data.classes)
    thetas = [np.zeros(k) for _ in range(3)]
    newton_steps = []
    for step in range(max_iter):
        terms = [client.submit(stack_partition_terms, design, f, thetas, data.task,
                               key=f"train-stack-terms-{token}-{step}-{i}")
                 for i, (design, f) in enumerate(zip(designs, data.futures))]
        total = tree_reduce_futures(client, terms, add_stack_terms, f"train-stack-newton-{token}-{step}").result()
        steps = []
        for j in range(3):
            n = max(total[j]["n"], 1.0)
            hess = total[j]["hess"] + ridge * n * np.eye(k)
            grad = total[j]["grad"] + ridge * n * thetas[j]
            delta = np.linalg.solve(hess, grad)
            thetas[j] = thetas[j] - delta
            steps.append(np.abs(delta).max())
        newton_steps.append(float(max(steps)))
        if max(steps) < 1e-10:
            break
    return {"coef_even": thetas[0].tolist(), "coef_odd": thetas[1].tolist(), "coef": thetas[2].tolist(),
            "seconds": time.perf_counter() - started, "newton_steps": newton_steps}


# ----------------------------------------------------------------------------- as a model family


def train_family(context, family) -> dict:
    """Fit the combiner on the models of ``family.needs[0]``; its time includes theirs."""
    members = context.results[family.needs[0]]
    stack = fit_stacker(context.runtime, context.data, [m["model"] for m in members["members"]])
    return {**stack, "seconds": members["seconds"] + stack["seconds"], "fit_seconds": stack["seconds"]}


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.artifacts import write_json

    write_json(RunDir.train_file(stage_dir, family.file("json")), {"members": family.needs[0], **{k: result[k] for k in (
        "coef", "coef_even", "coef_odd", "fit_seconds", "seconds", "newton_steps")}})


def load_coefficients(files, family) -> dict:
    """The combiner's own part of the payload (the registry adds its members')."""
    meta = files.read_json(files.run.trained(family.file()))
    return {k: meta[k] for k in ("coef", "coef_even", "coef_odd")}


def curves(run_dir, family) -> list:
    import json

    from shardflow.pipelines.figures import subplots

    meta = json.loads(RunDir(run_dir).trained(family.file()).read_text())
    if not meta.get("newton_steps"):
        return []
    fig, ax = subplots((5.5, 3.5))
    ax.semilogy(meta["newton_steps"], marker="o")
    ax.set_xlabel("Newton iteration")
    ax.set_ylabel("largest coefficient step")
    ax.set_title(f"{family.label}: combiner fit")
    return [(fig, f"{family.label}: convergence of its Newton fit")]
