"""The linear baseline: logistic, multinomial or least-squares regression on the feature
matrix, fit by damped Newton passes over the partitions (:mod:`shardflow.tasks.linear`).

Each pass sends the trial coefficients to every partition, whose worker returns the loss,
gradient and Hessian sums of its training rows; the sums are added in a tree on the
cluster and one Newton step is taken on the driver. Small data is fit in one task instead
(its rows brought to one worker, every pass there).
"""

from __future__ import annotations

import itertools
import logging
import time

from shardflow.cluster.factory import Runtime
from shardflow.pipelines.families.specs import FamilySkipped
from shardflow.pipelines.graph import tree_reduce_futures
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.training.data import TrainingData, call_token
from shardflow.tasks.linear import MAX_ITER, LinearLayout, add_terms, fit_in_one_task, newton_fit, partition_terms
from shardflow.tasks.targets import target_kind

logger = logging.getLogger("shardflow.train")

#: λ, the L2 penalty on the coefficients (not the intercepts) per unit of mean loss: on
#: standardised numerics small enough to leave a well-determined fit as it is, large enough
#: to keep separable classes and never-seen categories finite. For regression it is relative
#: to the variance of the target (as the models learn it), so the fit does not depend on its units.
PENALTY = 1e-4
#: Training designs (rows × columns, float64) up to this size are fit in one task; larger
#: ones by one reduction over the partitions per Newton pass.
ONE_TASK_BYTES = 64 * 2**20


def fit_linear(
    runtime: Runtime,
    data: TrainingData,
    *,
    name: str,
    penalty: float = PENALTY,
    max_iter: int = MAX_ITER,
    in_one_task: bool | None = None,
) -> dict:
    """Fit the linear model on the training rows of every partition, weighted by their sample weights.

    Parameters
    ----------
    name : str
        The family's name (task keys and messages).
    penalty : float
        λ (see :data:`PENALTY`).
    in_one_task : bool, optional
        Fit inside one task (default: when the design takes at most :data:`ONE_TASK_BYTES`),
        else one reduction per Newton pass; both sum the same terms.

    Returns
    -------
    dict
        ``coef`` (design columns × outputs), ``columns`` (their names), the layout
        (``numeric``, ``codes``, ``outputs``), ``penalty`` and ``ridge`` (the λ applied), the
        fit's ``objective`` and ``newton_steps`` per pass, ``converged``, ``stalled``,
        ``one_task`` and ``seconds``.
    """
    started = time.perf_counter()
    client = runtime.client
    try:
        layout = LinearLayout.of(data.preprocessor)
    except ValueError as err:  # a baseline too wide to fit is left out, the run goes on
        raise FamilySkipped(f"{name}: left out: {err}") from None
    scale = 1.0 if target_kind(data.task).is_classification else data.preprocessor.target_scale
    ridge = penalty * scale**2
    token = call_token(data.token)
    one_task = sum(data.train_rows) * layout.width * 8 <= ONE_TASK_BYTES if in_one_task is None else bool(in_one_task)
    if one_task:
        fitted = client.submit(
            fit_in_one_task, layout, *data.futures, ridge=ridge, max_iter=max_iter, key=f"train-{name}-fit-{token}"
        ).result()
    else:
        passes = itertools.count()

        def terms_at(theta):
            step = next(passes)
            terms = [
                client.submit(partition_terms, f, layout, theta, key=f"train-{name}-terms-{token}-{step}-{i}")
                for i, f in enumerate(data.futures)
            ]
            return tree_reduce_futures(client, terms, add_terms, f"train-{name}-newton-{token}-{step}").result()

        fitted = newton_fit(terms_at, layout, ridge=ridge, max_iter=max_iter)
    seconds = time.perf_counter() - started
    if not fitted["converged"]:
        logger.warning(
            "%s: the Newton fit did not converge in %d passes%s; it is kept where its loss was lowest",
            name,
            len(fitted["objective"]),
            " (its line search stalled)" if fitted["stalled"] else "",
        )
    logger.info(
        "%s: %d Newton passes%s, penalised loss %.5g, %.1fs",
        name,
        len(fitted["objective"]),
        " in one task" if one_task else "",
        fitted["objective"][-1],
        seconds,
    )
    return {
        **fitted,
        "coef": fitted["coef"].tolist(),
        "columns": layout.column_names(data.preprocessor),
        "numeric": layout.numeric,
        "codes": list(layout.codes),
        "outputs": layout.outputs,
        "penalty": penalty,
        "ridge": ridge,
        "one_task": one_task,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------- as a model family

#: What the family's file holds; the payload (what prediction reads) is the first four.
_PAYLOAD = ("coef", "numeric", "codes", "outputs")
_META = (
    "columns",
    "penalty",
    "ridge",
    "objective",
    "newton_steps",
    "converged",
    "stalled",
    "one_task",
    "seconds",
)


def train_family(context, family) -> dict:
    return fit_linear(context.runtime, context.data, name=family.name)


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.records.artifacts import write_json

    write_json(RunDir.train_file(stage_dir, family.file("json")), {k: result[k] for k in _PAYLOAD + _META})


def load_family(files, family) -> dict:
    meta = files.read_json(files.run.trained(family.file()))
    return {k: meta[k] for k in _PAYLOAD}
